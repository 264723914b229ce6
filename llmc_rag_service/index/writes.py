"""Indexed files on their way to the store: several files per transaction.

A scan used to write each file in its own transaction (with one job query per
span); on a cold scan of a large tree that cost several times the parsing. A
:class:`FileWrites` collects the indexed files and commits them together: at
most :data:`FLUSH_FILES` files or :data:`FLUSH_S` seconds of work per
transaction, so a crash still leaves each file either old or new (a file's
spans and jobs are in the same transaction as the file), and the scan
scheduler can flush before it serves a save in the middle of bulk work.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import structlog

from llmc_rag_service.models import Span
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.jobs import JobQueue

log = structlog.get_logger(__name__)

#: Most files committed in one transaction.
FLUSH_FILES = 64
#: Seconds of indexing after which the files so far are committed.
FLUSH_S = 0.2


@dataclass
class FileWrite:
    """One indexed file: ``spans`` replace its stored spans; ``skipped`` is the
    reason it has none (binary, too_large, decode_error, secret) or None; jobs are
    queued at ``priority``; ``redacted`` secret values were replaced in its text."""

    relpath: str
    st: os.stat_result
    content_hash: str
    language: str
    skipped: str | None
    spans: list[Span]
    priority: int
    redacted: int = 0

    @property
    def holds_secrets(self) -> bool:
        """Whether the file held secret values (redacted) or is a credential file."""
        return self.redacted > 0 or self.skipped == "secret"


@dataclass
class Flushed:
    """What a flush committed: ``files`` written and ``jobs`` queued; or the
    ``failed`` relpaths when the transaction failed (nothing written)."""

    files: int = 0
    jobs: int = 0
    failed: list[str] = field(default_factory=list)


class FileWrites:
    """Pending file writes of one repo (one scanner, one thread).

    Args:
        store: The store.
        queue: Returns the job queue in force (it changes on a reload).
        repo_id: The repo's id in the store.
        root: The repo root (for log lines).
    """

    def __init__(self, store: Store, queue: Callable[[], JobQueue], repo_id: int, root: Path):
        self.store, self.queue, self.repo_id, self.root = store, queue, repo_id, root
        self._pending: list[FileWrite] = []
        self._since = 0.0

    def add(self, write: FileWrite) -> Flushed | None:
        """Queue ``write``; commits the pending files when enough have gathered
        (then returns what was flushed, else None)."""
        if not self._pending:
            self._since = time.monotonic()
        self._pending.append(write)
        if len(self._pending) >= FLUSH_FILES or time.monotonic() - self._since >= FLUSH_S:
            return self.flush()
        return None

    def flush(self) -> Flushed:
        """Commit every pending file, its spans and its jobs in one transaction.
        A failure (e.g. the store locked past its timeout) is logged per file
        and returned in ``failed``; nothing of the group is written then.

        Raises:
            StoreUnusable: a store fault (disk full, file replaced, corrupt):
                not the files' fault, so it ends the scan instead.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return Flushed()
        try:
            jobs = self._write(pending)
        except Exception as exc:
            if self.store.note_error(exc) is not None:
                raise  # the store's fault, not the files': every other write would fail too
            for write in pending:
                log.error("file_failed", repo=str(self.root), path=write.relpath, error=str(exc))
            return Flushed(failed=[w.relpath for w in pending])
        for write in pending:
            log.debug("file_indexed", repo=str(self.root), path=write.relpath, spans=len(write.spans))
        return Flushed(files=len(pending), jobs=jobs)

    def _write(self, pending: list[FileWrite]) -> int:
        queue, jobs = self.queue(), 0
        with self.store.write() as tx:
            lost = self.store.span_hashes_of(tx, self.repo_id, [w.relpath for w in pending])
            lost_secret = self.store.span_hashes_of(tx, self.repo_id, [w.relpath for w in pending if w.holds_secrets])
            for w in pending:
                self.store.put_file(tx, self.repo_id, w.relpath, size=w.st.st_size, mtime_ns=w.st.st_mtime_ns,
                                    content_hash=w.content_hash, language=w.language, skipped=w.skipped,
                                    spans=w.spans, redacted=w.redacted)
            for priority in sorted({w.priority for w in pending}):
                jobs += queue.enqueue(tx, (s.span_hash for w in pending if w.priority == priority
                                           for s in w.spans), priority)
            queue.cancel_orphans(tx, lost)
            # The text of spans gone from the tree is dropped; their answers too when
            # their file holds secrets (those spans may predate redaction: an older store).
            self.store.drop_unheld(tx, lost, answers_of=lost_secret)
        return jobs
