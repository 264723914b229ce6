"""An in-process live pipeline for watching tests: the real Engine (store, queue, scanner,
workers), the real Indexer thread and the real Watching facade with watchdog observers, driven
by a loop that does what the daemon's main loop does with ``Watching.poll()``."""

from __future__ import annotations

import itertools
import threading
import time

from llmc_rag_service.config import Config
from llmc_rag_service.service.pipeline import Engine
from llmc_rag_service.index.scheduler import Indexer
from llmc_rag_service.watch.watchset import Watching
from llmc_rag_service.enrich.workers import WorkerPool
from tests.helpers import wait_for

TICK_S = 0.02
_SENTINELS = itertools.count()


class Live:
    """Engine + Indexer + Watching for ``config``'s repos, first repo as ``root``.

    The worker pool is not running until :meth:`start_workers`, so jobs wait in the queue.
    """

    def __init__(self, config: Config, settle_s: float = 0.2, poll_interval_s: float | None = None):
        self.config = config
        self.root = config.repos[0].path
        self.engine = Engine(config)
        self.scanner = self.engine.scanners[self.root]
        self.indexer = Indexer(self.engine)
        self.watching = Watching(config.watch, settle_s=settle_s, poll_interval_s=poll_interval_s)
        self.work: list = []  # every Work item poll() returned, in order
        self._stop = threading.Event()
        self._loop = threading.Thread(target=self._run, name="test-main-loop", daemon=True)
        self._workers_on = False

    def start(self) -> Live:
        """Start the indexer, the watchers and the loop (no initial full scan)."""
        self.indexer.start()
        for repo in self.config.repos:
            self.watching.start(repo.path, self.engine.scanners[repo.path].ignore)
        self._loop.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            for work in self.watching.poll():
                self.work.append(work)
                self.indexer.put(work)

    def start_workers(self) -> None:
        self.engine.pool.start()
        self._workers_on = True

    def enrich_existing(self, timeout_s: float = 30.0) -> None:
        """Scan the repo now and enrich every span with a temporary pool (stopped after)."""
        self.scanner.full_scan()
        pool = self.engine.pool
        pool.start()
        wait_for(self.drained, timeout_s, "initial enrichment")
        pool.stop(5.0)
        self.engine.pool = WorkerPool(self.engine.store, self.engine.queue, self.engine.client)

    def drained(self) -> bool:
        """No job pending or running (jobs of vanished spans do not count)."""
        c = self.engine.queue.counts()
        return c["pending"] + c["running"] == 0 and self.engine.pool.in_flight == 0

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
        return self.engine.store.files(self.scanner.repo_id, under=under)

    def spans_of(self, relpath: str) -> list:
        record = self.files().get(relpath)
        return self.engine.store.file_spans(record.id) if record else []

    def jobs_since(self, t0: float) -> list:
        """Job rows (span_hash, state) created at or after wall time ``t0``."""
        return self.engine.store.conn.execute(
            "SELECT span_hash, state FROM jobs WHERE created_at >= ?", (t0,)).fetchall()

    def close(self) -> None:
        self._stop.set()
        self._loop.join(5)
        self.watching.stop_all()
        self.indexer.stop()
        self.indexer.join(10)
        self.engine.close(5.0 if self._workers_on else 0.0)


def chats(emu) -> list:
    """The /api/chat requests the emulator received, in arrival order."""
    return [r for r in emu.requests if r.path == "/api/chat"]


def user_text(request) -> str:
    return request.json["messages"][-1]["content"]


def now_wall() -> float:
    return time.time()
