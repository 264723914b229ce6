#!/usr/bin/env bash
# Install llmc-rag as a systemd service from this clone (see README.md, "Running it under systemd").
#
#   sudo ./scripts/install.sh --run-as USER [--now]   system service: venv /opt/llmc-rag, config
#                                                     /etc/llmc-rag/config.yaml, store /var/lib/llmc-rag
#   ./scripts/install.sh --user [--now]               user service: venv ~/.local/share/llmc-rag,
#                                                     config ~/.config/llmc-rag/config.yaml
#   sudo ./scripts/install.sh --uninstall             removes venv and unit; keeps config and store
#   ./scripts/install.sh --user --uninstall
#
# A venv, because Debian 12 and Ubuntu 24.04 refuse `pip install` into the system
# Python (PEP 668). The config is written from etc/llmc-rag.yaml only if absent. The
# unit comes from `llmc-rag install-unit` of the new venv, so ExecStart names it.
# --now enables and starts the service. Re-running upgrades in place and restarts
# a running service. pip runs as configured on this machine (pip.conf, or
# PIP_INDEX_URL / PIP_FIND_LINKS / PIP_NO_INDEX in the environment, which this
# script passes on; under sudo write them after sudo: sudo PIP_NO_INDEX=1 ...).
# Exit status: 0 done; 64 bad arguments; 69 something it needs is missing; 1 a step failed.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
ARGS="$*"
PYTHON=${PYTHON:-python3}
usage() {  # $1: exit status (0 for --help, 64 for a bad argument)
  if [ "${1:-64}" = 0 ]; then sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; else sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; fi
  exit "${1:-64}"
}
say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$1" >&2; exit "${2:-1}"; }

mode=system run_as="" now=0 uninstall=0
while [ $# -gt 0 ]; do
  case "$1" in
    --run-as) [ $# -ge 2 ] || usage; run_as=$2; shift 2 ;;
    --run-as=*) run_as=${1#*=}; shift ;;
    --user) mode=user; shift ;;
    --now) now=1; shift ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) usage 0 ;;
    *) printf 'install.sh: unknown argument: %s\n' "$1" >&2; usage ;;
  esac
done

if [ "$mode" = system ]; then
  [ "$(id -u)" = 0 ] || die "the system service needs root: sudo $0 $ARGS  (or --user for a per-user service)" 64
  PREFIX=/opt/llmc-rag
  CONFIG=/etc/llmc-rag/config.yaml
  UNIT=/etc/systemd/system/llmc-rag.service
  LINK=/usr/local/bin/llmc-rag
  SYSTEMCTL=(systemctl)
else
  [ -z "$run_as" ] || die "--run-as is for the system service; a --user service runs as you" 64
  [ "$(id -u)" != 0 ] || die "--user installs a service for the calling user; as root, use --run-as USER" 64
  PREFIX=${XDG_DATA_HOME:-$HOME/.local/share}/llmc-rag
  CONFIG=${XDG_CONFIG_HOME:-$HOME/.config}/llmc-rag/config.yaml
  UNIT=${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user/llmc-rag.service
  LINK=$HOME/.local/bin/llmc-rag
  SYSTEMCTL=(systemctl --user)
fi

# Whether a service manager of this scope runs (a container or chroot may have none).
manager_up() {
  if [ "$mode" = system ]; then [ -d /run/systemd/system ]; else "${SYSTEMCTL[@]}" show-environment >/dev/null 2>&1; fi
}

uninstall() {
  if manager_up; then
    "${SYSTEMCTL[@]}" disable --now llmc-rag.service >/dev/null 2>&1 || true
  fi
  rm -f "$UNIT"
  manager_up && "${SYSTEMCTL[@]}" daemon-reload
  [ "$(readlink "$LINK" 2>/dev/null)" = "$PREFIX/bin/llmc-rag" ] && rm -f "$LINK"
  rm -rf "$PREFIX"
  say "removed $PREFIX and $UNIT; kept the config ($CONFIG) and the store"
}

if [ "$uninstall" = 1 ]; then uninstall; exit 0; fi

if [ "$mode" = system ]; then
  [ -n "$run_as" ] || die "name the account that owns the repositories: sudo $0 --run-as USER [--now]" 64
  getent passwd "$run_as" >/dev/null || die "--run-as $run_as: no such user on this machine" 64
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || die "$PYTHON is missing or older than 3.11" 69
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
  || die "$PYTHON cannot make a venv: apt-get install python3-venv" 69

# 1. The venv, and the package built from a copy of this clone (pip would leave
#    build/ and *.egg-info owned by root in the clone otherwise).
[ -x "$PREFIX/bin/python" ] || { say "creating the venv $PREFIX"; "$PYTHON" -m venv "$PREFIX"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
cp -r "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/llmc_rag_service" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
say "installing llmc-rag-service from $SRC into $PREFIX"
pip=("$PREFIX/bin/pip" --disable-pip-version-check -q)
"${pip[@]}" wheel --no-deps -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/llmc_rag_service-*.whl)
"${pip[@]}" install --upgrade "$wheel"
# The same version number as before: pip keeps the old files unless told to replace them.
"${pip[@]}" install --force-reinstall --no-deps "$wheel"

# 2. The config, only if there is none (an upgrade never touches it).
if [ ! -e "$CONFIG" ]; then
  mkdir -p "$(dirname "$CONFIG")"
  if [ "$mode" = system ]; then
    # The service runs as $run_as: "~" in the sample must mean that user's home for every reader.
    home=$(getent passwd "$run_as" | cut -d: -f6)
    sed "s#~/src/project#$home/src/project#" "$SRC/etc/llmc-rag.yaml" >"$CONFIG"
  else
    cp "$SRC/etc/llmc-rag.yaml" "$CONFIG"
  fi
  chmod 0644 "$CONFIG"
  say "wrote $CONFIG from the sample: put your repositories under repos:"
else
  say "kept $CONFIG"
fi

# 3. The unit, naming this venv's llmc-rag; the command on PATH.
if [ "$mode" = system ]; then
  "$PREFIX/bin/llmc-rag" install-unit --run-as "$run_as" >/dev/null
else
  "$PREFIX/bin/llmc-rag" install-unit --user >/dev/null
fi
say "wrote $UNIT (ExecStart=$PREFIX/bin/llmc-rag serve)"
mkdir -p "$(dirname "$LINK")"
if [ ! -e "$LINK" ] || [ "$(readlink "$LINK")" = "$PREFIX/bin/llmc-rag" ]; then
  ln -sfn "$PREFIX/bin/llmc-rag" "$LINK"
else
  say "left $LINK alone (another llmc-rag); this one is $PREFIX/bin/llmc-rag"
fi

# 4. systemd: reload units; restart a running service (upgrade); enable and start with --now.
if ! manager_up; then
  say "no systemd manager is running here: the unit is installed, start it where systemd runs"
  exit 0
fi
"${SYSTEMCTL[@]}" daemon-reload
if "${SYSTEMCTL[@]}" is-active --quiet llmc-rag.service; then
  say "restarting the running service with the new version"
  "${SYSTEMCTL[@]}" restart llmc-rag.service
fi
if [ "$now" = 1 ]; then
  "${SYSTEMCTL[@]}" enable --now llmc-rag.service
  say "llmc-rag is $("${SYSTEMCTL[@]}" is-active llmc-rag.service): ${SYSTEMCTL[*]} status llmc-rag; llmc-rag status"
else
  say "next: edit $CONFIG, then: ${SYSTEMCTL[*]} enable --now llmc-rag"
fi
[ "$mode" = user ] && say "to keep it running after you log out: loginctl enable-linger $USER"
exit 0
