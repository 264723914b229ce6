"""Read-only views of the store: ``status --json``, ``show --json`` and the STATUS line.

The JSON shapes are the contract in DESIGN.md ("Contract: status --json",
"Contract: show --json"); ``status --json`` also has ``team`` (null without
``team.postgres``), from the running daemon's :data:`TEAM_META` record. Counts are per configured repo over the spans
currently in the tree, so ``enriched + pending + failed == spans`` always:
a span is enriched if its content hash has an enrichment for the configured
model and prompt version, failed if its job is dead-lettered, else pending;
``embedded`` counts the spans with a vector of ``search.embed_model`` and the
current input version (``enrich/embed_text.py``). ``secrets`` (per repo and in
all) audits the secret redaction: values replaced in indexed files, secret
files not indexed, and (in all) values replaced in model answers since the
store was made.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from llmc_rag_service.config import Config, RepoConfig
from llmc_rag_service.enrich.embed_text import INPUT_VERSION
from llmc_rag_service.models import PROMPT_VERSION
from llmc_rag_service.paths import real_path
from llmc_rag_service.store.views import StoreReader, empty_counts, empty_secrets, file_freshness
from llmc_rag_service.team.settings import redact_dsn

LOCK_NAME = "llmc-rag.lock"
#: The ``meta`` key under which the daemon keeps its team cache's counters (JSON).
TEAM_META = "team_status"
#: What ``status --json`` shows of them (the contract's ``team`` object, plus ``last_error``, ``queries``
#: and the embedding counters ``embed_hits`` and ``embed_published``).
TEAM_FIELDS = ("reachable", "hits", "published", "deferred", "last_error", "queries", "embed_hits", "embed_published")


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


#: ``state`` of a repo the store holds but the config does not name (indexed by
#: ``enrich PATH``, or dropped from the config): searchable, never watched.
UNWATCHED = "unwatched"


def repo_state(path: Path, states: dict[str, str], running: bool, configured: bool = True) -> str:
    """``ok``, ``missing`` or ``polling``: as the running daemon last published it
    (``WatchSet.states``), else ``missing`` when no directory is at the path. A
    repo the config does not name is :data:`UNWATCHED` (or ``missing``): no daemon watches it."""
    if running and configured:
        return states.get(str(path), "ok")
    return ("ok" if configured else UNWATCHED) if path.is_dir() else "missing"


def _repo_paths(config: Config, reader: StoreReader) -> list[Path]:
    """The configured repos, then those only the store holds."""
    configured = [r.path for r in config.repos]
    named = set(configured)
    return configured + [p for p in reader.repo_paths() if p not in named]


def known_repos(config: Config) -> list[RepoConfig]:
    """The configured repos, then (default settings) those only the store holds:
    what ``show`` and ``search`` can answer about."""
    reader = StoreReader.open(config.db_path)
    if reader is None:
        return list(config.repos)
    with reader:
        paths = _repo_paths(config, reader)
    by_path = {r.path: r for r in config.repos}
    return [by_path.get(p, RepoConfig(path=p)) for p in paths]


def status_report(config: Config) -> dict[str, Any]:
    """The ``status --json`` object (DESIGN.md contract). Its ``repos`` are the
    configured ones, then any other the store holds files of, with ``state``
    :data:`UNWATCHED`; ``totals`` add them all up."""
    reader = StoreReader.open(config.db_path)
    answers_redacted = outbox = 0
    if reader is None:
        meta: dict[str, str] = {}
        repos = [{"path": str(r.path), **empty_counts(), "secrets": empty_secrets()} for r in config.repos]
    else:
        with reader:
            meta, answers_redacted = reader.meta(), reader.answers_redacted()
            repos = [{"path": str(path), **reader.repo_counts(path, config.ollama.model, PROMPT_VERSION,
                                                               config.search.embed_model, INPUT_VERSION),
                      "secrets": reader.repo_secrets(path)} for path in _repo_paths(config, reader)]
            outbox = reader.team_outbox_count()
    totals = {k: sum(r[k] for r in repos) for k in ("files", "spans", "enriched", "pending", "failed", "embedded", "embed_failed")}
    secrets = {k: sum(r["secrets"][k] for r in repos) for k in ("redacted", "secret_files_skipped")}
    pid = daemon_running(config.state_dir)
    states = json.loads(meta.get("repo_states") or "{}") if pid else {}
    configured = {str(r.path) for r in config.repos}
    repos = [{"path": r["path"], "state": repo_state(Path(r["path"]), states, pid is not None, r["path"] in configured),
              **r} for r in repos]
    return {
        "daemon": {"running": pid is not None, "pid": pid, "status": meta.get("daemon_status") if pid else None},
        "ollama": {"url": ", ".join(h.url for h in config.ollama.all_hosts()), "model": config.ollama.model,
                   "last_error": meta.get("ollama_last_error") or None},
        "repos": repos,
        "totals": totals,
        "secrets": {**secrets, "answers_redacted": answers_redacted},
        "team": team_report(config, meta.get(TEAM_META) if pid else None, outbox),
    }


def span_totals(config: Config, repos: list[RepoConfig] | tuple[RepoConfig, ...]) -> dict[str, int]:
    """``status --json``'s counts (``files``, ``spans``, ``enriched``, ``pending``,
    ``failed``, ``embedded``, ``embed_failed``) summed over ``repos`` only; all 0
    before the store exists."""
    totals: dict[str, int] = empty_counts()
    reader = StoreReader.open(config.db_path)
    if reader is None:
        return totals
    with reader:
        for repo in repos:
            counts = reader.repo_counts(repo.path, config.ollama.model, PROMPT_VERSION, config.search.embed_model,
                                        INPUT_VERSION)
            totals = {k: v + counts[k] for k, v in totals.items()}
    return totals


def team_report(config: Config, recorded: str | None, outbox: int) -> dict[str, Any] | None:
    """``status --json``'s ``team``: None when team mode is off, else
    ``{url (no password), reachable, hits, published, outbox, deferred,
    last_error, queries, embed_hits, embed_published}`` (``queries``: statements the daemon sent to the
    team database since it started; ``hits``/``published`` count enrichments,
    ``embed_hits``/``embed_published`` vectors). ``recorded`` is the running daemon's :data:`TEAM_META`
    JSON (None when no daemon runs: ``reachable`` is then None and the
    counters 0); ``outbox`` is counted in the store, so it shows results
    waiting to be published even while the daemon is stopped."""
    if config.team.postgres is None:
        return None
    try:
        counters = json.loads(recorded) if recorded else {}
    except ValueError:
        counters = {}
    report: dict[str, Any] = {"url": redact_dsn(config.team.postgres), "reachable": None, "hits": 0,
                              "published": 0, "outbox": outbox, "deferred": 0, "last_error": None, "queries": 0,
                              "embed_hits": 0, "embed_published": 0}
    report.update({k: counters[k] for k in TEAM_FIELDS if k in counters})
    return report


def resolve_file(config: Config, path: str) -> tuple[Path, str] | None:
    """Map a user path (absolute, relative to the cwd, or ``~``) to (repo, relpath);
    None when it is in no repo or no file can have that name (see :mod:`llmc_rag_service.paths`).
    A symlink keeps its own name (the scanner never follows one); the directories above it are resolved."""
    target = real_path(path, follow_last=False)
    if target is None:
        return None
    for repo in sorted(known_repos(config), key=lambda r: len(str(r.path)), reverse=True):
        try:
            return repo.path, target.relative_to(repo.path).as_posix()
        except ValueError:
            continue
    return None


def show_report(config: Config, path: str, line: int | None = None) -> list[dict[str, Any]] | None:
    """The ``show --json`` list for one file, or None if the file is unknown or gone.
    Each span carries ``fresh``: the file unchanged since it was indexed (when
    false, its line numbers may be off until it is indexed again)."""
    where = resolve_file(config, path)
    reader = StoreReader.open(config.db_path)
    if where is None or reader is None:
        return None
    repo, relpath = where
    with reader:
        record = reader.file_record(repo, relpath)
        if record is None:
            return None
        rows = reader.file_spans(record["id"], config.ollama.model, PROMPT_VERSION)
    fresh = file_freshness(repo / relpath, record["size"], record["mtime_ns"])
    if fresh is None:  # deleted since it was indexed: nothing to show (search hides it too)
        return None
    spans = [{**span_json(relpath, r, config.ollama.model), "fresh": fresh} for r in rows]
    if line is not None:
        spans = [s for s in spans if s["start_line"] <= line <= s["end_line"]]
    return spans


def span_json(relpath: str, r: sqlite3.Row, model: str) -> dict[str, Any]:
    """One ``show --json`` object from a :meth:`StoreReader.file_spans` row."""
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
