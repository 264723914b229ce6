"""The scan scheduler thread: every scan of every repo runs here, one at a time.

The daemon's main loop only hands work over (``put_full``, ``put_paths``), so
it never blocks on file I/O, and scanners never race each other.

Two lanes, through indexing and through the job queue:

* live: a batch of at most :data:`LIVE_MAX_PATHS` paths, none a directory (a few
  saves, a small checkout), indexed at once at :data:`PRIORITY_LIVE`. In a batch
  seen during a burst of changes (an archive being extracted), the files new to
  the store are no saves: they go to the bulk lane, so a save indexes at once
  instead of behind hundreds of small batches of the extraction's tail;
* bulk: full scans (catch-up, rescans, reconcile) and large path batches (an
  archive extracted, a directory moved in, a checkout of thousands of files),
  indexed at :data:`PRIORITY_BACKFILL`, so the queue claims live jobs first.

Bulk work can take minutes, so it calls back after every file, and the live
batches that arrived meanwhile are indexed right there: a save never waits
behind bulk indexing. Bulk items that arrive during bulk work wait for it to end
(in order; a full scan already waiting for a repo is not queued twice, and the
path batches waiting for one repo are merged into one).
"""

from __future__ import annotations

import collections
import queue as stdqueue
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Protocol

import structlog

from llmc_rag_service.index.scanner import RootId, ScanResult, Scanner, root_identity
from llmc_rag_service.store.jobs import PRIORITY_BACKFILL, PRIORITY_LIVE

log = structlog.get_logger(__name__)

#: Seconds before paths whose indexing failed are tried again.
FAILED_RETRY_S = 10.0
#: A path batch of at most this many paths, none a directory, is live work.
LIVE_MAX_PATHS = 64


class ScanWork(Protocol):
    """What :meth:`ScanScheduler.put` takes: ``kind`` "full" or "paths", the
    repo root, the relative paths of a "paths" item, and the root's (st_dev,
    st_ino) when they were seen (None: not checked); read-only."""

    @property
    def kind(self) -> str: ...
    @property
    def repo(self) -> Path: ...
    @property
    def paths(self) -> frozenset[str]: ...
    @property
    def root_id(self) -> RootId | None: ...
    @property
    def burst(self) -> bool: ...


#: An intake item: (kind, repo, paths of a "paths" item, root identity, burst), or None to stop.
_Item = tuple[str, Path, set[str] | None, "RootId | None", bool]


class _Stop(Exception):
    """stop() was called while a full scan ran: end the scan and the thread."""


