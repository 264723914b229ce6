"""``llmc-rag doctor``: is this installation able to work, and if not, what fixes it.

Each check is a :class:`Check` with ``ok``, ``warn`` or ``fail``, a detail
line and, unless ok, the one command that fixes it. ``cli.py`` exits 1 when
any check fails. Checks, in order:

* ``config``: the file found by the lookup order loads and validates;
* ``repos``: every ``repos[].path`` is a directory;
* ``state``: the state directory is writable by this user, readable by no
  other (mode), and the store passes SQLite's ``PRAGMA quick_check``;
* ``disk``: free space on the state directory's filesystem;
* ``ollama``: each host answers ``GET /api/version``;
* ``chat model`` / ``embed model``: ``GET /api/tags`` lists ``ollama.model``
  and ``search.embed_model`` (a missing embed model only degrades search: warn);
* ``inotify``: ``fs.inotify.max_user_watches`` against the directories to
  watch (one watch per directory);
* ``unit``: the unit is installed and its ``ExecStart`` executable exists;
  ``service``: enabled and active (``systemctl show``; without a running
  systemd, read from the unit file);
* ``store``: the running service (its runtime file) uses the store this config reads;
* ``team``: with ``team.postgres`` set, the team database accepts the login and
  its schema is usable (one connection: ``team.client.probe_once``, which also
  creates or migrates the tables). A wrong password, a missing database, a
  role without the privilege or a missing ``[postgres]`` extra fail (the
  daemon would work alone); an unreachable server only warns (it may be down
  for now; results wait in the outbox).

The system unit is checked for the system config (``/etc/llmc-rag/config.yaml``),
the user unit otherwise. Requests to Ollama are only the two cheap reads
DESIGN.md allows for probes.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from llmc_rag_service.config import SYSTEM_CONFIG, Config, ConfigError, find_config_path, load_config, locate_config
from llmc_rag_service.enrich.ollama import OllamaClient
from llmc_rag_service.enrich.prompt import check_num_ctx
from llmc_rag_service.index.ignore import RepoIgnore
from llmc_rag_service.service import doctor_unit, runtime
from llmc_rag_service.service.doctor_unit import Check, check_unit
from llmc_rag_service.service.preflight import has_model, missing_model_message, probe_host
from llmc_rag_service.service.status import daemon_running
from llmc_rag_service.store.faults import StoreUnusable
from llmc_rag_service.store.views import StoreReader
from llmc_rag_service.team.client import probe_once
from llmc_rag_service.team.errors import TeamError
from llmc_rag_service.team.settings import TeamSettings, redact_dsn

__all__ = ["Check", "Limits", "run_checks", "as_text", "as_json"]

#: Free bytes on the state directory's filesystem below which doctor fails / warns.
DISK_FAIL_BYTES = 100 * 2**20
DISK_WARN_BYTES = 2**30
#: Where the kernel says how many inotify watches one user may hold (inotify(7)).
MAX_USER_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")


@dataclass(frozen=True)
class Limits:
    """What doctor measures against: free bytes (fail, warn) and the inotify
    limit file. Tests set them to provoke each failure."""

    disk_fail_bytes: int = DISK_FAIL_BYTES
    disk_warn_bytes: int = DISK_WARN_BYTES
    max_user_watches: Path = MAX_USER_WATCHES


def run_checks(config_arg: str | None, env: Mapping[str, str] | None = None, limits: Limits = Limits(),
               systemctl: str = "systemctl") -> list[Check]:
    """Every check for the config ``-c config_arg`` (else the lookup order)."""
    env = os.environ if env is None else env
    path = find_config_path(config_arg, env)
    checks: list[Check] = []
    try:
        config = _load(config_arg, env)
        checks.append(Check("config", "ok", f"{path}: valid, {len(config.repos)} repo{'s' if len(config.repos) > 1 else ''}"))
    except ConfigError as exc:
        checks.append(Check("config", "fail", str(exc), _config_fix(exc, path, bool(config_arg))))
        config = None
    if config is not None:
        checks += [check_repos(config), *check_state(config), check_disk(config.state_dir, limits)]
        checks += check_ollama(config)
        checks.append(check_inotify(config, limits.max_user_watches))
    user_unit = Path(os.path.abspath(path)) != SYSTEM_CONFIG and not doctor_unit.running_as_root()
    checks += check_unit(user_unit=user_unit, systemctl=systemctl)
    if config is not None:
        checks.append(check_service_store(config, env))
        checks.append(check_team(config))
    return checks


def _load(config_arg: str | None, env: Mapping[str, str]) -> Config:
    config = load_config(locate_config(config_arg, env), env)
    check_num_ctx(config)
    return config


def _config_fix(exc: ConfigError, path: Path, explicit: bool = False) -> str:
    if not path.exists() and explicit:
        return f"the cp above creates {path}; or drop -c"
    if not path.exists() and not doctor_unit.RUN_SYSTEMD.is_dir():  # sd_booted(3): no unit could run here
        return "the cp above, then run llmc-rag serve by hand or under your own supervisor"
    if not path.exists() and doctor_unit.running_as_root():
        return "./scripts/install.sh --run-as USER (writes /etc/llmc-rag/config.yaml from the sample)"
    if not path.exists():
        return ("./scripts/install.sh --user (writes ~/.config/llmc-rag/config.yaml from the sample), "
                "or the cp above")
    where = f" line {exc.line}" if exc.line else ""
    return f"edit {path}{where}" + (f" ({exc.key})" if exc.key else "")


def check_repos(config: Config) -> Check:
    """Every configured repo is a directory."""
    missing = [(i, r.path) for i, r in enumerate(config.repos) if not r.path.is_dir()]
    if missing:
        detail = "not a directory: " + ", ".join(f"repos[{i}].path {p}" for i, p in missing)
        return Check("repos", "fail", detail, f"mkdir -p {missing[0][1]} (or remove it from repos in {config.source})")
    return Check("repos", "ok", ", ".join(str(r.path) for r in config.repos))


def check_state(config: Config) -> list[Check]:
    """The state directory: writable, private, and an intact store."""
    folder = config.state_dir
    if not folder.exists():
        parent = next((p for p in folder.parents if p.exists()), Path("/"))
        if os.access(parent, os.W_OK | os.X_OK):
            return [Check("state", "ok", f"{folder} will be created at the first run")]
        return [Check("state", "fail", f"{folder} does not exist and {parent} is not writable by {_me()}",
                      f"sudo install -d -m 0700 -o {_me()} {folder}")]
    try:
        st = folder.stat()
    except OSError as exc:
        return [Check("state", "fail", f"{folder}: {exc.strerror}", f"sudo -u {_owner(folder)} llmc-rag doctor")]
    if not os.access(folder, os.W_OK | os.X_OK):
        return [Check("state", "fail", f"{folder} is not writable by {_me()} (owner {_owner(folder)})",
                      f"sudo -u {_owner(folder)} llmc-rag doctor -c {config.source}")]
    checks = [_check_store(config)]
    if st.st_mode & 0o077:
        checks.append(Check("state mode", "warn", f"{folder} is open to other users "
                            f"(mode {stat.S_IMODE(st.st_mode):04o}): the store holds your code", f"chmod 700 {folder}"))
    return checks


def _check_store(config: Config) -> Check:
    db = config.db_path
    try:
        reader = StoreReader.open(db)
        if reader is None:
            return Check("state", "ok", f"{config.state_dir} writable; no store yet")
        with reader:
            problems = reader.quick_check()
    except (sqlite3.Error, StoreUnusable) as exc:
        problems = [str(exc)]
    if problems:
        return Check("state", "fail", f"{db} is damaged: {'; '.join(problems)}", _move_aside_fix(config))
    return Check("state", "ok", f"{db}: intact (quick_check), {db.stat().st_size / 2**20:.1f} MiB")


def _move_aside_fix(config: Config) -> str:
    """The command that moves a damaged store aside (as the store's own error
    says: ``.bad``), around a stop and start of the service that uses it, if
    one runs under systemd; a new store is made and the repos rescanned."""
    db, ours = config.db_path, config.state_dir.absolute()
    service = next((s for s in runtime.running_services() if s.state_dir and s.state_dir.absolute() == ours), None)
    if service is None:
        return f"mv {db} {db}.bad (stop a serve that uses it first), then run llmc-rag enrich or serve"
    user = "" if service.runtime_file.parent == runtime.SYSTEM_RUNTIME_DIR else "--user "
    sudo = "" if user or doctor_unit.running_as_root() else "sudo "
    return f"{sudo}systemctl {user}stop llmc-rag && mv {db} {db}.bad && {sudo}systemctl {user}start llmc-rag"


def check_disk(state_dir: Path, limits: Limits) -> Check:
    """Free space where the store lives (or will)."""
    where = next((p for p in (state_dir, *state_dir.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(where).free
    detail = f"{free / 2**30:.1f} GiB free on the filesystem of {where}"
    if free < limits.disk_fail_bytes:
        return Check("disk", "fail", detail + ": the store cannot grow", f"make room on that filesystem (df -h {where})")
    if free < limits.disk_warn_bytes:
        return Check("disk", "warn", detail, f"make room on that filesystem (df -h {where})")
    return Check("disk", "ok", detail)


def _pull(url: str, model: str) -> str:
    host = urlsplit(url).netloc
    local = host.split(":")[0] in ("127.0.0.1", "localhost", "::1", "[::1]")
    return f"ollama pull {model}" if local else f"OLLAMA_HOST={host} ollama pull {model}"


def check_ollama(config: Config) -> list[Check]:
    """Per host: reachable, chat model present, embed model present."""
    checks = []
    embed = config.search.embed_model
    for host in config.ollama.all_hosts():
        client = OllamaClient(config.ollama, host)
        try:
            probe = probe_host(client)
        finally:
            client.close()
        if probe.version is None:
            checks.append(Check("ollama", "fail", f"{host.url} unreachable: {probe.error}",
                                f"start the Ollama server at {host.url} (`ollama serve`, or `sudo systemctl start ollama` where it is "
                                f"a service) or fix ollama.url in {config.source}"))
            continue
        checks.append(Check("ollama", "ok", f"{host.url} answers (version {probe.version})"))
        if probe.models is None:
            checks.append(Check("chat model", "fail", f"{host.url}/api/tags: {probe.error}", "check the Ollama server's log"))
            continue
        checks.append(_model_check("chat model", config.ollama.model, probe, "fail"))
        if embed is None:
            checks.append(Check("embed model", "ok", "off (search.embed_model: null): lexical search only"))
        else:
            checks.append(_model_check("embed model", embed, probe, "warn"))
    return checks


def _model_check(name: str, model: str, probe: Any, severity: str) -> Check:
    if has_model(probe.models, model):
        return Check(name, "ok", f"{model} present on {probe.url}")
    return Check(name, severity, missing_model_message(model, probe), _pull(probe.url, model))


def count_watch_dirs(config: Config) -> int:
    """Directories the watchers would watch: every directory of every repo
    that the ignore rules keep (one inotify watch each)."""
    total = 0
    for repo in config.repos:
        if not repo.path.is_dir():
            continue
        ignore, stack = RepoIgnore(repo.path, repo.exclude), [""]
        while stack:
            rel = stack.pop()
            total += 1
            try:
                with os.scandir(repo.path / rel if rel else repo.path) as entries:
                    subdirs = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
            stack += [c for c in (f"{rel}/{n}" if rel else n for n in subdirs) if not ignore.is_ignored(c, is_dir=True)]
    return total


def check_inotify(config: Config, limit_file: Path) -> Check:
    """The per-user inotify watch limit against the directories to watch."""
    dirs = count_watch_dirs(config)
    try:
        limit = int(limit_file.read_text().strip())
    except (OSError, ValueError) as exc:
        return Check("inotify", "warn", f"cannot read {limit_file}: {exc}", None)
    wanted = max(524288, 1 << (2 * dirs).bit_length())
    fix = (f"echo fs.inotify.max_user_watches={wanted} | sudo tee /etc/sysctl.d/90-llmc-rag.conf "
           "&& sudo sysctl --system")
    detail = f"{dirs} directories to watch, max_user_watches {limit}"
    if dirs > limit:
        return Check("inotify", "fail", detail + ": repos past the limit are polled (slow, costly)", fix)
    if dirs > limit // 2:
        return Check("inotify", "warn", detail + ": little room left for other programs (editors, IDEs)", fix)
    return Check("inotify", "ok", detail)


def check_service_store(config: Config, env: Mapping[str, str]) -> Check:
    """Does the running service use the store this config reads?"""
    report = runtime.store_report(config, env)
    service = report["service"]
    if service is None:
        pid = daemon_running(config.state_dir)
        by_hand = f"; a serve started by hand (pid {pid}) uses it" if pid else ""
        return Check("store", "ok", f"{config.db_path}; no llmc-rag service runs under systemd{by_hand}")
    if report["service_uses_this_store"]:
        return Check("store", "ok", f"{config.db_path} is the running service's store (pid {service['pid']})")
    if service["state_dir"] is None:
        return Check("store", "warn", "a llmc-rag service runs; its runtime file is not readable by this user",
                     "sudo llmc-rag doctor")
    return Check("store", "warn", f"this config reads {config.db_path}, the running service (pid {service['pid']}) "
                 f"uses {service['state_dir']}", f"llmc-rag doctor -c {service['config']}")


#: The fix shown for each kind of team-database failure (``team.errors``).
_TEAM_FIXES = {
    "not_installed": "reinstall with the extra: pip install 'llmc-rag-service[postgres]' "
                     "(or set team.postgres: null)",
    "auth_failed": "check the role and its password (PGPASSWORD or a 0600 PGPASSFILE for the service user); "
                   "README: Team mode",
    "database_missing": "as a PostgreSQL superuser: CREATE DATABASE llmc OWNER llmc (README: Team mode)",
    "permission_denied": "make the role own its database: ALTER DATABASE llmc OWNER TO llmc (README: Team mode)",
    "schema_too_new": "upgrade llmc-rag on this machine to the version your teammates run",
    "unreachable": "start PostgreSQL there or fix the host/port in team.postgres; meanwhile the daemon works alone",
}


def check_team(config: Config) -> Check:
    """Team mode: off, or one connection to ``team.postgres`` (login, schema)."""
    dsn = config.team.postgres
    if dsn is None:
        return Check("team", "ok", "off (team.postgres: null): enriching alone")
    try:
        version = probe_once(dsn, TeamSettings(lease_s=config.team.lease_s))
    except TeamError as err:
        severity = "warn" if err.kind == "unreachable" else "fail"
        return Check("team", severity, str(err), _TEAM_FIXES.get(err.kind, f"edit team.postgres in {config.source}"))
    return Check("team", "ok", f"{redact_dsn(dsn)}: login ok, team schema version {version}")


def _me() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _owner(path: Path) -> str:
    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (KeyError, OSError):
        return "the service user"


def as_text(checks: list[Check]) -> str:
    """One line per check (``ok``, ``warn``, ``FAIL``), each fix on the line below, and a count."""
    lines = []
    for c in checks:
        lines.append(f"{'FAIL' if c.status == 'fail' else c.status:<5} {c.name:<12} {c.detail}")
        if c.fix:
            lines.append(f"{'':<18} fix: {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail")}
    lines.append(f"doctor: {counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail")
    return "\n".join(line.encode("utf-8", "backslashreplace").decode("utf-8") for line in lines)


def as_json(checks: list[Check]) -> dict[str, Any]:
    """``{"ok": no check failed, "checks": [{name, status, detail, fix}]}``."""
    return {"ok": not any(c.status == "fail" for c in checks), "checks": [asdict(c) for c in checks]}
