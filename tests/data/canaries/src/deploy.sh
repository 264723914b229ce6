#!/bin/sh
# Deploy script of the demo shop (canary corpus: every secret here is fake).
set -eu

export AWS_ACCESS_KEY_ID=AKIACZ2KA7EDCMPB3U2M
export AWS_SECRET_ACCESS_KEY=rFmbh7/wy5yq1XoY1BaIMcAxYmfsB4HbQLXjjlAF
export DB_PASSWORD='Hn4sQe7WzLp2Ty6R'
NPM_TOKEN=npm_CzGdWmPyagqqr5vJIGA9HK2gOCZPeJMQW9cy

build() {
    npm ci
    npm run build
}

publish() {
    curl -fsS -H "PRIVATE-TOKEN: glpat-78kyEk2FINMdB8FAsHzM" https://gitlab.example.com/api/v4/projects/7/releases
    psql "postgresql://deployer:Zc8vN3kQ5mT1xB7w@db.internal/shop" -c 'select 1'
}

build
publish
