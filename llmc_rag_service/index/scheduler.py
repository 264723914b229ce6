"""The scan scheduler thread: every scan of every repo runs here, one at a time.

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
from typing import Callable, Protocol

import structlog

from llmc_rag_service.index.scanner import Scanner
from llmc_rag_service.store.jobs import PRIORITY_BACKFILL, PRIORITY_LIVE

log = structlog.get_logger(__name__)

#: Seconds before paths whose indexing failed are tried again.
FAILED_RETRY_S = 10.0


class ScanWork(Protocol):
    """What :meth:`ScanScheduler.put` takes: ``kind`` "full" or "paths", the
    repo root, and the relative paths of a "paths" item (read-only)."""

    @property
    def kind(self) -> str: ...
    @property
    def repo(self) -> Path: ...
    @property
    def paths(self) -> frozenset[str]: ...


#: An intake item: (kind, repo, paths of a "paths" item), or None to stop.
_Item = tuple[str, Path, set[str] | None]


class _Stop(Exception):
    """stop() was called while a full scan ran: end the scan and the thread."""


class ScanScheduler(threading.Thread):
    """Runs scans one at a time: ``("full", repo, None)`` or ``("paths", repo, set)``.

    Args:
        scanner_of: The scanner of a repo path, or None (a repo removed by a
            reload: its queued work is dropped).
        on_jobs: Called after a scan queued jobs (wakes idle workers).
        on_change: Called when a scan starts or ends (STATUS may change).

    ``items`` is the intake queue (its ``qsize()`` tells the daemon work is waiting).
    """

    def __init__(self, scanner_of: Callable[[Path], Scanner | None], on_jobs: Callable[[], None] = lambda: None,
                 on_change: Callable[[], None] = lambda: None):
        super().__init__(name="scan-scheduler", daemon=True)
        self.scanner_of, self.on_jobs, self.on_change = scanner_of, on_jobs, on_change
        self.items: stdqueue.Queue[_Item | None] = stdqueue.Queue()
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

    def _next(self) -> _Item | None:
        """The next item: waiting path batches first, then deferred full scans."""
        if not self._deferred:
            return self.items.get()
        try:
            return self.items.get_nowait()
        except stdqueue.Empty:
            return ("full", self._deferred.popleft(), None)

    def _run_item(self, kind: str, repo: Path, paths: set[str] | None) -> None:
        scanner = self.scanner_of(repo)
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
                self.on_jobs()
            if result.failed:
                # E.g. the store was locked by another process: try these
                # paths again later instead of losing the save until reconcile.
                self._retry_later("paths", repo, set(result.failed))
        except _Stop:
            raise
        except Exception as exc:
            fault = scanner.store.note_error(exc)
            if fault is None:
                log.exception("scan_failed", repo=str(repo), kind=kind)
            else:
                # The daemon says the fault once; the scan is redone when it may work again.
                log.warning("scan_paused", repo=str(repo), kind=kind, error=str(fault))
                if fault.pauses:
                    self._retry_later(kind, repo, paths)
        finally:
            if kind == "full":
                self.busy = None
            self.on_change()

    def _retry_later(self, kind: str, repo: Path, paths: set[str] | None) -> None:
        """Queue the item again after :data:`FAILED_RETRY_S` seconds."""
        if kind == "full":
            retry = threading.Timer(FAILED_RETRY_S, self.put_full, (repo,))
        else:
            retry = threading.Timer(FAILED_RETRY_S, self.put_paths, (repo, set(paths or ())))
        retry.daemon = True
        retry.start()

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

    def put(self, work: ScanWork) -> None:
        """Queue a work item (e.g. a :class:`~llmc_rag_service.watch.watchset.Work` from ``WatchSet.poll()``)."""
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
