"""The indexer thread: every scan of every repo runs here, one at a time.

The daemon's main loop only hands work over (``put_full``, ``put_paths``), so
it never blocks on file I/O, and scanners never race each other.

Two lanes: path batches (a save, a settled git operation) are indexed at
:data:`PRIORITY_LIVE`, full scans (catch-up, rescans, reconcile) at
:data:`PRIORITY_BACKFILL`, and the queue claims live jobs first. Because a full
scan of a large repo can take minutes, the scan calls back after every file and
path batches that arrived meanwhile are indexed right there; full scans that
arrive during a scan wait for it to end.
"""

from __future__ import annotations

import collections
import queue as stdqueue
import threading
from pathlib import Path
from typing import Callable

import structlog

from llmc_rag_service.service.pipeline import Engine
from llmc_rag_service.store.jobs import PRIORITY_BACKFILL, PRIORITY_LIVE
from llmc_rag_service.watch.watchset import Work

log = structlog.get_logger(__name__)

#: Seconds before paths whose indexing failed are tried again.
FAILED_RETRY_S = 10.0


class _Stop(Exception):
    """stop() was called while a full scan ran: end the scan and the thread."""


class Indexer(threading.Thread):
    """Runs scans one at a time: ``("full", repo, None)`` or ``("paths", repo, set)``.

    ``items`` is the intake queue (its ``qsize()`` tells the daemon work is waiting).
    """

    def __init__(self, engine: Engine, on_change: Callable[[], None] = lambda: None):
        super().__init__(name="indexer", daemon=True)
        self.engine, self.on_change = engine, on_change
        self.items: stdqueue.Queue = stdqueue.Queue()
        self.busy: str | None = None
        self._deferred: collections.deque[Path] = collections.deque()  # full scans waiting

    def run(self) -> None:
        try:
            while True:
                item = self._next()
                if item is None:
                    return
                self._run_item(*item)
        except _Stop:
            return

    def _next(self) -> tuple | None:
        """The next item: waiting path batches first, then deferred full scans."""
        if not self._deferred:
            return self.items.get()
        try:
            return self.items.get_nowait()
        except stdqueue.Empty:
            return ("full", self._deferred.popleft(), None)

    def _run_item(self, kind: str, repo: Path, paths: set[str] | None) -> None:
        scanner = self.engine.scanners.get(repo)
        if scanner is None:
            return
        if kind == "full":
            self.busy = f"scanning {repo.name}"
        self.on_change()
        try:
            if kind == "full":
                result = scanner.full_scan(PRIORITY_BACKFILL, between=self._serve_live)
            else:
                result = scanner.process_paths(paths or (), PRIORITY_LIVE)
            if result.jobs:
                log.info("jobs_queued", repo=str(repo), count=result.jobs, trigger=kind)
                self.engine.pool.notify_work()
            if result.failed:
                # E.g. the store was locked by another process: try these
                # paths again later instead of losing the save until reconcile.
                retry = threading.Timer(FAILED_RETRY_S, self.put_paths, (repo, set(result.failed)))
                retry.daemon = True
                retry.start()
        except _Stop:
            raise
        except Exception:
            log.exception("scan_failed", repo=str(repo), kind=kind)
        finally:
            if kind == "full":
                self.busy = None
            self.on_change()

    def _serve_live(self) -> None:
        """Called between the files of a full scan: index the path batches that
        arrived, defer full scans; raises _Stop on stop()."""
        while not self.items.empty():
            try:
                item = self.items.get_nowait()
            except stdqueue.Empty:
                return
            if item is None:
                raise _Stop
            if item[0] == "full":
                if item[1] not in self._deferred:
                    self._deferred.append(item[1])
                continue
            self._run_item(*item)

    def put(self, work: Work) -> None:
        """Queue a :class:`~llmc_rag_service.watch.watchset.Work` item from ``Watching.poll()``."""
        if work.kind == "full":
            self.put_full(work.repo)
        else:
            self.put_paths(work.repo, set(work.paths))

    def put_full(self, repo: Path) -> None:
        """Queue a full (catch-up) scan of ``repo``."""
        self.items.put(("full", repo, None))

    def put_paths(self, repo: Path, paths: set[str]) -> None:
        """Queue a batch of watcher-reported relative paths of ``repo``."""
        self.items.put(("paths", repo, paths))

    def stop(self) -> None:
        """Finish the current file or batch, then end (queued items are dropped:
        the next start's catch-up scan redoes them)."""
        self.items.put(None)
