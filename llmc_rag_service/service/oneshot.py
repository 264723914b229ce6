"""``llmc-rag enrich``: scan, enrich every pending span, exit.

:func:`run_enrich` returns an :class:`Outcome`; ``cli.py`` maps it to the exit
status of the contract (DESIGN.md "Contract: command line"): all enriched,
some spans failed for good, a repo path missing (the others are enriched),
or gave up because Ollama stayed unreachable, busy or without the model for
longer than ``wait_s`` (pending work is kept for next time).

After the scan, when there is work and before anything waits, each Ollama
host is asked once whether it answers and has the model
(``service.preflight``), so a missing model is said at once with the models
the server has. Progress (rate, ETA, logs above the bar): ``service.progress``;
its lanes count spans as ``status`` and the closing summary do (a job's result
serves every span with its content), out of the spans the scan found.

Embeddings start once every enrichment is in (or Ollama cannot give more now):
a span's embedded text includes its summary, so a span embedded before its
enrichment lands is embedded again (``serve`` does that on purpose, so search
is semantic early during a long backfill; a one-shot run waits for both anyway).

A store that cannot be used (corrupt, replaced, or full or read-only for
longer than :data:`STORE_WAIT_S`) raises its ``StoreUnusable``; the work done
so far is kept.
"""

from __future__ import annotations

import enum
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence, TextIO

import structlog

from llmc_rag_service.config import Config, RepoConfig, exclude_owned
from llmc_rag_service.paths import real_path
from llmc_rag_service.service.pipeline import Pipeline
from llmc_rag_service.service.preflight import preflight
from llmc_rag_service.service.progress import Lane, Progress
from llmc_rag_service.service.status import span_totals

log = structlog.get_logger(__name__)


class Outcome(enum.Enum):
    """How a one-shot run ended."""

    DONE = "done"  # every span enriched
    SOME_FAILED = "some_failed"  # some spans dead-lettered for good
    REPO_MISSING = "repo_missing"  # a repo path is not a directory (the others were enriched)
    GAVE_UP = "gave_up"  # Ollama unavailable for longer than wait_s


#: Seconds a stop may wait for in-flight requests after the work is done.
STOP_GRACE_S = 5.0
#: Seconds between two counts of the bar's spans in the store (every job outcome wakes the loop).
COUNT_EVERY_S = 0.25
#: Seconds the workers may stay paused by a store fault (disk full, read-only)
#: before enrich gives up: a one-shot run should say so, not wait for space.
STORE_WAIT_S = 10.0


def select_repos(config: Config, paths: Sequence[str]) -> tuple[tuple[RepoConfig, ...], tuple[Path, ...]]:
    """(repos to enrich, paths that are not directories): the configured
    repos, or the given directories (a directory in a configured repo means
    that repo, with its excludes)."""
    # A name no directory can have (NUL, unknown ~user) stays as given: reported as not a directory.
    wanted = [_repo_of(config, real_path(x) or Path(x)) for x in paths] if paths else list(config.repos)
    wanted = list(dict.fromkeys(wanted))  # two directories of one configured repo: it once
    # os.path.isdir, not Path.is_dir: a name too long is "not a directory", not an OSError (exit 74).
    present = tuple(r for r in wanted if os.path.isdir(r.path))
    return present, tuple(r.path for r in wanted if not os.path.isdir(r.path))


def _close(pipeline: Pipeline) -> None:
    """``pipeline.close`` giving in-flight requests :data:`STOP_GRACE_S` seconds. A second
    Ctrl-C or SIGTERM during that wait ends the wait, but the jobs this run claimed still go
    back to pending before it propagates: left ``running``, a ``serve`` on the same store
    would never retry them (it returns a dead process's jobs only when it starts)."""
    try:
        pipeline.close(STOP_GRACE_S)
    except KeyboardInterrupt:
        pipeline.close(0.0)
        raise


