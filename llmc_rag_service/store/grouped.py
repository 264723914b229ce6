"""Group commit: small writes of several threads share one transaction.

Workers finishing at the same moment each want a transaction of a few rows
(a result and its job's completion). Their transactions run one at a time
anyway (SQLite has one writer), and each costs a ``BEGIN IMMEDIATE``, the
search index flush, the file identity check and a ``COMMIT``. With
:class:`GroupCommit`, a thread queues its work and then takes the process's
writer lock; whoever gets it first writes every piece queued so far in one
transaction, each in its own savepoint, so one piece that raises is rolled
back alone and the others still commit. A thread returns once its piece is
committed, or raises the error that made its piece (or the whole
transaction) fail: the caller's guarantee is that of its own transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from typing import Callable, ContextManager

#: Most pieces written in one transaction (bounds how long the writer lock is held).
MAX_GROUP = 64


@dataclass
class _Piece:
    work: Callable[[sqlite3.Connection], None]
    done: bool = False
    error: BaseException | None = None


class GroupCommit:
    """Batches ``work(tx)`` callables of many threads into shared transactions.

    Args:
        write: Opens one write transaction (``Database.write``).
        writer_lock: The lock ``write`` takes first (re-entrant), held here
            while a batch is taken and written, so the queue and the commit
            move together.
    """

    def __init__(self, write: Callable[[], ContextManager[sqlite3.Connection]], writer_lock: threading.RLock):
        self._write, self._writer = write, writer_lock
        self._lock = threading.Lock()
        self._queue: list[_Piece] = []

    def run(self, work: Callable[[sqlite3.Connection], None]) -> None:
        """Run ``work(tx)`` inside a write transaction, maybe shared with other
        threads' work; return once it is committed.

        Raises:
            Exception: what ``work`` raised (its piece rolled back), or what the
                transaction raised (``Database.write``: e.g. ``StoreUnusable``,
                ``sqlite3.OperationalError``; nothing of the batch committed).
        """
        piece = _Piece(work)
        with self._lock:
            self._queue.append(piece)
        while not piece.done:
            with self._writer:
                if piece.done:  # another thread's batch took it
                    break
                with self._lock:
                    batch, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
                self._commit(batch)
        if piece.error is not None:
            raise piece.error

    def _commit(self, batch: list[_Piece]) -> None:
        raise_later: BaseException | None = None
        try:
            with self._write() as tx:
                for n, item in enumerate(batch):
                    tx.execute(f"SAVEPOINT piece{n}")
                    try:
                        item.work(tx)
                    except sqlite3.Error:
                        raise  # the store's error (full, locked, corrupt): the transaction's, as alone
                    except Exception as exc:  # this piece's own fault: undo it, keep the others
                        item.error = exc
                        tx.execute(f"ROLLBACK TO piece{n}")
                    tx.execute(f"RELEASE piece{n}")
        except BaseException as exc:
            for item in batch:
                item.error = item.error or exc
            raise_later = exc
        for item in batch:
            item.done = True
        if raise_later is not None and not isinstance(raise_later, Exception):
            raise raise_later  # KeyboardInterrupt and the like are not stored for others