class ScanScheduler(threading.Thread):
    """Runs scans one at a time: ``("full", repo, None, None, False)`` or
    ``("paths", repo, set, root_id, burst)``.

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
        self._deferred: collections.deque[_Item] = collections.deque()  # bulk items waiting
        # (repo, root_id) -> the path set of the "paths" item waiting in _deferred, to merge into
        self._deferred_paths: dict[tuple[Path, RootId | None], set[str]] = {}
        self._bulk: Scanner | None = None  # the scanner doing bulk work, whose writes are pending

    def run(self) -> None:
        # The OS thread id lets an operator (and bench/scale.py) read this thread's
        # CPU in /proc/PID/task/TID: indexing apart from the workers' HTTP work.
        log.info("scan_scheduler_started", thread_id=threading.get_native_id())
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
            item = self._deferred.popleft()
            if item[0] == "paths":
                self._deferred_paths.pop((item[1], item[3]), None)
            return item

    def _defer(self, item: _Item) -> None:
        """Queue a bulk item behind the running bulk work: a full scan once per repo,
        the path batches of one repo (and root) merged into one set."""
        kind, repo, paths, root_id, burst = item
        if kind == "full":
            if item not in self._deferred:
                self._deferred.append(item)
            return
        waiting = self._deferred_paths.get((repo, root_id))
        if waiting is not None:
            waiting |= paths or set()
            return
        merged = set(paths or ())
        self._deferred_paths[(repo, root_id)] = merged
        self._deferred.append(("paths", repo, merged, root_id, burst))

    def _run_item(self, kind: str, repo: Path, paths: set[str] | None, root_id: RootId | None = None,
                  burst: bool = False) -> None:
        scanner = self.scanner_of(repo)
        if scanner is None:
            return
        if root_id is not None and root_identity(repo) != root_id:
            # Seen in a tree that is no longer at the path (moved away or replaced):
            # filed under the path, it would delete the new tree's entries.
            log.warning("batch_dropped", repo=str(repo), paths=len(paths or ()), reason="root_changed")
            return
        if kind == "full":
            self._bulk_work(scanner, repo, "full", None)
            return
        live, bulk = scanner.split_batch(paths or (), LIVE_MAX_PATHS, new_to_bulk=burst)
        if live:
            self._live_work(scanner, repo, live, burst)
        if bulk:
            self._bulk_work(scanner, repo, "paths", bulk)

    def _live_work(self, scanner: Scanner, repo: Path, paths: list[str], burst: bool) -> None:
        """A few saves, indexed at once; during a burst, files new to the store are not
        saves (the tail of an extraction) and queue behind them."""
        def work() -> ScanResult:
            result = scanner.process_paths(paths, PRIORITY_LIVE, new_priority=PRIORITY_BACKFILL if burst else None)
            self._indexed(repo, "live", len(paths), result)
            return result

        self._guard(scanner, repo, "paths", paths, work, "live")

    @staticmethod
    def _indexed(repo: Path, lane: str, paths: int, result: ScanResult, cpu_s: float | None = None) -> None:
        """One ``batch_indexed`` line per path batch of either lane."""
        log.info("batch_indexed", repo=str(repo), lane=lane, paths=paths, files=result.seen, changed=result.changed,
                 deleted=result.deleted, jobs=result.jobs, duration_s=round(result.duration_s, 3),
                 **({} if cpu_s is None else {"cpu_s": round(cpu_s, 3)}))

    def _bulk_work(self, scanner: Scanner, repo: Path, kind: str, paths: list[str] | None) -> None:
        """A full scan or a bulk batch, pausing after each file for the saves that arrived."""
        self.busy = f"scanning {repo.name}" if kind == "full" else f"indexing {len(paths or ())} changes in {repo.name}"
        self._bulk = scanner
        self.on_change()
        cpu_started = time.thread_time()

        def work() -> ScanResult:
            if kind == "full":
                return scanner.full_scan(PRIORITY_BACKFILL, between=self._serve_live)
            result = scanner.process_paths(paths or (), PRIORITY_BACKFILL, between=self._serve_live)
            self._indexed(repo, "bulk", len(paths or ()), result, time.thread_time() - cpu_started)
            return result

        try:
            self._guard(scanner, repo, kind, paths, work, kind)
        finally:
            self.busy, self._bulk = None, None
            self.on_change()

    def _guard(self, scanner: Scanner, repo: Path, kind: str, paths: list[str] | None, work: Callable[[], ScanResult],
               trigger: str) -> None:
        """Run one scan: queued jobs wake the workers; failed paths are retried later;
        a store fault pauses it (retried), any other error is logged; none ends the thread."""
        try:
            result = work()
            if result.jobs:
                log.info("jobs_queued", repo=str(repo), count=result.jobs, trigger=trigger)
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

    def _retry_later(self, kind: str, repo: Path, paths: Iterable[str] | None) -> None:
        """Queue the item again after :data:`FAILED_RETRY_S` seconds."""
        if kind == "full":
            retry = threading.Timer(FAILED_RETRY_S, self.put_full, (repo,))
        else:
            retry = threading.Timer(FAILED_RETRY_S, self.put_paths, (repo, set(paths or ())))
        retry.daemon = True
        retry.start()

    def _serve_live(self) -> None:
        """Called between the files of bulk work: index the saves that arrived, defer
        bulk items and the bulk part of mixed batches; raises _Stop on stop()."""
        if not self.items.empty() and self._bulk is not None:
            self._bulk.flush()  # commit the bulk files so far: the saves have their own transaction
        while not self.items.empty():
            try:
                item = self.items.get_nowait()
            except stdqueue.Empty:
                return
            if item is None:
                raise _Stop
            kind, repo, paths, root_id, burst = item
            scanner = self.scanner_of(repo)
            if kind == "full" or scanner is None:
                self._defer(item)
                continue
            live, bulk = scanner.split_batch(paths or (), LIVE_MAX_PATHS, new_to_bulk=burst)
            if live and (root_id is None or root_identity(repo) == root_id):
                self._live_work(scanner, repo, live, burst)
            if bulk:
                self._defer(("paths", repo, set(bulk), root_id, burst))

    def put(self, work: ScanWork) -> None:
        """Queue a work item (e.g. a :class:`~llmc_rag_service.watch.watchset.Work` from ``WatchSet.poll()``)."""
        if work.kind == "full":
            self.put_full(work.repo)
        else:
            self.put_paths(work.repo, set(work.paths), work.root_id, work.burst)

    def put_full(self, repo: Path) -> None:
        """Queue a full (catch-up) scan of ``repo``."""
        self.items.put(("full", repo, None, None, False))

    def put_paths(self, repo: Path, paths: set[str], root_id: RootId | None = None, burst: bool = False) -> None:
        """Queue a batch of watcher-reported relative paths of ``repo``; with
        ``root_id`` (the root's identity when they were seen) the batch is dropped
        if another tree is at the path by the time it runs; ``burst``: seen in a
        burst of changes, so files new to the store are queued at backfill priority."""
        self.items.put(("paths", repo, paths, root_id, burst))

    def stop(self) -> None:
        """Finish the current file or batch, then end (queued items are dropped:
        the next start's catch-up scan redoes them)."""
        self.items.put(None)
