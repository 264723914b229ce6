"""The worker pool: turns queued jobs into stored enrichments.

``ollama.concurrency`` threads each loop claim -> prompt -> ``/api/chat`` ->
validate -> store. There is no pause between one answer and the next claim:
the server queues what it cannot run yet. Policies per error kind (see the
taxonomy in ``ollama.py``):

* Unavailable, ModelMissing: the host is marked down, the job is released with
  its attempts intact, and workers wait (on an Event, with a deadline) while
  one probe at a time (``/api/version`` or ``/api/tags``) decides, with
  backoff, when to resume. One log line per state change.
* Busy: released with its attempts intact after the server's Retry-After or
  a jittered backoff.
* RequestTimeout, ServerError, Disconnected, InvalidAnswer: an attempt is
  counted; retried with backoff; dead-lettered after ``queue.max_attempts``.
* BadRequest: dead-lettered at once, with what was sent logged.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import structlog

from llmc_rag_service import ollama as ol
from llmc_rag_service.enrichment import InvalidAnswer, build_messages, estimate_tokens, parse_answer
from llmc_rag_service.models import Job
from llmc_rag_service.queue import JobQueue, backoff_s
from llmc_rag_service.store import Store

log = structlog.get_logger(__name__)

#: Seconds a job may run past its request deadline before the watchdog health
#: gate calls the worker hung.
HANG_GRACE_S = 60.0
#: Longest wait between probes of a down host, in seconds.
PROBE_MAX_S = 60.0


@dataclass
class HostState:
    """Health of the Ollama host as the workers see it.

    ``state`` is ``ok``, ``unreachable`` or ``model_missing``; ``retry_at`` a
    ``time.monotonic()`` deadline for the next probe; ``failures`` the count of
    failed probes in a row (drives the backoff).
    """

    state: str = "ok"
    error: str | None = None
    retry_at: float = 0.0
    failures: int = 0
    ok_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.ok_event.set()

    def retry_in_s(self) -> float:
        return max(0.0, self.retry_at - time.monotonic())


class WorkerPool:
    """Runs ``concurrency`` worker threads over a :class:`JobQueue`.

    Args:
        store, queue: State and queue.
        client: The Ollama client (its ``cfg`` gives concurrency and timeout_s).
        on_change: Called (no args, from a worker thread) after every job
            outcome or host state change, e.g. to refresh STATUS.
    """

    def __init__(self, store: Store, queue: JobQueue, client: ol.OllamaClient, on_change=lambda: None):
        self.store, self.queue, self.client, self.on_change = store, queue, client, on_change
        self.host = HostState()
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started: dict[int, float] = {}  # thread ident -> monotonic start of its request
        self._lock = threading.Lock()
        self.done = self.failed = 0

    # -- lifecycle -----------------------------------------------------
    def start(self) -> None:
        """Start the worker threads (daemon threads: a hung request cannot block exit)."""
        for i in range(self.client.cfg.concurrency):
            thread = threading.Thread(target=self._run, name=f"worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, grace_s: float) -> int:
        """Stop claiming; wait up to ``grace_s`` seconds for in-flight jobs;
        return jobs still running to pending. Returns how many were returned."""
        self.stopping.set()
        self.wake.set()
        self.host.ok_event.set()
        deadline = time.monotonic() + grace_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.queue.recover()

    def notify_work(self) -> None:
        """New jobs were queued: wake idle workers."""
        self.wake.set()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._started)

    def hung(self) -> str | None:
        """Health check for the watchdog: a reason if a request has run past
        its deadline (``timeout_s``) plus :data:`HANG_GRACE_S`, else None."""
        limit = self.client.cfg.timeout_s * 2 + HANG_GRACE_S  # one transparent reconnect retry
        now = time.monotonic()
        with self._lock:
            oldest = min(self._started.values(), default=now)
        if now - oldest > limit:
            return f"a job has been running {now - oldest:.0f} s (limit {limit:.0f} s)"
        return None

    # -- the loop ------------------------------------------------------
    def _run(self) -> None:
        while not self.stopping.is_set():
            if not self.host.ok_event.is_set():
                self._maybe_probe()
                continue
            job = self.queue.claim()
            if job is None:
                self.wake.clear()
                if self.stopping.is_set():
                    break
                due = self.queue.next_due_s()
                self.wake.wait(1.0 if due is None else min(1.0, max(0.05, due)))
                continue
            self._process(job)
            self.on_change()

    def _process(self, job: Job) -> None:
        row = self.store.span_text(job.span_hash)
        if row is None:  # the span vanished after the claim
            self.queue.release(job)
            return
        fields = dict(repo=row["repo"], path=row["path"], span=row["name"], job=job.id, attempt=job.attempts + 1)
        messages = build_messages(path=row["path"], language=row["language"], kind=row["kind"],
                                  name=row["name"], start_line=row["start_line"], text=row["text"])
        started = time.monotonic()
        with self._lock:
            self._started[threading.get_ident()] = started
        try:
            answer = self.client.chat(messages)
            enrichment = parse_answer(answer, sum(estimate_tokens(m["content"]) for m in messages))
        except (ol.Unavailable, ol.ModelMissing) as exc:
            self.queue.release(job, error=str(exc))
            self._host_down("model_missing" if isinstance(exc, ol.ModelMissing) else "unreachable", str(exc))
            return
        except ol.Busy as exc:
            self.queue.release(job, exc.retry_after_s or backoff_s(job.attempts + 1), str(exc))
            log.warning("ollama_busy", **fields, error=str(exc))
            return
        except ol.BadRequest as exc:
            self._dead(job, fields, str(exc), sent=ol.describe_body(self.client.request_body([])))
            return
        except (ol.OllamaError, InvalidAnswer) as exc:
            self._retry(job, fields, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
            return
        finally:
            with self._lock:
                self._started.pop(threading.get_ident(), None)
        duration = time.monotonic() - started
        self.queue.complete(job, enrichment, duration)
        self._host_ok()
        with self._lock:
            self.done += 1
        log.info("job_done", **fields, duration_s=round(duration, 3),
                 eval_count=answer.get("eval_count"), prompt_eval_count=answer.get("prompt_eval_count"))

    def _retry(self, job: Job, fields: dict, error: str, duration: float) -> None:
        if self.queue.retry(job, error):
            self._count_failed()
            log.error("job_failed", **fields, error=error, duration_s=round(duration, 3), reason="max_attempts")
        else:
            log.warning("job_retry", **fields, error=error, duration_s=round(duration, 3))

    def _dead(self, job: Job, fields: dict, error: str, **extra) -> None:
        self.queue.fail(job, error)
        self._count_failed()
        log.error("job_failed", **fields, error=error, reason="bad_request", **extra)

    def _count_failed(self) -> None:
        with self._lock:
            self.failed += 1

    # -- host state ----------------------------------------------------
    def _host_down(self, state: str, error: str) -> None:
        host = self.host
        with host.lock:
            changed = host.state != state
            if host.ok_event.is_set() or changed:
                host.state, host.error = state, error
                host.retry_at = time.monotonic() + backoff_s(host.failures + 1, 1.0, PROBE_MAX_S)
                host.ok_event.clear()
        if changed:
            if state == "model_missing":
                log.error("model_missing", url=self.client.cfg.url, model=self.client.cfg.model, error=error,
                          hint=f"ollama pull {self.client.cfg.model}")
            else:
                log.error("ollama_unreachable", url=self.client.cfg.url, error=error)
            self.on_change()

    def _host_ok(self) -> None:
        host = self.host
        if host.ok_event.is_set():
            return
        with host.lock:
            previous, host.state, host.error, host.failures = host.state, "ok", None, 0
            host.ok_event.set()
        log.info("ollama_recovered", url=self.client.cfg.url, previous=previous)
        self.on_change()

    def _maybe_probe(self) -> None:
        """One probe at a time, at ``retry_at``; other workers just wait."""
        host = self.host
        wait = host.retry_in_s()
        if wait > 0 or not host.lock.acquire(blocking=False):
            host.ok_event.wait(min(max(wait, 0.05), 1.0))
            return
        healthy: bool | None = None
        try:
            if host.ok_event.is_set() or self.stopping.is_set():
                return
            try:
                healthy = self.client.has_model() if host.state == "model_missing" else bool(self.client.version())
                error = None if healthy else host.error
            except ol.ModelMissing as exc:
                healthy, error = False, str(exc)
            except ol.OllamaError as exc:
                healthy, error = False, str(exc)
            if not healthy:
                host.failures += 1
                host.error = error
                host.retry_at = time.monotonic() + backoff_s(host.failures + 1, 1.0, PROBE_MAX_S)
                log.debug("ollama_probe_failed", url=self.client.cfg.url, error=error, retry_in_s=round(host.retry_in_s(), 1))
        finally:
            host.lock.release()
        if healthy is None:
            return
        if healthy:
            self._host_ok()
        else:
            self.on_change()
