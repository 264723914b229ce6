#!/usr/bin/env bash
# The main job on a machine with no Ollama: install, start the project's own
# Ollama emulator (llmc_rag_service.testing), enrich a sample repository (a
# copy of the standard library's json package) with the one-shot command,
# then print what `status` and `show` report. With a real Ollama, skip this
# script and run: llmc-rag enrich -c etc/llmc-rag.yaml (after editing repos).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/llmc-rag ] || { echo "== installing into .venv (pip, about a minute on a fresh machine)"
  python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'; }
work=$(mktemp -d "${TMPDIR:-/tmp}/llmc-rag-demo.XXXXXX")
cp -r "$(.venv/bin/python -c 'import json, os; print(os.path.dirname(json.__file__))')" "$work/repo"
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/python -m llmc_rag_service.testing --port "$port" --model demo-model --latency-s 0.05 --parallel 4 \
  > "$work/emulator.log" 2>&1 &
emulator=$!
trap 'kill $emulator 2>/dev/null' EXIT
cat > "$work/config.yaml" <<YAML
state_dir: $work/state
repos:
  - path: $work/repo
ollama:
  url: http://127.0.0.1:$port
  model: demo-model
  keep_alive: 15m
  concurrency: 4
logging:
  level: warning
YAML
# grep -s: the log file may not exist yet in the first turns (the emulator is still starting)
for _ in $(seq 50); do grep -qs listening "$work/emulator.log" && break; sleep 0.1; done
echo "== llmc-rag enrich (config: $work/config.yaml)"
.venv/bin/llmc-rag enrich -c "$work/config.yaml"
echo "== llmc-rag status"
.venv/bin/llmc-rag status -c "$work/config.yaml"
echo "== llmc-rag show $work/repo/decoder.py:340"
.venv/bin/llmc-rag show -c "$work/config.yaml" "$work/repo/decoder.py:340"
echo "== a second enrich on the unchanged repo sends no request"
.venv/bin/llmc-rag enrich -c "$work/config.yaml"
# The emulator stops with this script (trap above); the files stay for a look around.
cat <<EOF2
== done. The demo's files stay in $work (remove them with: rm -rf $work).
   The emulator stops with this script, so search is then lexical only and doctor says Ollama is
   unreachable; try:
     .venv/bin/llmc-rag search -c $work/config.yaml "decode a JSON document"
   or start the emulator again first (then search is hybrid):
     .venv/bin/python -m llmc_rag_service.testing --port $port --model demo-model &
EOF2
