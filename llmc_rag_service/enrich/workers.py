"""The worker pool: turns queued jobs into stored enrichments, on one or more Ollama hosts.

Each host (``ollama.hosts``, or the single ``ollama.url``) gets ``concurrency``
threads; each loops claim -> prompt -> ``/api/chat`` -> validate -> store with
no pause between one answer and the next claim: the server queues what it
cannot run yet, so with concurrency = the server's slots no slot idles. A job
goes to whichever host has a free thread; the claim is one SQLite
transaction, so each job runs on exactly one host at a time.

Per-job costs are shared where the guarantees allow (issue 12): a claim takes
up to one job per worker thread in one transaction, with their span texts in
one query, and the threads take jobs from that batch before claiming again
(jobs claimed ahead are ``running`` under this process id, so a kill -9
returns them to pending at the next start, and stopping or retiring the pool
puts them back); a worker hands its valid answer to the pool's result writer
(``enrich/results.py``: one thread storing every result waiting, in one
transaction) and sends its next request at once. A job claimed ahead is sent
with the text read at its claim, at most one round of answers earlier.

Each host also gets one live slot: a thread that claims only jobs of a save
(``PRIORITY_LIVE``), one at a time and never ahead, and is woken only by new
jobs. While every other thread waits on a backfill answer (seconds each on a
real model), a save's request is sent at once; Ollama queues it at the head of
what it cannot run yet, so it is answered next instead of after a backfill
job's turn on every thread.

The policy of each error kind is the ``policy`` of its class in ``ollama.py``:

* ``pause`` (Unavailable, ModelMissing): the job is released with its attempts
  intact; the host is marked down and its threads wait (on an Event, with a
  deadline) while one probe at a time (``/api/version``, or ``/api/tags`` for
  a missing model) decides, with jittered backoff, when to resume. Other hosts
  carry on. One log line per state change.
* ``release`` (Busy): released with its attempts intact after Retry-After or a
  jittered backoff that grows while the host stays busy.
* ``retry`` (RequestTimeout, ServerError, Disconnected; InvalidAnswer): an
  attempt is counted, retried with backoff, dead-lettered after
  ``queue.max_attempts``. :data:`QUARANTINE_AFTER` such failures in a row
  quarantine the host for a backoff, so a crash-looping server cannot burn
  every job's attempts while other hosts could do the work.
* ``dead_letter`` (BadRequest; PromptTooLarge): failed at once, logging what was sent.

With a :class:`~llmc_rag_service.enrich.gate.JobGate` (team mode), each job is
admitted by it before anything is sent: a teammate's result is stored
(``team_hit``), a job a teammate is enriching is put back for a while
(``team_deferred``), every stored answer is handed to it to share, and a job
that fails or goes back is handed back to it.

A valid answer, and a teammate's result, goes through ``redact_answer`` (given
by the pipeline: the secret redaction of ``index/redact.py``, which this package
may not import) before it is stored: a secret-looking value the model wrote
becomes a marker. If the redaction fails, the answer is not stored and the job
goes back.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import structlog

from llmc_rag_service.clock import SYSTEM, Clock
from llmc_rag_service.enrich import ollama as ol
from llmc_rag_service.enrich.gate import JobGate
from llmc_rag_service.enrich.outages import HostOutages
from llmc_rag_service.enrich.results import Result, ResultWriter
from llmc_rag_service.enrich.prompt import (InvalidAnswer, PromptTooLarge, build_messages, estimate_prompt_tokens,
                                         parse_answer, plan_num_predict)
from llmc_rag_service.models import Enrichment, Job
from llmc_rag_service.store.jobs import PRIORITY_LIVE, JobQueue, backoff_s
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.secret_audit import count_answer_redactions

log = structlog.get_logger(__name__)

#: ``(enrichment, path, first_line) -> (enrichment with secret values replaced, how many)``;
#: raises to keep the answer from being stored.
AnswerRedactor = Callable[[Enrichment, str, int], tuple[Enrichment, int]]

#: Seconds a request may run past its deadline before the watchdog health gate calls the worker hung.
HANG_GRACE_S = 60.0
#: Seconds a worker pauses after an unexpected error (e.g. the store locked).
JOB_ERROR_PAUSE_S = 5.0
#: First and longest wait between probes of a down host, in seconds.
PROBE_BASE_S = 1.0
PROBE_MAX_S = 60.0
#: First and longest wait after a 503 busy answer without Retry-After, in seconds.
BUSY_BASE_S = 1.0
BUSY_MAX_S = 60.0
#: Failed attempts in a row (retry policy) that quarantine a host.
QUARANTINE_AFTER = 3
#: Longest a waiting worker sleeps before looking at its stop flag again, in seconds.
IDLE_WAIT_S = 1.0
#: Longest an idle worker waits before looking at the queue again, in seconds.
#: Jobs this process queues wake it at once (notify_work), and a job in backoff
#: wakes it when due; this bound only catches jobs another process (a
#: concurrent ``enrich``) queued.
IDLE_CLAIM_WAIT_S = 30.0


@dataclass
class Host:
    """One Ollama host as the workers see it.

    ``state``: ``ok``, ``unreachable``, ``model_missing`` or ``quarantined``;
    ``retry_at``: ``clock()`` of the next probe; ``failures``: failed
    probes in a row; ``strikes``: failed attempts in a row; ``busy``: 503s in a row;
    ``down_at``: ``clock()`` when it was last marked down (an answer to a request
    sent before that says nothing of the host now).
    """

    client: ol.OllamaClient
    state: str = "ok"
    error: str | None = None
    retry_at: float = 0.0
    failures: int = 0
    strikes: int = 0
    busy: int = 0
    down_at: float = float("-inf")
    ok_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    clock: Clock = field(default=SYSTEM, repr=False)

    def __post_init__(self) -> None:
        self.ok_event.set()

    @property
    def url(self) -> str:
        return self.client.url

    def retry_in_s(self) -> float:
        """Seconds until the next probe (0 when due)."""
        return max(0.0, self.retry_at - self.clock())


class WorkerPool:
    """Worker threads for every host, over one :class:`JobQueue`.

    Args:
        store, queue: State and queue.
        clients: One :class:`~llmc_rag_service.enrich.ollama.OllamaClient` per host
            (or a single client); each brings ``concurrency`` threads.
        on_change: Called (no args, from a worker thread) after every job
            outcome or host state change, e.g. to refresh STATUS. Keep it cheap.
        clock: Time of backoffs, probes, idle waits and the hang check
            (joins on stop stay on real time).
        gate: Asked before each job is sent (team mode), or None: send every job.
        redact_answer: Applied to every valid answer before it is stored
            (see :data:`AnswerRedactor`); None stores answers as they are.
        outages: Shared with the other lanes' pools, so one outage of a host
            is one error line (``enrich/outages.py``); None: this pool's own.
    """

    #: Whether a turn needs the span's text with its job (read with the claim).
    READS_TEXT = True
    #: The ``lane`` field of this pool's host log lines.
    LANE = "enrich"

    def __init__(self, store: Store, queue: JobQueue, clients: ol.OllamaClient | Sequence[ol.OllamaClient],
                 on_change: Callable[[], None] = lambda: None, clock: Clock = SYSTEM, gate: JobGate | None = None,
                 redact_answer: AnswerRedactor | None = None, outages: HostOutages | None = None):
        self.store, self.queue, self.on_change, self.clock, self.gate = store, queue, on_change, clock, gate
        self.redact_answer = redact_answer
        self.outages = outages if outages is not None else HostOutages()
        self.hosts = [Host(c, clock=clock) for c in ([clients] if isinstance(clients, ol.OllamaClient) else clients)]
        self.stopping = threading.Event()
        self.wake = threading.Event()
        # The live slots' own wake-up: new jobs only, not every job outcome
        # (those set ``wake`` hundreds of times a second during a backfill).
        self.live_wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started: dict[int, tuple[Host, float]] = {}  # thread ident -> (host, monotonic start)
        self._lock = threading.Lock()
        self._stranded: list[tuple[Job, str]] = []  # claimed jobs the store could not take back yet
        self._ahead: deque[tuple[Job, sqlite3.Row | None]] = deque()  # claimed, with their span text
        self._claiming = threading.Lock()  # one claim at a time; the others take from its batch
        #: Jobs one claim takes: one per worker thread, so a claim serves a whole round.
        self.claim_batch = max(1, sum(h.client.concurrency for h in self.hosts))
        self.results = ResultWriter(queue, self._stored, self._not_stored)
        self._live = 0  # worker threads not yet ended; the last one ends the result writer
        self.done = self.failed = 0

    @property
    def host(self) -> Host:
        """The first (with one host, the only) host."""
        return self.hosts[0]

    # -- lifecycle -----------------------------------------------------
    def start(self) -> None:
        """Start the worker threads, ``concurrency`` per host plus its live slot
        (daemon threads: a hung request cannot block exit)."""
        with self._lock:  # += : a pool started twice (a reload before start_workers) runs both sets
            self._live += sum(host.client.concurrency + 1 for host in self.hosts)
        self.results.start()
        for n, host in enumerate(self.hosts):
            slots = [(f"worker-{n}.{i}", False) for i in range(host.client.concurrency)]
            for name, live in slots + [(f"worker-{n}.live", True)]:
                thread = threading.Thread(target=self._run, args=(host, live), name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    def warm_up(self) -> None:
        """Ask every host to load the model now, in background threads (the
        empty-prompt load request). Nothing waits for it: workers send their
        requests at once anyway and Ollama queues them behind the load."""
        for host in self.hosts:
            threading.Thread(target=self._warm_up, args=(host,), name="warm-up", daemon=True).start()

    def _warm_up(self, host: Host) -> None:
        started = time.monotonic()
        try:
            answer = host.client.warm_up()
        except ol.OllamaError as exc:
            log.warning("warm_up_failed", url=host.url, model=host.client.cfg.model, error=str(exc))
            return
        log.info("warm_up_done", url=host.url, model=host.client.cfg.model,
                 duration_s=round(time.monotonic() - started, 3), load_duration_ns=answer.get("load_duration"))

    def stop(self, deadline: float, store_wait_s: float | None = None) -> int:
        """Stop claiming; wait for in-flight jobs until ``deadline`` (a
        ``time.monotonic()`` value, in seconds: the lanes of one pipeline share
        one stop deadline); return jobs still running to pending, waiting at
        most ``store_wait_s`` seconds for the store's write lock (default: the
        store's busy timeout). Returns how many were returned.

        Raises:
            sqlite3.OperationalError: the write lock stayed taken (the jobs stay
                marked running by this process; the next start returns them).
        """
        self.stopping.set()
        self.wake.set()
        self.live_wake.set()
        for host in self.hosts:
            host.ok_event.set()  # wake threads waiting on a down host; they see ``stopping``
        self.outages.forget(self)
        for thread in self._threads + [self.results.thread]:  # the writer ends after the last worker
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._ahead.clear()  # recover() below returns them with every job left running
        return self.queue.recover(busy_timeout_s=store_wait_s)

    def busy_threads(self) -> int:
        """Worker threads still running (after stop(): those past the grace). The
        result writer is not counted: it uses no client, ends by itself after the
        last worker, and closes its own store connection."""
        return sum(thread.is_alive() for thread in self._threads)

    def notify_work(self) -> None:
        """New jobs were queued: wake idle workers and the live slots."""
        self.wake.set()
        self.live_wake.set()

    @property
    def in_flight(self) -> int:
        """Requests being answered now, all hosts together."""
        with self._lock:
            return len(self._started)

    def in_flight_at(self, host: Host) -> int:
        """Requests being answered now by ``host``."""
        with self._lock:
            return sum(1 for h, _ in self._started.values() if h is host)

    def hung(self) -> str | None:
        """Health check for the watchdog: a reason if a request has run past its
        host's longest possible request plus :data:`HANG_GRACE_S`, else None."""
        now = self.clock()
        with self._lock:
            running = list(self._started.values())
        for host, started in running:
            limit = host.client.max_request_s() + (host.client.concurrency + 1) * ol.CONNECT_TIMEOUT_S + HANG_GRACE_S
            if now - started > limit:
                return f"a job on {host.url} has been running {now - started:.0f} s (limit {limit:.0f} s)"
        return None

    # -- the loop ------------------------------------------------------
    def _run(self, host: Host, live: bool = False) -> None:
        try:
            self._loop(host, live)
            self._release_ahead()
        finally:
            # A finished thread's SQLite connection would otherwise stay open
            # until shutdown: every reload would leak file descriptors.
            self.store.release_thread()
            with self._lock:
                self._live -= 1
                last = self._live == 0
            if last:
                self.results.finish()

    def _release_ahead(self) -> None:
        """Put back the jobs claimed ahead and not started (the pool stops or is
        retired); if the store cannot take them now, the next start does (their
        claim names this process)."""
        with self._lock:
            ahead, self._ahead = list(self._ahead), deque()
        try:
            for job, _ in ahead:
                self.queue.release(job)
        except Exception as exc:
            log.warning("jobs_not_returned", count=len(ahead), error=f"{type(exc).__name__}: {exc}")

    def retire(self) -> None:
        """Stop claiming, without waiting: requests in flight finish in the
        background and store their results (used by reload, so the main loop
        never blocks and no job is sent twice). The clients belong to the
        caller, who closes them once :meth:`busy_threads` is 0."""
        self.stopping.set()
        self.wake.set()
        self.live_wake.set()
        for host in self.hosts:
            host.ok_event.set()
        self.outages.forget(self)
        self._release_ahead()

    def dead(self) -> str | None:
        """Health check: a reason if a worker thread of a running pool died."""
        if self.stopping.is_set():
            return None
        dead = [t.name for t in self._threads + [self.results.thread] if t.ident is not None and not t.is_alive()]
        return f"worker thread dead: {', '.join(dead)}" if dead else None

    def _loop(self, host: Host, live: bool = False) -> None:
        while not self.stopping.is_set():
            try:
                self._turn(host, live)
            except Exception as exc:
                # One guard around the whole turn, the claim included: no
                # error (the disk full, the state file replaced, the store
                # locked past busy_timeout) can end a worker thread. A store
                # fault pauses it (the daemon says so once, in log and STATUS).
                fault = self.store.note_error(exc)
                if fault is None:
                    log.error("worker_error", host=host.url, error=f"{type(exc).__name__}: {exc}", exc_info=True)
                else:
                    log.debug("worker_paused", host=host.url, error=str(fault))
                self.on_change()
                self.clock.wait(self.stopping, JOB_ERROR_PAUSE_S)

    def _turn(self, host: Host, live: bool = False) -> None:
        """One turn: probe a down host, or give back stranded jobs, claim one and
        process it (``live``: the live slot, which takes only a save's job)."""
        if not host.ok_event.is_set():
            if self._ahead and not any(h.ok_event.is_set() for h in self.hosts):
                self._release_ahead()  # no host can take them now: pending again, attempts intact
            self._maybe_probe(host)
            return
        self._release_stranded()
        # Clear before looking: a notify_work() after this point either
        # finds its job in the claim below or keeps the event set.
        (self.live_wake if live else self.wake).clear()
        taken = self._take_live() if live else self._take()
        if taken is None:
            if not self.stopping.is_set():
                self._idle(live)
            return
        job, row = taken
        self.wake.set()  # there was work: let an idle worker look for more
        try:
            self._process(host, job, row)
        except Exception as exc:
            # E.g. the store locked by another process past busy_timeout, or
            # full: the job goes back (later, if the store cannot take even
            # that now), and this thread lives on.
            fault = self.store.note_error(exc)
            (log.warning if fault else log.error)(
                "job_error", job=job.id, error=str(fault) if fault else f"{type(exc).__name__}: {exc}",
                exc_info=fault is None)
            self._put_back(job, f"{type(exc).__name__}: {exc}")
            self.clock.wait(self.stopping, JOB_ERROR_PAUSE_S)
        # The outcome may have put the job back (retry, release): idle
        # workers, maybe of another host, re-read the queue's next due time.
        self.wake.set()
        self.on_change()

    def _take(self) -> tuple[Job, sqlite3.Row | None] | None:
        """The next job and its span's text (None: the span is gone), from the
        jobs claimed ahead, else from a new claim of up to :attr:`claim_batch`
        jobs (one transaction, one read of their texts); None if none is ready."""
        with self._lock:
            if self._ahead:
                return self._ahead.popleft()
        with self._claiming:
            with self._lock:
                if self._ahead:  # another thread's claim filled it meanwhile
                    return self._ahead.popleft()
            jobs = self.queue.claim_many(self.claim_batch)
            rows = self._texts(jobs)
            with self._lock:
                self._ahead.extend((job, rows.get(job.span_hash)) for job in jobs)
                return self._ahead.popleft() if self._ahead else None

    def _take_live(self) -> tuple[Job, sqlite3.Row | None] | None:
        """A save's job for the live slot, claimed alone (never ahead), with its span's text."""
        job = self.queue.claim(max_priority=PRIORITY_LIVE)
        return None if job is None else (job, self._texts([job]).get(job.span_hash))

    def _texts(self, jobs: list[Job]) -> dict[str, sqlite3.Row]:
        """The span texts of claimed ``jobs`` by span hash, in one query ({} when
        this pool reads none); if the read fails the jobs are stranded (released
        on a later turn) and the error raised."""
        try:
            return self.store.span_texts([job.span_hash for job in jobs]) if jobs and self.READS_TEXT else {}
        except Exception:
            with self._lock:
                self._stranded.extend((job, "span text not read") for job in jobs)
            raise

    def _idle(self, live: bool) -> None:
        """Wait for work: the live slot until new jobs are queued (a save's job
        retried later is taken by the other threads); the others also until
        the next job in backoff is due."""
        if live:
            self.clock.wait(self.live_wake, IDLE_CLAIM_WAIT_S)
            return
        due = self.queue.next_due_s()
        self.clock.wait(self.wake, IDLE_CLAIM_WAIT_S if due is None else min(IDLE_CLAIM_WAIT_S, max(0.05, due)))

    def _put_back(self, job: Job, error: str) -> None:
        """Release a job after an unexpected error; if the store cannot take
        that either, keep it to release on a later turn."""
        try:
            self.queue.release(job, backoff_s(job.attempts + 1), error)
        except Exception:
            with self._lock:
                self._stranded.append((job, error))

    def _release_stranded(self) -> None:
        """Release the jobs :meth:`_put_back` could not (raises while the store still cannot)."""
        while True:
            with self._lock:
                if not self._stranded:
                    return
                job, error = self._stranded.pop()
            try:
                self.queue.release(job, 0.0, error)
            except Exception:
                with self._lock:
                    self._stranded.append((job, error))
                raise

    def _process(self, host: Host, job: Job, row: sqlite3.Row | None) -> None:
        if row is None:  # the span vanished after the claim
            self.queue.release(job)
            return
        fields = dict(repo=row["repo"], path=row["path"], span=row["name"], job=job.id,
                      attempt=job.attempts + 1, host=host.url)
        if self.gate is not None and not self._admitted(self.gate, job, fields, row):
            return
        messages = build_messages(path=row["path"], language=row["language"], kind=row["kind"],
                                  name=row["name"], start_line=row["start_line"], text=row["text"])
        started = self.clock()
        with self._lock:
            self._started[threading.get_ident()] = (host, started)
        num_predict = None
        try:
            num_predict = plan_num_predict(messages, host.client.options, job.attempts + 1)
            answer = host.client.chat(messages, num_predict)
            enrichment = parse_answer(answer, estimate_prompt_tokens(messages), host.client.answer_format)
        except PromptTooLarge as exc:
            self._abandon(job)
            return self._dead(job, fields, f"prompt_too_large: {exc}", reason="prompt_too_large")
        except InvalidAnswer as exc:
            self._abandon(job)
            return self._retry(job, fields, f"InvalidAnswer: {exc}", self.clock() - started)
        except ol.OllamaError as exc:
            self._abandon(job)
            return self._on_error(host, job, fields, exc, num_predict, self.clock() - started)
        finally:
            with self._lock:
                self._started.pop(threading.get_ident(), None)
        duration = self.clock() - started
        try:
            enrichment = self._redacted(enrichment, row)
        except Exception:
            self._abandon(job)  # not stored: the job goes back (see _turn)
            raise
        host.strikes = host.busy = 0
        self._host_ok(host, started)
        # Stored by the result writer while this thread sends its next request.
        self.results.put(Result(job, enrichment, duration, {
            **fields, "duration_s": round(duration, 3), "eval_count": answer.get("eval_count"),
            "prompt_eval_count": answer.get("prompt_eval_count")}))

    def _stored(self, results: list[Result]) -> None:
        """The result writer committed ``results`` (on its thread)."""
        for result in results:
            if self.gate is not None:
                self.gate.succeeded(result.job, result.enrichment)
            log.info("job_done", **result.fields)
        with self._lock:
            self.done += len(results)
        self.on_change()

    def _not_stored(self, results: list[Result], exc: Exception) -> None:
        """The result writer could not commit ``results``: their jobs go back
        (answers lost, sent again later), as when a worker's own write fails."""
        fault = self.store.note_error(exc)
        for result in results:
            self._abandon(result.job)
            (log.warning if fault else log.error)(
                "job_error", job=result.job.id, error=str(fault) if fault else f"{type(exc).__name__}: {exc}",
                exc_info=fault is None)
            self._put_back(result.job, f"{type(exc).__name__}: {exc}")
        self.wake.set()
        self.on_change()

    def _redacted(self, enrichment: Enrichment, row: sqlite3.Row) -> Enrichment:
        """A model answer for the span of ``row`` with its secret values redacted
        (``redact_answer``), the count kept for the audit in ``status --json``."""
        if self.redact_answer is None:
            return enrichment
        enrichment, redacted = self.redact_answer(enrichment, row["path"], row["start_line"])
        if redacted:
            count_answer_redactions(self.store, redacted)
        return enrichment

    def _admitted(self, gate: JobGate, job: Job, fields: dict[str, Any], row: sqlite3.Row) -> bool:
        """Ask the gate about ``job``: True to send it; else the job was
        completed with a teammate's result (redacted like any answer: a teammate
        may run an older version) or put back while a teammate works on it."""
        admission = gate.admit(job)
        about = {k: v for k, v in fields.items() if k not in ("host", "attempt")}
        if admission.action == "hit" and admission.enrichment is not None:
            self.queue.complete(job, self._redacted(admission.enrichment, row), None)
            log.info("team_hit", **about, span_hash=job.span_hash)
            return False
        if admission.action == "defer":
            self.queue.release(job, admission.delay_s)
            log.info("team_deferred", **about, span_hash=job.span_hash, wait_s=round(admission.delay_s, 1))
            return False
        return True

    def _abandon(self, job: Job) -> None:
        if self.gate is not None:
            self.gate.abandoned(job)

    def _on_error(self, host: Host, job: Job, fields: dict[str, Any], exc: ol.OllamaError, num_predict: int | None,
                  duration: float) -> None:
        """Apply the error's policy (see the module docstring)."""
        if exc.policy == "pause":
            self.queue.release(job, error=str(exc))
            self._host_down(host, "model_missing" if isinstance(exc, ol.ModelMissing) else "unreachable", str(exc))
        elif exc.policy == "release":
            host.busy += 1
            self.queue.release(job, exc.retry_after_s or backoff_s(host.busy, BUSY_BASE_S, BUSY_MAX_S), str(exc))
            (log.warning if host.busy == 1 else log.debug)("ollama_busy", **fields, error=str(exc))
        elif exc.policy == "dead_letter":
            sent = ol.describe_body(host.client.request_body([], num_predict))
            self._dead(job, fields, f"{type(exc).__name__}: {exc}", reason="bad_request", sent=sent)
        else:
            host.strikes += 1
            quarantine = host.strikes >= QUARANTINE_AFTER
            error = f"{type(exc).__name__}: {exc}"
            if quarantine and any(h is not host and h.state == "ok" for h in self.hosts):
                # This host keeps failing (e.g. hangs) while another is fine:
                # the host's fault, not the job's; another host takes it.
                self.queue.release(job, 0.0, error)
                log.warning("job_moved", **fields, error=error, reason="host_quarantined")
            else:
                self._retry(job, fields, error, duration)
            if quarantine:
                self._host_down(host, "quarantined", f"{host.strikes} failures in a row, last: {exc}")

    def _retry(self, job: Job, fields: dict[str, Any], error: str, duration: float) -> None:
        if self.queue.retry(job, error):
            self._count_failed()
            log.error("job_failed", **fields, error=error, duration_s=round(duration, 3), reason="max_attempts")
        else:
            log.warning("job_retry", **fields, error=error, duration_s=round(duration, 3))

    def _dead(self, job: Job, fields: dict[str, Any], error: str, reason: str, **extra: Any) -> None:
        self.queue.fail(job, error)
        self._count_failed()
        log.error("job_failed", **fields, error=error, reason=reason, **extra)

    def _count_failed(self) -> None:
        with self._lock:
            self.failed += 1

    # -- host state ----------------------------------------------------
    def _host_down(self, host: Host, state: str, error: str) -> None:
        with host.lock:
            changed = host.state != state
            if host.ok_event.is_set() or changed:
                host.state, host.error = state, error
                attempt = host.failures + 1 if state != "quarantined" else host.strikes - QUARANTINE_AFTER + 1
                host.retry_at = self.clock() + backoff_s(attempt, PROBE_BASE_S, PROBE_MAX_S)
                host.down_at = self.clock()
                host.ok_event.clear()
        if not changed:
            return
        model = host.client.cfg.model
        if state != "unreachable":
            self.outages.up(host.url, self)
        if state == "model_missing":
            log.error("model_missing", url=host.url, model=model, error=error, hint=f"ollama pull {model}")
        elif state == "quarantined":
            log.warning("ollama_quarantined", url=host.url, error=error, retry_in_s=round(host.retry_in_s(), 1))
        elif self.outages.down(host.url, self):
            log.error("ollama_unreachable", url=host.url, lane=self.LANE, error=error,
                      retry_in_s=round(host.retry_in_s(), 1))
        else:  # another lane said it already: this one waits on the same host
            log.info("ollama_unreachable", url=host.url, lane=self.LANE, error=error,
                     retry_in_s=round(host.retry_in_s(), 1), already_reported=True)
        self.on_change()

    def _host_ok(self, host: Host, sent_at: float | None = None) -> None:
        """``host`` answered: recovered if it was down, unless the answer is to a
        request sent (``sent_at``, ``clock()``) before it was marked down: a request
        in flight as the server stopped must not end the outage it is part of
        (a false ``ollama_recovered``, then a second error line for one outage)."""
        if host.ok_event.is_set() or (sent_at is not None and sent_at < host.down_at):
            return
        with host.lock:
            previous, host.state, host.error, host.failures = host.state, "ok", None, 0
            host.ok_event.set()
        self.outages.up(host.url, self)
        log.info("ollama_recovered", url=host.url, lane=self.LANE, previous=previous)
        self.on_change()

    def _maybe_probe(self, host: Host) -> None:
        """One probe at a time per host, at ``retry_at``; its other threads just wait."""
        wait = host.retry_in_s()
        if wait > 0 or not host.lock.acquire(blocking=False):
            self.clock.wait(host.ok_event, min(max(wait, 0.05), IDLE_WAIT_S))
            return
        healthy: bool | None = None
        changed = False
        try:
            if host.ok_event.is_set() or self.stopping.is_set():
                return
            healthy, error = self._probe(host)
            if not healthy:
                host.failures += 1
                changed, host.error = error != host.error, error
                host.retry_at = self.clock() + backoff_s(host.failures + 1, PROBE_BASE_S, PROBE_MAX_S)
                log.debug("ollama_probe_failed", url=host.url, error=error, retry_in_s=round(host.retry_in_s(), 1))
        finally:
            host.lock.release()
        if healthy is None:
            return
        if healthy:
            self._host_ok(host)
        elif changed:
            # Only a new error changes STATUS (its "retry in" countdown is redrawn by
            # the daemon's heartbeat): a model missing for hours asks for no new
            # STATUS on each probe.
            self.on_change()

    def _probe(self, host: Host) -> tuple[bool, str | None]:
        """(healthy, error): ``/api/tags`` lists the model, or ``/api/version`` answers."""
        try:
            if host.state == "model_missing":
                return host.client.has_model(), host.error
            host.client.version()
            return True, None
        except ol.OllamaError as exc:
            return False, str(exc)
