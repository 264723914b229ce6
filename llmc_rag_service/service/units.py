"""The systemd unit files of llmc-rag: their one canonical text, rendering and installing.

The unit text lives here, not only in ``systemd/`` at the top of the repository,
because that folder is not part of the wheel, and a pip-installed daemon still needs
to write a unit whose ``ExecStart=`` names the real ``llmc-rag`` path.
``systemd/llmc-rag.service`` and ``systemd/user/llmc-rag.service`` are
``render_unit(..., DEFAULT_EXEC_PATH)``; a test keeps them equal so they never drift.

One template serves both units. A line starting with ``S|`` is for the system unit
only, ``U|`` for the user unit only; other lines are in both. The user unit leaves
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
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_EXEC_PATH = "/usr/local/bin/llmc-rag"
PLACEHOLDER_USER = "llmc-rag"
UNIT_NAME = "llmc-rag.service"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")

_TEMPLATE = """\
# llmc-rag: keeps LLM enrichments of code repositories fresh, using Ollama.
# Canonical text: llmc_rag_service/units.py. `llmc-rag install-unit` writes a copy
# whose ExecStart names the installed llmc-rag.
S|# Runs as the account that owns the repositories; User= below is a placeholder.
S|# Set it at install time (llmc-rag install-unit --run-as NAME) or with a
S|# drop-in (systemctl edit llmc-rag: a [Service] section with User=NAME).
S|# Repositories are read-only (ProtectHome=read-only, ProtectSystem=strict); the
S|# store lives in StateDirectory= (/var/lib/llmc-rag, passed as $STATE_DIRECTORY).
U|# Install: ~/.config/systemd/user/llmc-rag.service, then
U|# systemctl --user daemon-reload && systemctl --user enable --now llmc-rag
U|# The store lives in $XDG_STATE_HOME/llmc-rag (~/.local/state/llmc-rag).
# systemd >= 253: the notify-reload drop-in (systemd/llmc-rag.service.d/) makes
# reloads synchronous; systemd 252 has no Type=notify-reload.

[Unit]
Description=llmc-rag: LLM enrichment of code repositories (Ollama)
S|Wants=network-online.target
S|After=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart=@EXEC@
# A shell builtin: minimal systems have no /bin/kill (203/EXEC).
ExecReload=/bin/sh -c 'kill -HUP "$MAINPID"'
S|User=@USER@
WatchdogSec=60
Restart=on-failure
RestartSec=5
# 78 (EX_CONFIG): a bad config does not get better by restarting.
RestartPreventExitStatus=78
TimeoutStartSec=120
# Above the daemon's own 20 s stop grace for in-flight jobs.
TimeoutStopSec=45
S|StateDirectory=llmc-rag
S|StateDirectoryMode=0700
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

NOTIFY_RELOAD_DROPIN = """\
# systemd >= 253 only (Debian 12 has 252, which does not know Type=notify-reload).
# Copy to /etc/systemd/system/llmc-rag.service.d/ (or
# ~/.config/systemd/user/llmc-rag.service.d/) and run daemon-reload: systemd then
# sends SIGHUP itself and waits for RELOADING=1 ... READY=1 from the daemon.
[Service]
Type=notify-reload
ReloadSignal=SIGHUP
ExecReload=
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


def render_unit(
    user_unit: bool,
    exec_path: str,
    run_as: str | None = None,
    *,
    prefix_args: Sequence[str] = (),
) -> str:
    """Return the text of the system unit (``user_unit=False``) or the user unit.

    ``exec_path`` is the absolute path of the program; ``prefix_args`` go between
    it and ``serve`` (e.g. ``("-m", "llmc_rag_service")`` with a Python path).
    ``run_as`` is the system unit's ``User=`` (default the placeholder ``llmc-rag``).
    Raises ValueError for a relative ``exec_path``, an unusable user name, or
    ``run_as`` given for a user unit (which runs as the calling user).
    """
    if not exec_path.startswith("/"):
        raise ValueError(f"exec_path must be absolute: {exec_path!r}")
    if user_unit and run_as is not None:
        raise ValueError("a user unit runs as the calling user; run_as is for the system unit")
    user = PLACEHOLDER_USER if run_as is None else run_as
    if not _USER_NAME.fullmatch(user):
        raise ValueError(f"not a usable user name for User=: {user!r}")
    command = " ".join(_quote_arg(a) for a in (exec_path, *prefix_args, "serve"))
    keep, drop = ("U|", "S|") if user_unit else ("S|", "U|")
    lines = []
    for line in _TEMPLATE.splitlines():
        if line.startswith(drop):
            continue
        lines.append(line.removeprefix(keep))
    text = "\n".join(lines) + "\n"
    return text.replace("@EXEC@", command).replace("@USER@", user)


def default_unit_dir(user_unit: bool) -> Path:
    """Where systemd reads admin units: /etc/systemd/system, or for a user unit
    ``$XDG_CONFIG_HOME/systemd/user`` (default ~/.config/systemd/user)."""
    if not user_unit:
        return SYSTEM_UNIT_DIR
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "systemd" / "user"


def install_unit(user_unit: bool, dest_dir: Path | None = None, run_as: str | None = None) -> Path:
    """Write ``llmc-rag.service`` for this installation and return its path.

    ExecStart is ``shutil.which("llmc-rag")`` if found, else this interpreter with
    ``-m llmc_rag_service``. ``dest_dir`` defaults to ``default_unit_dir(user_unit)``
    and is created if missing. Does not run systemctl: the caller says to run
    ``systemctl [--user] daemon-reload``. Raises ValueError as ``render_unit`` and
    OSError when the file cannot be written.
    """
    found = shutil.which("llmc-rag")
    if found:
        text = render_unit(user_unit, str(Path(found).absolute()), run_as)
    else:
        text = render_unit(user_unit, sys.executable, run_as, prefix_args=("-m", "llmc_rag_service"))
    target_dir = default_unit_dir(user_unit) if dest_dir is None else dest_dir
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / UNIT_NAME
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    tmp.replace(target)
    return target
