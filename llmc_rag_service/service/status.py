"""Read-only views of the store: ``status --json``, ``show --json`` and the STATUS line.

The JSON shapes are the contract in DESIGN.md ("Contract: status --json",
"Contract: show --json"). Counts are per configured repo over the spans
currently in the tree, so ``enriched + pending + failed == spans`` always:
a span is enriched if its content hash has an enrichment for the configured
model and prompt version, failed if its job is dead-lettered, else pending.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from llmc_rag_service.config import Config
from llmc_rag_service.models import PROMPT_VERSION

LOCK_NAME = "llmc-rag.lock"

_COUNTS_SQL = """
SELECT COUNT(DISTINCT f.id) AS files, COUNT(s.id) AS spans,
       COALESCE(SUM(e.span_hash IS NOT NULL), 0) AS enriched,
       COALESCE(SUM(e.span_hash IS NULL AND j.state = 'failed'), 0) AS failed
FROM files f
LEFT JOIN spans s ON s.file_id = f.id
LEFT JOIN enrichments e ON e.span_hash = s.span_hash AND e.model = :model AND e.prompt_version = :pv
LEFT JOIN jobs j ON j.span_hash = s.span_hash AND j.model = :model AND j.prompt_version = :pv
WHERE f.repo_id = (SELECT id FROM repos WHERE path = :repo) AND f.skipped IS NULL
"""


def open_readonly(db_path: Path) -> sqlite3.Connection | None:
    """A read-only connection, or None if the database does not exist yet
    (``status`` must work before the daemon ever ran, and create nothing)."""
    if not db_path.exists():
        return None
    try:
        conn = _connect(f"file:{db_path}?mode=ro")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.OperationalError:
        # A WAL database in a directory we cannot write (no -shm file and no
        # right to make one) opens only as immutable; the daemon is not
        # running then, so nothing changes under us.
        conn = _connect(f"file:{db_path}?mode=ro&immutable=1")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:  # created a moment ago, not migrated yet: as if absent
        conn.close()
        return None
    return conn


def _connect(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, timeout=10.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def daemon_running(state_dir: Path) -> int | None:
    """PID of the running ``serve`` (it holds an flock on the lock file), else None."""
    lock = state_dir / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
        except ValueError:
            return None
    finally:
        os.close(fd)
    return None


def repo_counts(conn: sqlite3.Connection | None, repo: Path, model: str) -> dict[str, int]:
    """``{files, spans, enriched, pending, failed}`` for one repo."""
    if conn is None:
        return dict(files=0, spans=0, enriched=0, pending=0, failed=0)
    row = conn.execute(_COUNTS_SQL, {"model": model, "pv": PROMPT_VERSION, "repo": str(repo)}).fetchone()
    counts = dict(files=row["files"], spans=row["spans"], enriched=row["enriched"], failed=row["failed"])
    counts["pending"] = counts["spans"] - counts["enriched"] - counts["failed"]
    return counts


def repo_state(path: Path, states: dict[str, str], running: bool) -> str:
    """``ok``, ``missing`` or ``polling``: as the running daemon last published it
    (``Watching.states``), else ``missing`` when no directory is at the path."""
    if running:
        return states.get(str(path), "ok")
    return "ok" if path.is_dir() else "missing"


def status_report(config: Config) -> dict[str, Any]:
    """The ``status --json`` object (DESIGN.md contract)."""
    conn = open_readonly(config.db_path)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall()) if conn else {}
        counts = {r.path: repo_counts(conn, r.path, config.ollama.model) for r in config.repos}
    finally:
        if conn:
            conn.close()
    pid = daemon_running(config.state_dir)
    states = json.loads(meta.get("repo_states") or "{}") if pid else {}
    repos = [{"path": str(path), "state": repo_state(path, states, pid is not None), **c} for path, c in counts.items()]
    totals = {k: sum(r[k] for r in repos) for k in ("files", "spans", "enriched", "pending", "failed")}
    return {
        "daemon": {"running": pid is not None, "pid": pid, "status": meta.get("daemon_status") if pid else None},
        "ollama": {"url": ", ".join(h.url for h in config.ollama.all_hosts()), "model": config.ollama.model,
                   "last_error": meta.get("ollama_last_error") or None},
        "repos": repos,
        "totals": totals,
    }


def resolve_file(config: Config, path: str) -> tuple[Path, str] | None:
    """Map a user path (absolute or relative to the cwd) to (repo, relpath)."""
    target = Path(path).expanduser().resolve()
    for repo in sorted(config.repos, key=lambda r: len(str(r.path)), reverse=True):
        try:
            return repo.path, target.relative_to(repo.path).as_posix()
        except ValueError:
            continue
    return None


def show_report(config: Config, path: str, line: int | None = None) -> list[dict[str, Any]] | None:
    """The ``show --json`` list for one file, or None if the file is unknown."""
    where = resolve_file(config, path)
    conn = open_readonly(config.db_path)
    if where is None or conn is None:
        return None
    repo, relpath = where
    try:
        file_row = conn.execute(
            "SELECT f.id FROM files f JOIN repos r ON r.id = f.repo_id WHERE r.path = ? AND f.path = ?",
            (str(repo), relpath),
        ).fetchone()
        if file_row is None:
            return None
        rows = conn.execute(
            """SELECT s.*, e.summary, e.inputs, e.outputs, e.side_effects, e.pitfalls, e.usage, e.created_at,
                      j.state AS job_state, j.last_error
               FROM spans s
               LEFT JOIN enrichments e ON e.span_hash = s.span_hash AND e.model = :m AND e.prompt_version = :pv
               LEFT JOIN jobs j ON j.span_hash = s.span_hash AND j.model = :m AND j.prompt_version = :pv
               WHERE s.file_id = :f ORDER BY s.start_line, s.id""",
            {"m": config.ollama.model, "pv": PROMPT_VERSION, "f": file_row["id"]},
        ).fetchall()
    finally:
        conn.close()
    spans = [_span_json(relpath, r, config.ollama.model) for r in rows]
    if line is not None:
        spans = [s for s in spans if s["start_line"] <= line <= s["end_line"]]
    return spans


def _span_json(relpath: str, r: sqlite3.Row, model: str) -> dict[str, Any]:
    enriched = r["summary"] is not None
    state = "enriched" if enriched else ("failed" if r["job_state"] == "failed" else "pending")
    enrichment = None
    if enriched:
        enrichment = {
            "summary": r["summary"], **{k: json.loads(r[k]) for k in ("inputs", "outputs", "side_effects", "pitfalls")},
            "usage": r["usage"], "model": model, "created_at": r["created_at"],
        }
    return {
        "path": relpath, "start_line": r["start_line"], "end_line": r["end_line"], "kind": r["kind"],
        "name": r["name"], "span_hash": r["span_hash"], "state": state,
        "error": r["last_error"] if state != "enriched" else None, "enrichment": enrichment,
    }