def _repo_of(config: Config, path: Path) -> RepoConfig:
    """The configured repo at or above ``path`` (a directory inside a repo is
    enriched as that repo, not as a second, nested one that would index its
    files twice), else a repo of its own with default settings, excluding the
    configured repos and the store inside it (each indexed by its own entry)."""
    for repo in sorted(config.repos, key=lambda r: len(r.path.parts), reverse=True):
        if path == repo.path or (repo.path in path.parents and os.path.isdir(path)):
            return repo
    return exclude_owned(RepoConfig(path=path), config.repos, config.state_dir)


def run_enrich(config: Config, repo_paths: Sequence[str] = (), wait_s: float = 300.0,
               stream: TextIO | None = None, retry_failed: bool = False) -> Outcome:
    """Scan the repos and enrich until nothing is pending; see module docstring.
    ``retry_failed`` first returns dead-lettered jobs to the queue.

    Raises:
        StoreUnusable: the store cannot be used (see module docstring).
    """
    stream = stream or sys.stderr
    progress = Progress(stream)

    def say(text: str) -> None:
        progress.write_above(f"llmc-rag: {text}\n".encode("utf-8", "backslashreplace").decode("utf-8"))

    repos, missing = select_repos(config, repo_paths)
    for path in missing:
        what = "not a directory" if os.path.lexists(path) else "no such directory"
        if repos and not progress.tty:  # mid-run off a terminal: a log record like every other line
            log.error("enrich_repo_missing", path=str(path), reason=what, action="enriching the other repos")
        else:
            say(f"repo {path}: {what}" + ("; enriching the other repos" if repos else ""))
    if not repos:
        return Outcome.REPO_MISSING
    config = replace(config, repos=repos)
    changed = threading.Event()
    pipeline = Pipeline(config, on_change=changed.set)
    started = time.monotonic()
    try:
        with progress.logs_above(config.logging.level, config.logging.format):
            if not repo_paths:  # the configured repos: a nested one dropped from them is the outer one's now
                pipeline.drop_nested(repos)
            if retry_failed:
                log.info("jobs_requeued", count=pipeline.requeue_failed(), reason="--retry-failed")
            pipeline.scan_all()
            if pipeline.counts()["pending"]:  # an unchanged tree sends no request at all
                # A line on a terminal; elsewhere every line but the closing ones is a log record.
                preflight(pipeline.clients, config.ollama.model, wait_s, say if progress.tty else None)
            # Embeddings start once the enrichments are in (see _wait_done): a span
            # embedded before its enrichment lands is embedded again after it.
            pipeline.start_workers(embeddings=False)
            code = _wait_done(pipeline, wait_s, progress, changed)
        # status --json shows why this run gave up (and nothing once a run did not).
        pipeline.set_meta(ollama_last_error=pipeline.last_error() if code is Outcome.GAVE_UP else None)
        embed_missing = pipeline.embeds_down() == "model_missing"
        gave_up = _gave_up_advice(config, pipeline.ollama_down() or pipeline.embeds_down(), pipeline.last_error(),
                                  wait_s) if code is Outcome.GAVE_UP else None
        outbox = pipeline.flush_team()
        team = pipeline.team_status()
    finally:
        _close(pipeline)
    totals = span_totals(config, repos)
    embed_failed = f" ({totals['embed_failed']} failed)" if totals["embed_failed"] else ""
    embedded = f", {totals['embedded']} embedded{_from_team(team, 'embed_hits', ' vectors')}{embed_failed}" \
        if config.search.embed_model else ""
    stream.write(
        f"enrich: {totals['enriched']}/{totals['spans']} spans enriched{_from_team(team)}{embedded}, {totals['failed']} failed, "
        f"{totals['pending']} pending in {time.monotonic() - started:.1f} s\n"
    )
    if gave_up:
        say(gave_up)
    if outbox:
        say(f"{outbox} results wait in the team outbox: the team database did not answer at the end; "
            "the next enrich or serve publishes them")
    if embed_missing:
        model = config.search.embed_model
        say(f"embed model {model} not found, run: ollama pull {model} (search is lexical until then; "
            "the next enrich or serve embeds what is missing)")
    if totals["failed"] and code is Outcome.DONE:
        say(f"{totals['failed']} spans failed for good (llmc-rag show FILE gives each error); "
            "after fixing the cause, run: llmc-rag enrich --retry-failed")
    if totals["embed_failed"] and code is Outcome.DONE:
        say(f"{totals['embed_failed']} span embeddings failed for good (the log's job_failed lines give each "
            "reason; those spans are found by lexical search only); after fixing the cause, run: "
            "llmc-rag enrich --retry-failed")
    if code is Outcome.DONE and missing:
        return Outcome.REPO_MISSING
    if code is Outcome.DONE and (totals["failed"] or totals["embed_failed"]):
        code = Outcome.SOME_FAILED
    return code


