"""Write-behind of the workers' results: a worker hands its answer over and sends its next request at once.

Storing a result (the enrichment, its job done, the search index, the commit)
takes a transaction; done by the worker itself, it is time its server slot
sits idle between one answer and the next request, and on a fast server
(many slots, short answers) that gap is the limit (issue 12). Here one
thread, ``result-writer``, stores whatever results are waiting, up to
:data:`MAX_BATCH` per transaction, while the workers already wait on their
next answers.

Guarantees stay those of one transaction per result: a result and its job's
completion land together or not at all; a job whose result is not yet
stored is still ``running`` under this process id, so after a kill -9 the
next start returns it to pending and it is sent again (the answer is lost,
never the job). The pool is told what was stored (``on_stored``) and what
failed (``on_failed``, with the error: its jobs go back to the queue).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Any, Callable

import structlog

from llmc_rag_service.models import Enrichment, Job
from llmc_rag_service.store.jobs import JobQueue

log = structlog.get_logger(__name__)

#: Most results stored in one transaction.
MAX_BATCH = 64


@dataclass
class Result:
    """One valid, redacted answer waiting to be stored: its ``job``, the
    ``enrichment``, ``duration_s`` the request took (seconds), and the log
    ``fields`` of its ``job_done`` line (``eval_count`` etc. included)."""

    job: Job
    enrichment: Enrichment
    duration_s: float
    fields: dict[str, Any] = field(default_factory=dict)


class ResultWriter:
    """The ``result-writer`` thread of one worker pool over ``queue``.

    Args:
        queue: Stores the results (:meth:`JobQueue.complete_many`).
        on_stored: Called (on the writer thread) with each batch once committed.
        on_failed: Called with a batch and the error when its transaction failed.
    """

    def __init__(self, queue: JobQueue, on_stored: Callable[[list[Result]], None],
                 on_failed: Callable[[list[Result], Exception], None]):
        self.queue, self.on_stored, self.on_failed = queue, on_stored, on_failed
        # Unbounded FIFO: put() never blocks a worker.
        self._waiting: SimpleQueue[Result | None] = SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="result-writer", daemon=True)

    def start(self) -> None:
        """Start the thread (once; a second call does nothing)."""
        if self.thread.ident is None:
            self.thread.start()

    def put(self, result: Result) -> None:
        """Hand a result over (returns at once)."""
        self._waiting.put(result)

    def finish(self) -> None:
        """No more results will come: the thread stores what waits, then ends."""
        self._waiting.put(None)

    def _run(self) -> None:
        more = True
        while more:
            first = self._waiting.get()  # woken by put() or finish(): no polling
            batch = [first] if first is not None else []
            more = first is not None
            while more and len(batch) < MAX_BATCH:
                try:
                    item = self._waiting.get_nowait()
                except Empty:
                    break
                if item is None:
                    more = False
                else:
                    batch.append(item)
            if batch:
                self._write(batch)
        self.queue.store.release_thread()

    def _write(self, batch: list[Result]) -> None:
        try:
            self.queue.complete_many([(r.job, r.enrichment, r.duration_s) for r in batch])
        except Exception as exc:
            self._tell(self.on_failed, batch, exc)
            return
        self._tell(self.on_stored, batch)

    @staticmethod
    def _tell(callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception as exc:  # the thread must live on: a callback's bug is logged, not fatal
            log.error("result_callback_error", error=f"{type(exc).__name__}: {exc}", exc_info=True)

