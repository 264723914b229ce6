"""File events -> batches of changed paths: inotify observers, debounce, the git-operation gate, per-repo watchers."""
