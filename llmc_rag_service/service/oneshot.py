"""``llmc-rag enrich``: scan, enrich every pending span, exit.

What happened is an :class:`EnrichOutcome`; ``cli.py`` maps it to the exit
status of DESIGN.md "Contract: command line" (0 all enriched; 1 some spans
failed for good; 69 Ollama unreachable, busy or the model missing for longer
than ``wait_s``, pending work kept for next time; 66 a repo path missing).

After the scan, when there is work and before anything waits, each Ollama
host is asked once whether it answers and has the model
(``service.preflight``), so a missing model is said at once with the models
the server has. Progress: ``service.progress``.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence, TextIO

import structlog

from llmc_rag_service.config import Config, RepoConfig
from llmc_rag_service.service.pipeline import Engine
from llmc_rag_service.service.preflight import preflight
from llmc_rag_service.service.progress import Progress
from llmc_rag_service.service.status import status_report

log = structlog.get_logger(__name__)

#: Seconds a stop may wait for in-flight requests after the work is done.
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class EnrichOutcome:
    """What one ``enrich`` run came to. ``gave_up``: the Ollama state it gave
    up waiting on (``unreachable``, ``model_missing``, ``busy``...) or None;
    ``failed``: spans failed for good; ``missing``: repo paths that are not
    directories (not enriched; the others were)."""

    gave_up: str | None = None
    failed: int = 0
    missing: tuple[Path, ...] = ()


def select_repos(config: Config, paths: Sequence[str]) -> tuple[tuple[RepoConfig, ...], tuple[Path, ...]]:
    """(repos to enrich, paths that are not directories): the configured
    repos, or the given directories (keeping the excludes of a configured
    repo at the same path)."""
    known = {r.path: r for r in config.repos}
    wanted = [known.get(p, RepoConfig(path=p)) for p in (Path(x).expanduser().resolve() for x in paths)] \
        if paths else list(config.repos)
    present = tuple(r for r in wanted if r.path.is_dir())
    return present, tuple(r.path for r in wanted if not r.path.is_dir())


def run_enrich(config: Config, repo_paths: Sequence[str] = (), wait_s: float = 300.0,
               stream: TextIO | None = None, retry_failed: bool = False) -> EnrichOutcome:
    """Scan the repos and enrich until nothing is pending; see module docstring.
    ``retry_failed`` first returns dead-lettered jobs to the queue."""
    stream = stream or sys.stderr
    progress = Progress(stream)

    def say(text: str) -> None:
        progress.write_above(f"llmc-rag: {text}\n".encode("utf-8", "backslashreplace").decode("utf-8"))

    repos, missing = select_repos(config, repo_paths)
    for path in missing:
        say(f"repo {path}: no such directory" + ("; enriching the other repos" if repos else ""))
    if not repos:
        return EnrichOutcome(missing=missing)
    config = replace(config, repos=repos)
    changed = threading.Event()
    engine = Engine(config, on_change=changed.set)
    started = time.monotonic()
    try:
        with progress.logs_above(config.logging.level, config.logging.format):
            if retry_failed:
                repo_ids = [scanner.repo_id for scanner in engine.scanners.values()]
                log.info("jobs_requeued", count=engine.queue.requeue_failed(repo_ids), reason="--retry-failed")
            for scanner in engine.scanners.values():
                scanner.full_scan()
            if engine.counts()["pending"]:  # an unchanged tree sends no request at all
                preflight(engine.clients, config.ollama.model, wait_s, say)
            engine.pool.start()
            gave_up = _wait_done(engine, wait_s, progress, changed)
        # status --json shows why this run gave up (and nothing once it did not).
        engine.store.set_meta(ollama_last_error=engine.last_error() if gave_up else None)
    finally:
        engine.close(STOP_GRACE_S)
    totals = status_report(config)["totals"]
    stream.write(
        f"enrich: {totals['enriched']}/{totals['spans']} spans enriched, {totals['failed']} failed, "
        f"{totals['pending']} pending in {time.monotonic() - started:.1f} s\n"
    )
    if totals["failed"] and not gave_up:
        say(f"{totals['failed']} spans failed for good (llmc-rag show FILE gives each error); "
            "after fixing the cause, run: llmc-rag enrich --retry-failed")
    return EnrichOutcome(gave_up=gave_up, failed=totals["failed"], missing=missing)


def _wait_done(engine: Engine, wait_s: float, progress: Progress, changed: threading.Event) -> str | None:
    """Wait until nothing is pending (None) or Ollama stayed down for ``wait_s`` (the reason)."""
    down_since: float | None = None
    while True:
        c = engine.counts()
        remaining = c["pending"] + c["running"]
        total = remaining + engine.pool.done + engine.pool.failed
        if remaining == 0:
            progress.update(total, total, engine.status_line(), final=True)
            return None
        progress.update(total - remaining, total, engine.status_line())
        down = engine.ollama_down()
        if down:
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > wait_s:
                progress.update(total - remaining, total, engine.status_line(), final=True)
                log.error("enrich_gave_up", reason=down, error=engine.last_error(),
                          waited_s=round(wait_s, 1), pending=remaining)
                return down
        else:
            down_since = None
        # Woken by every job outcome; the timeout keeps the deadline checks going.
        changed.wait(0.5)
        changed.clear()
