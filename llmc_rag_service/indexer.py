"""The indexer thread: every scan of every repo runs here, one at a time.

The daemon's main loop only hands work over (``put_full``, ``put_paths``), so
it never blocks on file I/O, and scanners never race each other.
"""

from __future__ import annotations

import queue as stdqueue
import threading
from pathlib import Path
from typing import Callable

import structlog

from llmc_rag_service.engine import Engine
from llmc_rag_service.queue import PRIORITY_BACKFILL, PRIORITY_LIVE

log = structlog.get_logger(__name__)


class Indexer(threading.Thread):
    """Runs scans one at a time: ``("full", repo)`` or ``("paths", repo, set)``."""

    def __init__(self, engine: Engine, on_change: Callable[[], None] = lambda: None):
        super().__init__(name="indexer", daemon=True)
        self.engine, self.on_change = engine, on_change
        self.items: stdqueue.Queue = stdqueue.Queue()
        self.busy: str | None = None

    def run(self) -> None:
        while True:
            item = self.items.get()
            if item is None:
                return
            kind, repo, paths = item
            scanner = self.engine.scanners.get(repo)
            if scanner is None:
                continue
            self.busy = f"scanning {repo.name}" if kind == "full" else None
            self.on_change()
            try:
                if kind == "full":
                    result = scanner.full_scan(PRIORITY_BACKFILL)
                else:
                    result = scanner.process_paths(paths, PRIORITY_LIVE)
                if result.jobs:
                    log.info("jobs_queued", repo=str(repo), count=result.jobs, trigger=kind)
                    self.engine.pool.notify_work()
            except Exception:
                log.exception("scan_failed", repo=str(repo), kind=kind)
            finally:
                self.busy = None
                self.on_change()

    def put_full(self, repo: Path) -> None:
        """Queue a full (catch-up) scan of ``repo``."""
        self.items.put(("full", repo, None))

    def put_paths(self, repo: Path, paths: set[str]) -> None:
        """Queue a batch of watcher-reported relative paths of ``repo``."""
        self.items.put(("paths", repo, paths))

    def stop(self) -> None:
        """Finish the current item, then end (queued items are dropped: the
        next start's catch-up scan redoes them)."""
        self.items.put(None)

