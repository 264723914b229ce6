"""The systemd unit files of llmc-rag: their one canonical text, rendering and installing.

The unit text lives here, not only in ``systemd/`` at the top of the repository,
because that folder is not part of the wheel, and a pip-installed daemon still needs
to write a unit whose ``ExecStart=`` names the real ``llmc-rag`` path.
``systemd/llmc-rag.service`` and ``systemd/user/llmc-rag.service`` are
``render_unit(..., DEFAULT_EXEC_PATH)`` and ``render_unit(..., DEFAULT_USER_EXEC_PATH)``
(the executables ``scripts/install.sh`` creates); a test keeps them equal so they
never drift, and verifies them with ``systemd-analyze verify`` on systemd 252.

``install_unit`` names the installation it runs from (``sys.prefix``'s scripts,
never whatever ``llmc-rag`` comes first on PATH) and writes ``Type=notify-reload``
only when ``systemctl --version`` reports systemd >= :data:`NOTIFY_RELOAD_SINCE`
(252, Debian 12, would warn and fall back to ``Type=simple``).

One template serves both units. A line starting with ``S|`` is for the system unit
only, ``U|`` for the user unit only, ``R|`` for the ``Type=notify-reload`` variant
only, ``N|`` for the plain ``Type=notify`` one only; other lines are in all. The user unit leaves
out what a per-user service manager cannot do without privileges or user namespaces
(mount-namespace sandboxing, capability bounding, device policy), and
``StateDirectory=``: before systemd 254 it maps to ``$XDG_CONFIG_HOME`` for user
units (``~/.config/llmc-rag``, the config folder), so the daemon's own default,
``$XDG_STATE_HOME/llmc-rag``, is used instead.

``MemoryDenyWriteExecute=yes`` is set: CPython without a JIT, the tree-sitter
grammar wheels (plain shared libraries) and ctypes (watchdog's inotify binding,
callbacks via libffi >= 3.4 static trampolines) need no writable+executable memory;
tests/test_units.py proves it under the kernel's stricter ``PR_SET_MDWE``.
``RemoveIPC=`` is not set: ``User=`` may be a person's own account, whose desktop
session IPC objects it would delete when the service stops.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

#: ExecStart of the shipped system unit: the venv of ``scripts/install.sh``.
DEFAULT_EXEC_PATH = "/opt/llmc-rag/bin/llmc-rag"
#: ExecStart of the shipped user unit: the venv of ``scripts/install.sh --user``.
DEFAULT_USER_EXEC_PATH = "%h/.local/share/llmc-rag/bin/llmc-rag"
#: First systemd release that knows ``Type=notify-reload`` and ``ReloadSignal=``.
NOTIFY_RELOAD_SINCE = 253
PLACEHOLDER_USER = "llmc-rag"
UNIT_NAME = "llmc-rag.service"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")

_TEMPLATE = """\
# llmc-rag: keeps LLM enrichments of code repositories fresh, using Ollama.
# Canonical text: llmc_rag_service/service/units.py. `llmc-rag install-unit` writes a copy
# whose ExecStart names the installed llmc-rag.
S|# Runs as the account that owns the repositories; User= below is a placeholder.
S|# Set it at install time (llmc-rag install-unit --run-as NAME) or with a
S|# drop-in (systemctl edit llmc-rag: a [Service] section with User=NAME).
S|# Repositories are read-only (ProtectHome=read-only, ProtectSystem=strict); the
S|# store lives in StateDirectory= (/var/lib/llmc-rag, passed as $STATE_DIRECTORY).
U|# Install: scripts/install.sh --user (or llmc-rag install-unit --user), then
U|# systemctl --user daemon-reload && systemctl --user enable --now llmc-rag
U|# The store lives in $XDG_STATE_HOME/llmc-rag (~/.local/state/llmc-rag).
# On systemd >= 253 install-unit writes Type=notify-reload (reloads then wait
# for the daemon); systemd 252 has no Type=notify-reload.
# $RUNTIME_DIRECTORY/daemon.json tells `llmc-rag status` which store the
# running service uses.

