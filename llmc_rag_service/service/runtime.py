"""Which store the running service uses: its runtime file, and what ``status`` says about it.

``serve`` started by systemd gets ``$RUNTIME_DIRECTORY`` from the unit's
``RuntimeDirectory=llmc-rag`` (``/run/llmc-rag`` for the system unit,
``$XDG_RUNTIME_DIR/llmc-rag`` for the user unit; systemd.exec(5)
"RuntimeDirectory="). The daemon writes :data:`RUNTIME_NAME` there: one JSON
object ``{"pid", "state_dir", "config", "started_at"}`` (``started_at`` in Unix
seconds). systemd removes the directory when the service stops; the daemon
also deletes the file on a clean stop. A ``serve`` run by hand, without
``$RUNTIME_DIRECTORY``, writes none: it is not "the service".

``status`` and ``doctor`` read the files of both places and compare the
service's state directory with the one their own config gives, so a person
learns at once when the shell reads a different store than the service writes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import structlog

from llmc_rag_service.config import Config

log = structlog.get_logger(__name__)

RUNTIME_NAME = "daemon.json"
#: ``RuntimeDirectory=llmc-rag`` of the system unit.
SYSTEM_RUNTIME_DIR = Path("/run/llmc-rag")


@dataclass(frozen=True)
class ServiceInfo:
    """A running service as its runtime file describes it. ``pid`` is alive;
    ``state_dir`` is None when the file exists but cannot be read (another
    user's service)."""

    pid: int | None
    state_dir: Path | None
    config: str | None
    runtime_file: Path


def runtime_dirs(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where services put their runtime file: the system unit's, then this user's."""
    env = os.environ if env is None else env
    dirs = [SYSTEM_RUNTIME_DIR]
    if env.get("XDG_RUNTIME_DIR"):
        dirs.append(Path(env["XDG_RUNTIME_DIR"]) / "llmc-rag")
    return dirs


def write_runtime_file(state_dir: Path, config_path: Path | None,
                       env: Mapping[str, str] | None = None) -> Path | None:
    """Write the runtime file into ``$RUNTIME_DIRECTORY`` (first entry) and
    return its path; None without that variable. A failure to write is logged
    (a warning) and ignored: ``status`` then only misses the hint."""
    env = os.environ if env is None else env
    folder = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if not folder:
        return None
    path = Path(folder) / RUNTIME_NAME
    body = {"pid": os.getpid(), "state_dir": str(state_dir.absolute()),
            "config": str(Path(config_path).absolute()) if config_path else None, "started_at": time.time()}
    tmp = path.with_name(f".{RUNTIME_NAME}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(body) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        log.warning("runtime_file_failed", path=str(path), error=str(exc))
        return None
    return path


def remove_runtime_file(path: Path | None) -> None:
    """Delete the file :func:`write_runtime_file` wrote (if it is still ours)."""
    if path is None:
        return
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def running_services(env: Mapping[str, str] | None = None) -> list[ServiceInfo]:
    """The services whose runtime file names a live process, system first."""
    found = []
    for folder in runtime_dirs(env):
        path = folder / RUNTIME_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except PermissionError:
            found.append(ServiceInfo(None, None, None, path))
            continue
        except (OSError, ValueError):
            continue
        pid = data.get("pid")
        if isinstance(pid, int) and _alive(pid):
            found.append(ServiceInfo(pid, Path(data["state_dir"]), data.get("config"), path))
    return found


def store_report(config: Config, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``store`` object of ``status --json``: ``{"path", "exists",
    "service": null | {"pid", "state_dir", "config"}, "service_uses_this_store":
    null (no service running) | true | false}``. With several running
    services, the one using this store is preferred."""
    services = running_services(env)
    ours = config.state_dir.absolute()
    mine = [s for s in services if s.state_dir is not None and s.state_dir.absolute() == ours]
    service = next(iter(mine or services), None)
    try:
        exists = config.db_path.exists()
    except OSError:
        exists = False
    report: dict[str, Any] = {"path": str(config.db_path), "exists": exists, "service": None,
                              "service_uses_this_store": None}
    if service is not None:
        report["service"] = {"pid": service.pid, "config": service.config,
                             "state_dir": str(service.state_dir) if service.state_dir else None}
        report["service_uses_this_store"] = bool(mine)
    return report


def describe_store(report: dict[str, Any]) -> str:
    """One line for ``status``: which store was read and whether the running
    service writes it, with the command that reads the service's store."""
    line = f"store: {report['path']}" + ("" if report["exists"] else " (not created yet)")
    service = report["service"]
    if service is None:
        return line + "; no llmc-rag service runs under systemd"
    if report["service_uses_this_store"]:
        return line + f"; written by the running service (pid {service['pid']})"
    if service["state_dir"] is None:
        return line + "; a llmc-rag service runs, its runtime file is not readable by this user"
    hint = f": run with -c {service['config']}" if service["config"] else ""
    return line + (f"; NOT the running service's store (pid {service['pid']} uses {service['state_dir']})"
                   + hint)
