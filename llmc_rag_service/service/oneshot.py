"""``llmc-rag enrich``: scan, enrich every pending span, exit.

:func:`run_enrich` returns an :class:`Outcome`; ``cli.py`` maps it to the exit
status of the contract (DESIGN.md "Contract: command line"): all enriched,
some spans failed for good, or gave up because Ollama stayed unreachable,
busy or without the model for longer than ``wait_s`` (pending work is kept
for next time). A store that cannot be used (corrupt, replaced, or full or
read-only for longer than :data:`STORE_WAIT_S`) raises its ``StoreUnusable``.
"""

from __future__ import annotations

import enum
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence, TextIO

import structlog

from llmc_rag_service.config import Config, RepoConfig
from llmc_rag_service.service.pipeline import Pipeline
from llmc_rag_service.service.status import status_report

log = structlog.get_logger(__name__)



class Outcome(enum.Enum):
    """How a one-shot run ended."""

    DONE = "done"  # every span enriched
    SOME_FAILED = "some_failed"  # some spans dead-lettered for good
    GAVE_UP = "gave_up"  # Ollama unavailable for longer than wait_s

#: Seconds between plain progress lines when stderr is not a terminal.
PLAIN_PROGRESS_EVERY_S = 10.0
#: Seconds a stop may wait for in-flight requests after the work is done.
STOP_GRACE_S = 5.0
#: Seconds the workers may stay paused by a store fault (disk full, read-only)
#: before enrich gives up: a one-shot run should say so, not wait for space.
STORE_WAIT_S = 10.0


def select_repos(config: Config, paths: Sequence[str]) -> tuple[RepoConfig, ...]:
    """The configured repos, or the given directories (keeping the excludes of
    a configured repo at the same path)."""
    if not paths:
        return config.repos
    known = {r.path: r for r in config.repos}
    chosen = []
    for p in paths:
        path = Path(p).expanduser().resolve()
        if not path.is_dir():
            raise NotADirectoryError(f"{p}: not a directory")
        chosen.append(known.get(path, RepoConfig(path=path)))
    return tuple(chosen)


class Progress:
    """A progress bar on a TTY (redrawn in place), plain lines otherwise."""

    def __init__(self, stream: TextIO):
        self.stream, self.tty = stream, stream.isatty()
        self.last = 0.0
        self.drawn = False  # a bar is on the terminal's current line

    def update(self, done: int, total: int, line: str, final: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            width = 30
            filled = int(width * done / total) if total else width
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} jobs  {line[:90]:<90}")
            self.drawn = not final
            if final:
                self.stream.write("\n")
        elif final or now - self.last >= PLAIN_PROGRESS_EVERY_S:
            self.stream.write(f"enrich: {done}/{total} jobs; {line}\n")
            self.last = now
        self.stream.flush()

    def interrupt(self) -> None:
        """End the bar's line, so that a message written next starts on its own."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def run_enrich(config: Config, repo_paths: Sequence[str] = (), wait_s: float = 300.0,
               stream: TextIO | None = None, retry_failed: bool = False) -> Outcome:
    """Scan the repos and enrich until nothing is pending; see module docstring.
    ``retry_failed`` first returns dead-lettered jobs to the queue.

    Raises:
        NotADirectoryError: a repo path given is no directory.
        StoreUnusable: the store cannot be used (see module docstring); the
            work done so far is kept.
    """
    stream = stream or sys.stderr
    repos = select_repos(config, repo_paths)
    config = replace(config, repos=repos)
    changed = threading.Event()
    pipeline = Pipeline(config, on_change=changed.set)
    progress = Progress(stream)
    started = time.monotonic()
    try:
        if retry_failed:
            log.info("jobs_requeued", count=pipeline.requeue_failed(), reason="--retry-failed")
        pipeline.scan_all()
        pipeline.start_workers()
        code = _wait_done(pipeline, wait_s, progress, changed)
    except BaseException:
        progress.interrupt()
        raise
    finally:
        pipeline.close(STOP_GRACE_S)
    totals = status_report(config)["totals"]
    stream.write(
        f"enrich: {totals['enriched']}/{totals['spans']} spans enriched, {totals['failed']} failed, "
        f"{totals['pending']} pending in {time.monotonic() - started:.1f} s\n"
    )
    if code is Outcome.DONE and totals["failed"]:
        code = Outcome.SOME_FAILED
    return code


def _wait_done(pipeline: Pipeline, wait_s: float, progress: Progress, changed: threading.Event) -> Outcome:
    down_since: float | None = None
    paused_since: float | None = None
    while True:
        paused_since = _check_store(pipeline, paused_since)
        c = pipeline.counts()
        remaining = c["pending"] + c["running"]
        total = remaining + pipeline.finished()
        if remaining == 0:
            progress.update(total, total, pipeline.status_line(), final=True)
            return Outcome.DONE
        progress.update(total - remaining, total, pipeline.status_line())
        down = pipeline.ollama_down()
        if down:
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > wait_s:
                progress.update(total - remaining, total, pipeline.status_line(), final=True)
                log.error("enrich_gave_up", reason=down, error=pipeline.last_error(),
                          waited_s=round(wait_s, 1), pending=remaining)
                return Outcome.GAVE_UP
        else:
            down_since = None
        # Woken by every job outcome; the timeout keeps the deadline checks going.
        changed.wait(0.5)
        changed.clear()


def _check_store(pipeline: Pipeline, paused_since: float | None) -> float | None:
    """Raise the store fault in force if it is fatal or has paused the workers
    longer than :data:`STORE_WAIT_S`; returns since when they are paused (or None)."""
    fault = pipeline.store_fault()
    if fault is None:
        return None
    paused_since = paused_since or time.monotonic()
    if not fault.pauses or time.monotonic() - paused_since > STORE_WAIT_S:
        raise fault  # cli.py says it in one line
    return paused_since
