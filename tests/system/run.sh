#!/usr/bin/env bash
# llmc-rag under a real systemd: boots Debian bookworm in systemd-nspawn with a
# copy of this clone in the home of a user "llmc" and the Ollama emulator, runs
# tests/system/checks.py there (a unit started at boot, which powers the container
# off when done) and prints the results. The checks install llmc-rag with the
# README's own command (scripts/install.sh), as that user would. Exit status 0
# only if every check passed.
#
# The container has no network: its pip finds every wheel in /payload/wheels
# (/etc/pip.conf: no-index, find-links), built here from pyproject.toml's
# dependencies and build requirements.
#
# Needs root, debootstrap and systemd-container (installed with apt-get if missing).
# Cached in $LLMC_RAG_SYSTEM_CACHE (default /var/cache/llmc-rag-system-test): the
# debootstrapped root (by package list) and the wheels (by pyproject.toml).
# Each run gets a fresh overlay over the cached root; KEEP=1 keeps it for debugging.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${LLMC_RAG_SYSTEM_CACHE:-/var/cache/llmc-rag-system-test}
PY=${PYTHON:-$REPO/.venv/bin/python}
PACKAGES=systemd,systemd-sysv,libpam-systemd,dbus,python3,python3-venv,git,sudo
# The mirror this machine's apt uses (deb822 "URIs:" or one-line "deb URL"), else Debian's.
MIRROR=${LLMC_RAG_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p; s/^deb \(http[^ ]*\/debian\) bookworm .*/\1/p' \
  /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | head -n1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BOOT_TIMEOUT_S=${BOOT_TIMEOUT_S:-600}

log() { printf '[system-test %5ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }
T0=$(date +%s)

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap systemd-container >/dev/null
fi
mkdir -p "$CACHE"

# 1. The base root, debootstrapped once per package list.
KEY=$(printf 'bookworm %s' "$PACKAGES" | sha256sum | cut -c1-12)
BASE=$CACHE/base-$KEY
if [ ! -d "$BASE" ]; then
  log "debootstrap bookworm from $MIRROR into $BASE"
  rm -rf "$BASE.tmp"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$BASE.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  mv "$BASE.tmp" "$BASE"
fi

# 2. Wheels of the dependencies and build requirements, once per pyproject.toml;
#    the clone itself (tracked and untracked, not ignored files) every run.
RUN=$(mktemp -d /var/tmp/llmc-rag-system.XXXXXX)
cleanup() {
  mountpoint -q "$RUN/root" && umount "$RUN/root"
  if [ "${KEEP:-0}" = 1 ]; then log "kept $RUN"; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
DEPS=$CACHE/wheels-$(sha256sum "$REPO/pyproject.toml" | cut -c1-12)
if [ ! -d "$DEPS" ]; then
  log "building dependency wheels into $DEPS"
  "$PY" -c 'import sys, tomllib; t = tomllib.load(open(sys.argv[1], "rb"))
print("\n".join(t["project"]["dependencies"] + t["build-system"]["requires"]))' \
    "$REPO/pyproject.toml" >"$RUN/requirements.txt"
  rm -rf "$DEPS.tmp"
  "$PY" -m pip wheel -q -w "$DEPS.tmp" -r "$RUN/requirements.txt" 2>"$RUN/pip.log" || { cat "$RUN/pip.log" >&2; exit 1; }
  mv "$DEPS.tmp" "$DEPS"
fi
mkdir -p "$RUN/payload/wheels" "$RUN/payload/clone" "$RUN/results"
git -C "$REPO" ls-files -z --cached --others --exclude-standard \
  | (cd "$REPO" && xargs -0 sh -c 'for f; do [ -f "$f" ] && printf "%s\0" "$f"; done' sh) \
  | tar -C "$REPO" --null -T - -cf - | tar -C "$RUN/payload/clone" -xf -
cp "$DEPS"/*.whl "$RUN/payload/wheels/"
cp "$HERE/prepare.sh" "$HERE/checks.py" "$RUN/payload/"
log "wheels and clone ready"

# 3. A fresh root for this run: an overlay over the cached base (copy if overlayfs fails).
mkdir -p "$RUN/upper" "$RUN/work" "$RUN/root"
if ! mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$RUN/upper,workdir=$RUN/work" "$RUN/root" 2>/dev/null; then
  log "overlayfs unavailable, copying the base root"
  cp -a "$BASE/." "$RUN/root/"
fi
NSPAWN=(systemd-nspawn --keep-unit --register=no --quiet --private-network -D "$RUN/root")
"${NSPAWN[@]}" --bind-ro="$RUN/payload:/payload" /bin/sh /payload/prepare.sh >"$RUN/prepare.log" 2>&1 \
  || { tail -30 "$RUN/prepare.log" >&2; exit 1; }
log "installed into the root"

# 4. Boot; the check unit writes /results and powers off.
BOOT0=$(date +%s)
timeout "$BOOT_TIMEOUT_S" "${NSPAWN[@]}" --bind-ro="$RUN/payload:/payload" --bind="$RUN/results:/results" \
  --console=read-only -b \
  </dev/null >"$RUN/console.log" 2>&1 || log "nspawn exited with $?"
log "container ran $(( $(date +%s) - BOOT0 )) s"

OUT=${RESULTS_DIR:-}
[ -n "$OUT" ] && mkdir -p "$OUT" && cp -r "$RUN/results/." "$RUN/console.log" "$OUT/"
if [ ! -s "$RUN/results/results.json" ]; then
  echo "no results; console:" >&2; tail -40 "$RUN/console.log" >&2; exit 1
fi
STATUS=0
"$PY" - "$RUN/results/results.json" <<'EOF' || STATUS=$?
import json, sys
results = json.load(open(sys.argv[1]))
for r in results:
    print(f"{'PASS' if r['ok'] else 'FAIL'} {r['name']} ({r['seconds']:.1f} s): {r['detail']}")
sys.exit(0 if results and all(r["ok"] for r in results) else 1)
EOF
log "total $(( $(date +%s) - T0 )) s"
exit $STATUS