def _gave_up_advice(config: Config, down: str | None, error: str | None, wait_s: float) -> str:
    """What to do after giving up on Ollama: the reason, that the work is kept, the fix."""
    hosts = ", ".join(h.url for h in config.ollama.all_hosts())
    fix = {"model_missing": f"run ollama pull {config.ollama.model} (on {hosts})",
           "unreachable": f"start Ollama at {hosts} (ollama serve, or systemctl start ollama)",
           "busy": "wait until the server's queue drains (it answered 503: busy)",
           }.get(down or "", "check the server (llmc-rag doctor)")
    return (f"gave up after {wait_s:.0f} s (--wait-s) waiting for Ollama: {error or down}; "
            f"the pending work is kept: {fix}, then run llmc-rag enrich again")


def _from_team(team: dict[str, Any] | None, counter: str = "hits", unit: str = "") -> str:
    """`` (N from the team cache)`` (N: ``team[counter]``, followed by ``unit``) with team mode on, else nothing."""
    return f" ({team[counter]}{unit} from the team cache)" if team else ""


class _SpanLanes:
    """The progress lanes, in spans of ``config.repos`` as ``status`` counts them:
    enriched, and embedded when embeddings are on; counted in the store at most
    every :data:`COUNT_EVERY_S` seconds (the last count in between)."""

    def __init__(self, config: Config):
        self.config = config
        self._lanes: list[Lane] = []
        self._at = 0.0

    def now(self, fresh: bool = False) -> list[Lane]:
        """The lanes; ``fresh``: counted now (the last bar must match the summary)."""
        if fresh or not self._lanes or time.monotonic() - self._at >= COUNT_EVERY_S:
            t = span_totals(self.config, self.config.repos)
            self._lanes = [Lane("enriched", t["enriched"], t["spans"], t["failed"])]
            if self.config.search.embed_model:
                self._lanes.append(Lane("embedded", t["embedded"], t["spans"], t["embed_failed"]))
            self._at = time.monotonic()
        return self._lanes


def _wait_done(pipeline: Pipeline, wait_s: float, progress: Progress, changed: threading.Event) -> Outcome:
    down_since = paused_since = None
    counted = _SpanLanes(pipeline.config)
    while True:
        c = pipeline.counts()
        enrich_left = c["pending"] + c["running"]
        if not enrich_left or pipeline.ollama_down():  # every enrichment in, or none can come now
            pipeline.start_embeddings()
        # Embeddings are waited for too, unless their model is missing (said
        # at the end): that must not hold back the enrichments.
        embed_left = pipeline.embeds_left()
        lanes = counted.now(fresh=not enrich_left + embed_left)
        if enrich_left + embed_left == 0:
            progress.update(lanes, pipeline.status_line(), final=True)
            return Outcome.DONE
        progress.update(lanes, pipeline.status_line())
        fault = pipeline.store_fault()
        paused_since = (paused_since or time.monotonic()) if fault else None
        if fault and paused_since is not None and (not fault.pauses or time.monotonic() - paused_since > STORE_WAIT_S):
            progress.update(lanes, pipeline.status_line(), final=True)
            raise fault  # cli.py says it in one line
        down = pipeline.ollama_down() if enrich_left else pipeline.embeds_down()
        if down:
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > wait_s:
                progress.update(counted.now(fresh=True), pipeline.status_line(), final=True)
                log.error("enrich_gave_up", reason=down, error=pipeline.last_error(),
                          waited_s=round(wait_s, 1), pending=enrich_left, embed_pending=embed_left)
                return Outcome.GAVE_UP
        else:
            down_since = None
        # Woken by every job outcome; the timeout keeps the deadline checks going.
        changed.wait(0.5)
        changed.clear()
