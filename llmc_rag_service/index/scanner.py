"""Bring the store in line with a repo's files, and queue the spans that need work.

Two entry points, one code path per file:

* :meth:`Scanner.full_scan` walks the whole repo (catch-up at start, after lost
  events, after a ``.gitignore`` change): cheap when nothing changed, one
  ``lstat`` per file.
* :meth:`Scanner.process_paths` handles the paths a watcher reported; each is
  re-stat'ed, so a path that vanished, became a directory or got ignored is
  handled the same way as in a full scan.

A file is re-read only when its size or mtime changed, and re-split only when
its content hash changed. A file's new spans replace its old ones in one
transaction with the jobs they need, so a crash leaves either the old or the
new state. Jobs for spans that are in no file any more are cancelled.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import structlog

from llmc_rag_service.index import spans as spans_mod
from llmc_rag_service.index.ignore import RepoIgnore
from llmc_rag_service.store.jobs import PRIORITY_BACKFILL, PRIORITY_LIVE, JobQueue
from llmc_rag_service.store.db import FileRecord, Store

log = structlog.get_logger(__name__)


@dataclass
class ScanResult:
    """What a scan did: counts of files ``seen``, re-split (``changed``),
    ``deleted``, ``skipped`` (binary, too large, undecodable, unreadable) and
    ``jobs`` created; ``failed`` paths whose step raised (to retry);
    ``duration_s`` wall seconds."""

    seen: int = 0
    changed: int = 0
    deleted: int = 0
    skipped: int = 0
    jobs: int = 0
    duration_s: float = 0.0
    failed: list[str] = field(default_factory=list)


class Scanner:
    """Scans one repository into the store.

    Args:
        store: State store.
        queue: Job queue (its model decides which spans still need work).
        root: Absolute repository path.
        exclude: Extra gitignore-style patterns (``repos[].exclude``).
        max_file_bytes: Larger files are skipped (``watch.max_file_bytes``).
        max_span_chars: Spans longer than this are split (the prompt budget).
    """

    def __init__(self, store: Store, queue: JobQueue, root: Path, exclude: Iterable[str] = (), *,
                 max_file_bytes: int = 1_048_576, max_span_chars: int = 12_000):
        self.store, self.queue, self.root = store, queue, Path(root)
        self.ignore = RepoIgnore(self.root, tuple(exclude))
        self.max_file_bytes, self.max_span_chars = max_file_bytes, max_span_chars
        self.repo_id = store.repo_id(self.root)

    def full_scan(self, priority: int = PRIORITY_BACKFILL,
                  between: Callable[[], None] | None = None) -> ScanResult:
        """Walk the repo; index new and changed files, drop vanished ones.

        ``between`` is called after each file, on this thread: the indexer serves
        live path batches there, so a long backfill never delays a save. An
        exception it raises aborts the scan (every file done so far is committed).
        """
        started, result = time.monotonic(), ScanResult()
        if not self.root.is_dir():
            # Unmounted or deleted: keep what is stored (a missing tree is not
            # an empty one); the watcher retries and a scan follows.
            log.error("repo_missing", repo=str(self.root))
            return result
        stored = self.store.files(self.repo_id)
        present = set()
        for relpath, st in self.ignore.walk():
            present.add(relpath)
            self._guarded(self._update, relpath, result, st, stored.get(relpath), priority, result)
            if between is not None:
                between()
        self._delete([p for p in stored if p not in present], result)
        with self.store.write() as tx:
            # Spans of unchanged files may still lack an enrichment for the
            # configured model (the model or prompt changed, jobs were lost).
            result.jobs += self.queue.enqueue_missing(tx)
        result.duration_s = time.monotonic() - started
        log.info("scan_done", repo=str(self.root), files=result.seen, changed=result.changed,
                 deleted=result.deleted, skipped=result.skipped, jobs=result.jobs,
                 duration_s=round(result.duration_s, 3))
        return result

    def process_paths(self, relpaths: Iterable[str], priority: int = PRIORITY_LIVE) -> ScanResult:
        """Re-check paths a watcher reported (files or directories, existing or not)."""
        started, result = time.monotonic(), ScanResult()
        for relpath in sorted(set(relpaths)):
            self._guarded(self._process_one, relpath, result, priority, result)
        result.duration_s = time.monotonic() - started
        return result

    def _guarded(self, step: Callable[..., None], relpath: str, result: ScanResult, *args: Any) -> None:
        """Run one file's step; a failure is logged with the file, noted in
        ``result.failed`` for a retry, and the scan goes on (one bad file must
        never stop the others). A store fault (disk full, state file
        replaced…) ends the scan instead: raised as its ``StoreUnusable``."""
        try:
            step(relpath, *args)
        except Exception as exc:
            if self.store.note_error(exc) is not None:
                raise  # the store's fault, not the file's: every other file would fail too
            result.failed.append(relpath)
            log.exception("file_failed", repo=str(self.root), path=relpath, error=str(exc))

    def _process_one(self, relpath: str, priority: int, result: ScanResult) -> None:
        stored = self.store.files(self.repo_id, under=relpath)
        try:
            st = os.lstat(self.root / relpath)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode) and not self.ignore.is_ignored(relpath, is_dir=True):
            # A directory appeared or was moved in: index what is under it.
            present = set()
            for sub, sub_st in self.ignore.walk(relpath):
                present.add(sub)
                self._update(sub, sub_st, stored.get(sub), priority, result)
            self._delete([p for p in stored if p not in present], result)
        elif st is not None and stat.S_ISREG(st.st_mode) and not self.ignore.is_ignored(relpath):
            self._update(relpath, st, stored.get(relpath), priority, result)
            self._delete([p for p in stored if p != relpath], result)
        else:
            # Gone, a symlink, ignored now, or a special file: forget it.
            self._delete(list(stored), result)

    def _update(self, relpath: str, st: os.stat_result, old: FileRecord | None, priority: int,
                result: ScanResult) -> None:
        result.seen += 1
        if old and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
            return
        try:
            data = self._read(relpath)
        except OSError as exc:
            # Vanished or unreadable between the stat and the read.
            result.skipped += 1
            log.info("file_skipped", repo=str(self.root), path=relpath, reason="unreadable", error=str(exc))
            if old:
                self._delete([relpath], result)
            return
        content_hash = hashlib.sha256(data).hexdigest()
        if old and old.content_hash == content_hash:
            self.store.touch_file(old.id, st.st_size, st.st_mtime_ns)
            log.debug("file_skipped", repo=str(self.root), path=relpath, reason="unchanged")
            return
        self._index(relpath, st, data, content_hash, priority, result)

    def _read(self, relpath: str) -> bytes:
        # O_NOFOLLOW: never read through a symlink swapped in after the stat;
        # O_NONBLOCK: a FIFO must not block the scan.
        fd = os.open(self.root / relpath, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            return fh.read(self.max_file_bytes + 1)

    def _index(self, relpath: str, st: os.stat_result, data: bytes, content_hash: str, priority: int,
               result: ScanResult) -> None:
        language = spans_mod.language_for(relpath)
        skipped, spans = None, []
        try:
            spans = spans_mod.split_file(relpath, data, max_file_bytes=self.max_file_bytes,
                                         max_span_chars=self.max_span_chars)
        except spans_mod.SkipFile as exc:
            skipped = exc.reason
            result.skipped += 1
            # The read stops after max_file_bytes + 1, so the real size is the stat's.
            detail = f"{st.st_size} bytes > max_file_bytes {self.max_file_bytes}" if exc.reason == "too_large" \
                else exc.detail or None
            log.info("file_skipped", repo=str(self.root), path=relpath, reason=exc.reason,
                     size=st.st_size, detail=detail)
        with self.store.write() as tx:
            lost = self.store.span_hashes_of(tx, self.repo_id, [relpath])
            self.store.put_file(tx, self.repo_id, relpath, size=st.st_size, mtime_ns=st.st_mtime_ns,
                                content_hash=content_hash, language=language, skipped=skipped, spans=spans)
            jobs = self.queue.enqueue(tx, (s.span_hash for s in spans), priority)
            self.queue.cancel_orphans(tx, lost)
        result.changed += 1
        result.jobs += jobs
        log.debug("file_indexed", repo=str(self.root), path=relpath, spans=len(spans), jobs=jobs)

    def _delete(self, relpaths: list[str], result: ScanResult) -> None:
        if not relpaths:
            return
        with self.store.write() as tx:
            lost = self.store.span_hashes_of(tx, self.repo_id, relpaths)
            self.store.delete_files(tx, self.repo_id, relpaths)
            cancelled = self.queue.cancel_orphans(tx, lost)
        result.deleted += len(relpaths)
        for relpath in relpaths:
            log.info("file_deleted", repo=str(self.root), path=relpath)
        if cancelled:
            log.info("jobs_cancelled", repo=str(self.root), count=cancelled, reason="span_gone")