[Unit]
Description=llmc-rag: LLM enrichment of code repositories (Ollama)
S|Wants=network-online.target
S|After=network-online.target

[Service]
R|Type=notify-reload
R|ReloadSignal=SIGHUP
N|Type=notify
NotifyAccess=main
ExecStart=@EXEC@
N|# A shell builtin: minimal systems have no /bin/kill (203/EXEC).
N|ExecReload=/bin/sh -c 'kill -HUP "$MAINPID"'
S|User=@USER@
WatchdogSec=60
Restart=on-failure
RestartSec=5
# 78 (EX_CONFIG): a bad config does not get better by restarting.
RestartPreventExitStatus=78
TimeoutStartSec=120
# Above the daemon's own 20 s stop grace for in-flight jobs.
TimeoutStopSec=45
S|# The store is the run-as user's and root's only: a 0700 directory, files 0600 (UMask).
S|StateDirectory=llmc-rag
S|StateDirectoryMode=0700
RuntimeDirectory=llmc-rag
# A watchdog abort then leaves every thread's stack in the journal.
Environment=PYTHONFAULTHANDLER=1 PYTHONUNBUFFERED=1
SyslogIdentifier=llmc-rag
UMask=0077

# Hardening. Outbound network stays open: Ollama may run on another host.
U|# Mount-namespace sandboxing and capability bounding need a privileged manager
U|# or user namespaces, so the user unit keeps to seccomp-based restrictions.
NoNewPrivileges=yes
S|ProtectSystem=strict
S|ProtectHome=read-only
S|PrivateTmp=yes
S|PrivateMounts=yes
S|PrivateDevices=yes
S|DevicePolicy=closed
S|ProtectKernelTunables=yes
S|ProtectKernelModules=yes
S|ProtectKernelLogs=yes
S|ProtectControlGroups=yes
S|ProtectClock=yes
S|ProtectHostname=yes
S|ProtectProc=invisible
S|CapabilityBoundingSet=
S|AmbientCapabilities=
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
# A call outside the filter fails with EPERM instead of killing the daemon.
SystemCallErrorNumber=EPERM

[Install]
S|WantedBy=multi-user.target
U|WantedBy=default.target
"""

_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}|[0-9]{1,10}")
_NEEDS_QUOTES = re.compile(r"[\s\"'\\;]")


def _quote_arg(arg: str) -> str:
    """One ExecStart= argument, escaped for systemd: ``%`` and ``$`` are literal;
    whitespace, quotes, backslashes or ``;`` put it in double quotes."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if _NEEDS_QUOTES.search(arg):
        arg = '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


class UnitError(ValueError):
    """install-unit cannot do what was asked (bad arguments, unwritable place);
    the message is one line for the user."""


def render_unit(
    user_unit: bool,
    exec_path: str,
    run_as: str | None = None,
    *,
    prefix_args: Sequence[str] = (),
    notify_reload: bool = False,
) -> str:
    """Return the text of the system unit (``user_unit=False``) or the user unit.

    ``exec_path`` is the absolute path of the program (a user unit may start it
    with ``%h``, the home directory specifier); ``prefix_args`` go between
    it and ``serve`` (e.g. ``("-m", "llmc_rag_service")`` with a Python path).
    ``run_as`` is the system unit's ``User=`` (default the placeholder ``llmc-rag``).
    ``notify_reload``: ``Type=notify-reload`` with ``ReloadSignal=SIGHUP`` instead
    of ``Type=notify`` with a kill ``ExecReload=`` (systemd >= 253 only).
    Raises ValueError for a relative ``exec_path``, an unusable user name, or
    ``run_as`` given for a user unit (which runs as the calling user).
    """
    if not exec_path.startswith(("/", "%h/")):
        raise ValueError(f"exec_path must be absolute: {exec_path!r}")
    if user_unit and run_as is not None:
        raise ValueError("a user unit runs as the calling user; run_as is for the system unit")
    user = PLACEHOLDER_USER if run_as is None else run_as
    if not _USER_NAME.fullmatch(user):
        raise ValueError(f"not a usable user name for User=: {user!r}")
    head = exec_path if exec_path.startswith("%h/") else _quote_arg(exec_path)
    command = " ".join([head, *(_quote_arg(a) for a in (*prefix_args, "serve"))])
    keep = {"U|" if user_unit else "S|", "R|" if notify_reload else "N|"}
    lines = []
    for line in _TEMPLATE.splitlines():
        tag = line[:2]
        if tag in ("S|", "U|", "R|", "N|"):
            if tag not in keep:
                continue
            line = line[2:]
        lines.append(line)
    text = "\n".join(lines) + "\n"
    return text.replace("@EXEC@", command).replace("@USER@", user)


