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
transaction with the jobs they need (several files share a transaction, see
``writes.py``), so a crash leaves either the old or the new state. Jobs for
spans that are in no file any more are cancelled.

Secrets: a secret file by name is never opened (``ignore.py``); a config-format
file whose head says it holds credentials (``secret_files.is_secret_content``)
is stored as skipped (``secret``) with no span; in every other file the secret
values are replaced by ``<redacted:KIND>`` in the decoded text before it is cut
(``redact.py``), so no span text, hash, prompt or answer ever holds one.
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
from llmc_rag_service.index.redact import Redactor
from llmc_rag_service.index.secret_files import HEAD_BYTES, is_secret_content
from llmc_rag_service.index.writes import FileWrite, FileWrites, Flushed
from llmc_rag_service.store.jobs import PRIORITY_BACKFILL, PRIORITY_LIVE, JobQueue
from llmc_rag_service.models import Span
from llmc_rag_service.store.db import FileRecord, Store
from llmc_rag_service.store.secret_audit import set_secret_files

log = structlog.get_logger(__name__)

#: Identity of a directory: (st_dev, st_ino).
RootId = tuple[int, int]
#: Most files forgotten in one transaction.
DELETE_CHUNK = 256


def root_identity(path: Path | str) -> RootId | None:
    """``(st_dev, st_ino)`` of the directory at ``path`` (symlinks followed), None if
    there is none: a root moved away and another made at its path differs."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


@dataclass
class ScanResult:
    """What a scan did: counts of files ``seen``, re-split (``changed``),
    ``deleted``, ``skipped`` (binary, too large, undecodable, unreadable, secret
    by content) and ``jobs`` created; ``secret_files`` secret files by name passed
    by (never read); ``redacted`` secret values replaced in the files re-split;
    ``failed`` paths whose step raised (to retry); ``duration_s`` wall seconds."""

    seen: int = 0
    changed: int = 0
    deleted: int = 0
    skipped: int = 0
    jobs: int = 0
    secret_files: int = 0
    redacted: int = 0
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
        redactor: Replaces secret values (``secrets.allow`` applied; shared
            across scanners for its cache); default: one with no allow list.
    """

    def __init__(self, store: Store, queue: JobQueue, root: Path, exclude: Iterable[str] = (), *,
                 max_file_bytes: int = 1_048_576, max_span_chars: int = 12_000, redactor: Redactor | None = None):
        self.store, self.queue, self.root = store, queue, Path(root)
        self.redactor = redactor or Redactor()
        self.ignore = RepoIgnore(self.root, tuple(exclude))
        self.max_file_bytes, self.max_span_chars = max_file_bytes, max_span_chars
        self.repo_id = store.repo_id(self.root)
        self.writes = FileWrites(store, lambda: self.queue, self.repo_id, self.root)
        self._result: ScanResult | None = None  # the scan whose files are pending
        self._new_priority: int | None = None  # job priority of files not stored before

    def full_scan(self, priority: int = PRIORITY_BACKFILL,
                  between: Callable[[], None] | None = None) -> ScanResult:
        """Walk the repo; index new and changed files, drop vanished ones.

        ``between`` is called after each file, on this thread: the indexer serves
        live path batches there, so a long backfill never delays a save. An
        exception it raises aborts the scan (every file done so far is committed).
        """
        started, cpu_started, result = time.monotonic(), time.thread_time(), ScanResult()
        if not self.root.is_dir():
            # Unmounted or deleted: keep what is stored (a missing tree is not
            # an empty one); the watcher retries and a scan follows.
            log.error("repo_missing", repo=str(self.root))
            return result
        stored = self.store.files(self.repo_id)
        present: set[str] = set()
        secrets: list[str] = []
        outer, self._result = self._result, result
        try:
            for relpath, st in self.ignore.walk(secrets=secrets):
                present.add(relpath)
                self._guarded(self._update, relpath, result, st, stored.get(relpath), priority, result)
                if between is not None:
                    between()
        finally:
            self.flush()
            self._result = outer
        self._delete([p for p in stored if p not in present], result, between)
        with self.store.write() as tx:
            # Spans of unchanged files may still lack an enrichment for the
            # configured model (the model or prompt changed, jobs were lost).
            result.jobs += self.queue.enqueue_missing(tx)
            set_secret_files(tx, self.repo_id, len(secrets))
        result.secret_files = len(secrets)
        result.duration_s = time.monotonic() - started
        log.info("scan_done", repo=str(self.root), files=result.seen, changed=result.changed,
                 deleted=result.deleted, skipped=result.skipped, jobs=result.jobs,
                 secret_files=result.secret_files, redacted=result.redacted,
                 duration_s=round(result.duration_s, 3), cpu_s=round(time.thread_time() - cpu_started, 3))
        return result

    def process_paths(self, relpaths: Iterable[str], priority: int = PRIORITY_LIVE,
                      between: Callable[[], None] | None = None, new_priority: int | None = None) -> ScanResult:
        """Re-check paths a watcher reported (files or directories, existing or not),
        as one set: a path below another path of the batch is covered by that one
        (one walk of each reported directory, one diff against the store rows of its
        subtree, fetched by an index range), so no file is handled twice and the cost
        grows with the batch, not with the repo. ``between`` is called after each
        file, as in :meth:`full_scan` (the indexer serves saves there during a bulk batch).
        ``new_priority`` (default ``priority``) is the job priority of files the store
        did not hold (during a burst of new files, those are not saves).
        """
        started, result = time.monotonic(), ScanResult()
        # A live batch may run inside this scanner's own bulk work (between()):
        # its counts go to its own result, the bulk's are restored after.
        outer, self._result = self._result, result
        self._new_priority = priority if new_priority is None else new_priority
        try:
            for relpath in top_paths(relpaths):
                self._guarded(self._process_one, relpath, result, priority, result, between)
        finally:
            self.flush()
            self._result, self._new_priority = outer, None
        result.duration_s = time.monotonic() - started
        return result

    def flush(self) -> None:
        """Commit the files indexed so far (they are written several per
        transaction): the scheduler calls it before serving a save in the middle
        of bulk work, and every scan before it returns."""
        self._count(self.writes.flush())

    def _count(self, flushed: Flushed | None) -> None:
        result = self._result
        if flushed is None or result is None:
            return
        result.changed += flushed.files
        result.jobs += flushed.jobs
        result.failed += flushed.failed

    def split_batch(self, relpaths: Iterable[str], max_live: int,
                    new_to_bulk: bool = False) -> tuple[list[str], list[str]]:
        """A batch as (saves, bulk): its top paths (see :func:`top_paths`) that are no
        directory now, if at most ``max_live`` of them, and the rest (directories moved
        or extracted in are walked: bulk work). A save polled together with the
        directories of an extraction stays a save. ``new_to_bulk`` (a batch seen in a
        burst of changes): files the store does not hold yet are no saves but the
        tail of an extraction, and go to bulk too (one store lookup for the batch)."""
        live: list[str] = []
        bulk: list[str] = []
        for relpath in top_paths(relpaths):
            try:
                is_dir = stat.S_ISDIR(os.lstat(self.root / relpath).st_mode)
            except OSError:
                is_dir = False
            (bulk if is_dir else live).append(relpath)
        if new_to_bulk and live:
            stored = self.store.stored_paths(self.repo_id, live)
            bulk += [p for p in live if p not in stored]
            live = [p for p in live if p in stored]
        if len(live) > max_live:
            return [], sorted(live + bulk)
        return live, bulk

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

    def _process_one(self, relpath: str, priority: int, result: ScanResult,
                     between: Callable[[], None] | None) -> None:
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
                if between is not None:
                    between()
            self._delete([p for p in stored if p not in present], result, between)
        elif st is not None and stat.S_ISREG(st.st_mode) and not self.ignore.is_ignored(relpath):
            self._update(relpath, st, stored.get(relpath), priority, result)
            self._delete([p for p in stored if p != relpath], result)
        else:
            # Gone, a symlink, ignored now, or a special file: forget it (a directory: all below).
            self._delete(list(stored), result, between)
        if between is not None:
            between()

    def _update(self, relpath: str, st: os.stat_result, old: FileRecord | None, priority: int,
                result: ScanResult) -> None:
        result.seen += 1
        if old and old.content_hash and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
            return  # unchanged (an empty hash asks for a new read: see store/db.py)
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
        if old is None and self._new_priority is not None:
            priority = self._new_priority
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
        skipped: str | None = None
        spans: list[Span] = []
        redacted = 0
        try:
            spans, redacted = self._split(relpath, data)
        except spans_mod.SkipFile as exc:
            skipped = exc.reason
            result.skipped += 1
            # The read stops after max_file_bytes + 1, so the real size is the stat's.
            detail = f"{st.st_size} bytes > max_file_bytes {self.max_file_bytes}" if exc.reason == "too_large" \
                else exc.detail or None
            log.info("file_skipped", repo=str(self.root), path=relpath, reason=exc.reason,
                     size=st.st_size, detail=detail)
        if skipped == "secret":
            content_hash = "secret"  # not even a hash of a credential file is kept
        result.redacted += redacted
        self._count(self.writes.add(FileWrite(relpath, st, content_hash, language, skipped, spans, priority,
                                              redacted)))

    def _split(self, relpath: str, data: bytes) -> tuple[list[Span], int]:
        """(spans, secret values redacted) of a file's bytes. Raises SkipFile, also
        ``secret`` for a credential file by content (judged from its first
        HEAD_BYTES), and RedactionError when the secret scanner fails (the file
        is then retried, never stored unredacted)."""
        why = is_secret_content(relpath, data[:HEAD_BYTES])
        if why is not None:
            raise spans_mod.SkipFile("secret", why)
        found = 0

        def redact(text: str) -> str:
            nonlocal found
            done = self.redactor.redact(text, path=relpath, repo=str(self.root))
            found = len(done.findings)
            return done.text

        spans = spans_mod.split_file(relpath, data, max_file_bytes=self.max_file_bytes,
                                     max_span_chars=self.max_span_chars, redact=redact)
        return spans, found

    def _delete(self, relpaths: list[str], result: ScanResult, between: Callable[[], None] | None = None) -> None:
        """Forget files gone from the tree, :data:`DELETE_CHUNK` per transaction (a
        directory of 10,000 files removed must not hold the store's writer lock, and
        the saves behind it, for many seconds); ``between`` is called after each chunk."""
        if not relpaths:
            return
        self.flush()  # a deleted file's spans may live on in a file still pending
        for start in range(0, len(relpaths), DELETE_CHUNK):
            chunk = relpaths[start:start + DELETE_CHUNK]
            with self.store.write() as tx:
                lost = self.store.span_hashes_of(tx, self.repo_id, chunk)
                self.store.delete_files(tx, self.repo_id, chunk)
                # A hash also held by a file of a later chunk is cancelled with that chunk.
                cancelled = self.queue.cancel_orphans(tx, lost)
            result.deleted += len(chunk)
            for relpath in chunk:
                log.info("file_deleted", repo=str(self.root), path=relpath)
            if cancelled:
                log.info("jobs_cancelled", repo=str(self.root), count=cancelled, reason="span_gone")
            if between is not None and start + DELETE_CHUNK < len(relpaths):
                between()


def top_paths(relpaths: Iterable[str]) -> list[str]:
    """The paths of a batch that have no ancestor in it, sorted: every other path is
    under one of them, so handling these covers the whole batch once. O(depth) per path."""
    batch = set(relpaths)
    kept = []
    for path in sorted(batch):
        parts = path.split("/")
        if not any("/".join(parts[:depth]) in batch for depth in range(1, len(parts))):
            kept.append(path)
    return kept
