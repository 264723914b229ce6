"""``doctor``'s unit checks (installed, ``ExecStart`` executable present, enabled, active) and its :class:`Check`.

Asked from systemd itself (``systemctl [--user] show llmc-rag.service``,
systemctl(1) "show"); where no systemd runs (a container, a chroot, no user
session) the unit file in the admin unit directory is read instead, and
whether the service is active cannot be known (a warning says so).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from llmc_rag_service.service.units import UNIT_NAME, default_unit_dir

@dataclass(frozen=True)
class Check:
    """One doctor finding: ``status`` ok|warn|fail, ``detail`` what was seen,
    ``fix`` the command that repairs it (None when ok or when none exists)."""

    name: str
    status: str
    detail: str
    fix: str | None = None


PROPERTIES = ("LoadState", "UnitFileState", "ActiveState", "MainPID", "ExecStart", "FragmentPath")
_ENABLED = {"enabled", "enabled-runtime", "linked", "linked-runtime", "alias", "static", "indirect", "generated"}


def systemctl_show(user_unit: bool, systemctl: str = "systemctl") -> dict[str, str] | None:
    """The unit's :data:`PROPERTIES` as systemd has them, or None when systemd
    cannot be asked (not running, no user bus, no systemctl)."""
    cmd = [systemctl, *(["--user"] if user_unit else []), "show", UNIT_NAME, *(f"--property={p}" for p in PROPERTIES)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    props = dict(line.partition("=")[::2] for line in done.stdout.splitlines() if "=" in line)
    return props if done.returncode == 0 and props.get("LoadState") else None


#: Exists only while systemd is the init system (sd_booted(3), systemd.io "Detecting systemd").
RUN_SYSTEMD = Path("/run/systemd/system")


def read_unit_file(user_unit: bool) -> dict[str, str]:
    """The same properties from the unit file alone (``ActiveState`` unknown: empty)."""
    folder = default_unit_dir(user_unit)
    path = folder / UNIT_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {"LoadState": "not-found"}
    values = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line and not line.startswith("#"))
    exe = values.get("ExecStart", "").split(" ")[0].strip('"').replace("%h", str(Path.home()))
    wanted = values.get("WantedBy", "")
    enabled = bool(wanted) and (folder / f"{wanted}.wants" / UNIT_NAME).exists()
    return {"LoadState": "loaded", "UnitFileState": "enabled" if enabled else "disabled", "ActiveState": "",
            "MainPID": "", "ExecStart": f"path={exe}", "FragmentPath": str(path)}


def running_as_root() -> bool:
    """True when this process runs as root (effective uid 0): its unit is the
    system one, whatever config it reads (a server has no user manager for
    root to host a ``--user`` unit), and its fixes need no ``sudo``."""
    return os.geteuid() == 0


def check_unit(user_unit: bool, systemctl: str = "systemctl") -> list[Check]:
    """``unit`` (installed, ExecStart present) and ``service`` (enabled, active) checks."""
    scope = "--user " if user_unit else ""
    sudo = "" if user_unit or running_as_root() else "sudo "
    install = "./scripts/install.sh --user --now" if user_unit else f"{sudo}./scripts/install.sh --run-as USER --now"
    props = systemctl_show(user_unit, systemctl)
    live = props is not None
    props = props or read_unit_file(user_unit)
    kind = "user" if user_unit else "system"
    if props.get("LoadState") != "loaded":
        if not live and not RUN_SYSTEMD.is_dir():  # sd_booted(3): a unit could not run on this machine
            return [Check("unit", "warn", f"no {kind} unit {UNIT_NAME} installed, and systemd is not running here "
                          f"(no {RUN_SYSTEMD}): start `llmc-rag serve` by hand or under your own supervisor")]
        return [Check("unit", "warn", f"no {kind} unit {UNIT_NAME} installed: llmc-rag runs only when started by hand",
                      install)]
    match = re.search(r"path=([^ ;]+)", props.get("ExecStart", ""))
    exe = match.group(1) if match else ""
    if not exe or not os.access(exe, os.X_OK):
        unit = Check("unit", "fail", f"{props.get('FragmentPath')}: ExecStart {exe or '(none)'} is not an executable "
                     "(a removed or moved installation)", install)
    else:
        unit = Check("unit", "ok", f"{props.get('FragmentPath')}: ExecStart {exe}")
    return [unit, _service_check(props, live, scope, sudo)]


def _service_check(props: dict[str, str], live: bool, scope: str, sudo: str) -> Check:
    enabled = props.get("UnitFileState") in _ENABLED
    state = props.get("ActiveState", "")
    if not live:
        return Check("service", "warn", f"{'enabled' if enabled else 'not enabled'}; systemd is not running here, "
                     "so whether the service is active is unknown", None)
    if state == "failed":
        return Check("service", "fail", f"failed (journalctl {scope}-u llmc-rag -p err says why)",
                     f"{sudo}systemctl {scope}restart llmc-rag")
    if state in ("inactive", "deactivating"):
        return Check("service", "warn", f"{state}, {'enabled' if enabled else 'not enabled'}",
                     f"{sudo}systemctl {scope}enable --now llmc-rag")
    if not enabled:
        return Check("service", "warn", f"{state} but not enabled: it will not start at boot",
                     f"{sudo}systemctl {scope}enable llmc-rag")
    return Check("service", "ok", f"{state}, enabled, main pid {props.get('MainPID') or '?'}")