def default_unit_dir(user_unit: bool) -> Path:
    """Where systemd reads admin units: /etc/systemd/system, or for a user unit
    ``$XDG_CONFIG_HOME/systemd/user`` (default ~/.config/systemd/user)."""
    if not user_unit:
        return SYSTEM_UNIT_DIR
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "systemd" / "user"


def systemd_version() -> int | None:
    """The systemd release number from ``systemctl --version`` (first line
    ``systemd 252 (252.38-1~deb12u1)``), or None when systemctl is missing or
    says something else."""
    try:
        out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"systemd (\d+)\b", out)
    return int(match.group(1)) if match else None


def this_installation() -> tuple[str, tuple[str, ...]]:
    """``(exec_path, prefix_args)`` that start this installation's ``serve``:
    the ``llmc-rag`` script of ``sys.prefix`` (a venv's ``bin/``, or the
    interpreter's scripts directory), else this interpreter with ``-m
    llmc_rag_service``. Never a PATH lookup: under sudo, PATH may name another
    installation."""
    for folder in (sysconfig.get_path("scripts"), os.path.join(sys.prefix, "bin")):
        script = Path(folder) / "llmc-rag"
        if script.is_file() and os.access(script, os.X_OK):
            return str(script.absolute()), ()
    return str(Path(sys.executable).absolute()), ("-m", "llmc_rag_service")


def _check_run_as(run_as: str) -> None:
    if not _USER_NAME.fullmatch(run_as):
        raise UnitError(f"--run-as {run_as!r}: not a usable user name")
    try:
        pwd.getpwnam(run_as)
    except KeyError:
        raise UnitError(f"--run-as {run_as}: no such user on this machine "
                        "(name the account that owns the repositories)") from None


def install_unit(user_unit: bool, dest_dir: Path | None = None, run_as: str | None = None,
                 version: int | None = None) -> Path:
    """Write ``llmc-rag.service`` for this installation and return its path.

    ExecStart is :func:`this_installation`. ``version`` is the systemd release
    (default :func:`systemd_version`); from :data:`NOTIFY_RELOAD_SINCE` on the
    unit is ``Type=notify-reload``. ``dest_dir`` defaults to
    ``default_unit_dir(user_unit)`` and is created if missing. Does not run
    systemctl: the caller says to run ``systemctl [--user] daemon-reload``.

    Raises:
        UnitError: ``run_as`` with a user unit, a ``run_as`` user that does not
            exist, or a destination that cannot be written (one-line message).
    """
    if user_unit and run_as is not None:
        raise UnitError("--run-as is for the system unit; a --user unit runs as the user who installs it")
    if run_as is not None:
        _check_run_as(run_as)
    version = systemd_version() if version is None else version
    exec_path, prefix_args = this_installation()
    text = render_unit(user_unit, exec_path, run_as, prefix_args=prefix_args,
                       notify_reload=version is not None and version >= NOTIFY_RELOAD_SINCE)
    target_dir = default_unit_dir(user_unit) if dest_dir is None else dest_dir
    target = target_dir / UNIT_NAME
    tmp = target.with_name(target.name + ".tmp")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
        tmp.replace(target)
    except OSError as exc:
        raise UnitError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target
