"""An in-process live pipeline for watching tests: the real
:class:`~llmc_rag_service.service.pipeline.Pipeline` (store, queue, scanners, workers, scan
scheduler, watchers), driven by a loop that does what the daemon's main loop does
(``Pipeline.drain_events()``)."""

from __future__ import annotations

import itertools
import threading
import time

from llmc_rag_service.config import Config
from llmc_rag_service.service.pipeline import Pipeline
from tests.helpers import wait_for

TICK_S = 0.02
_SENTINELS = itertools.count()


class Live:
    """A :class:`Pipeline` for ``config``'s repos, first repo as ``root``.

    The worker pool is not running until :meth:`start_workers`, so jobs wait in the queue.
    """

    def __init__(self, config: Config, settle_s: float = 0.2, poll_interval_s: float | None = None):
        self.config = config
        self.root = config.repos[0].path
        self.pipeline = Pipeline(config, settle_s=settle_s, poll_interval_s=poll_interval_s)
        self.store = self.pipeline.store
        self.scanner = self.pipeline.scanners[self.root]
        self.work: list = []  # every Work item drain_events() returned, in order
        self._stop = threading.Event()
        self._loop = threading.Thread(target=self._run, name="test-main-loop", daemon=True)

    def start(self) -> Live:
        """Start the scan scheduler, the watchers and the loop (no initial full scan)."""
        self.pipeline.start_scheduler()
        self.pipeline.watch(catch_up=False)
        self._loop.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            self.work.extend(self.pipeline.drain_events())

    def start_workers(self) -> None:
        self.pipeline.start_workers()

    def enrich_existing(self, timeout_s: float = 30.0) -> None:
        """Scan the repo now and enrich every span, on a separate pipeline (closed after)."""
        helper = Pipeline(self.config)
        try:
            helper.scan_all()
            helper.start_workers()
            wait_for(lambda: _drained(helper), timeout_s, "initial enrichment")
        finally:
            helper.close(5.0)

    def drained(self) -> bool:
        """No job pending or running (jobs of vanished spans do not count)."""
        return _drained(self.pipeline)

    def settle(self, timeout_s: float = 15.0) -> None:
        """Wait until every event so far went through the indexer: write an empty
        sentinel file (no spans) and wait for the store to hold it. inotify keeps event
        order and an earlier path is due no later than the sentinel, and the indexer is
        FIFO, so everything before it was processed. The sentinel is then removed."""
        name = f"zz_sentinel_{next(_SENTINELS)}.py"
        (self.root / name).write_text("")
        wait_for(lambda: name in self.files(), timeout_s, f"sentinel {name}")
        (self.root / name).unlink()
        wait_for(lambda: name not in self.files(), timeout_s, f"sentinel {name} removed")

    def files(self, under: str | None = None) -> dict:
        return self.store.files(self.scanner.repo_id, under=under)

    def spans_of(self, relpath: str) -> list:
        record = self.files().get(relpath)
        return self.store.file_spans(record.id) if record else []

    def jobs_since(self, t0: float) -> list:
        """Job rows (span_hash, state) created at or after wall time ``t0``."""
        return self.store.conn.execute(
            "SELECT span_hash, state FROM jobs WHERE created_at >= ?", (t0,)).fetchall()

    def close(self) -> None:
        self._stop.set()
        self._loop.join(5)
        self.pipeline.close(5.0, join_s=10)


def _drained(pipeline: Pipeline) -> bool:
    c = pipeline.counts()
    return c["pending"] + c["running"] == 0 and c["in_flight"] == 0


def chats(emu) -> list:
    """The /api/chat requests the emulator received, in arrival order."""
    return [r for r in emu.requests if r.path == "/api/chat"]


def user_text(request) -> str:
    return request.json["messages"][-1]["content"]


def now_wall() -> float:
    return time.time()
