"""SQLite connections, transactions, and the faults of the state file.

:class:`Database` is the part of :class:`~llmc_rag_service.store.db.Store`
that knows nothing of the schema: each thread gets its own connection (sqlite3
connections must not be shared across threads); writes go through
:meth:`Database.write`, a ``BEGIN IMMEDIATE`` transaction, so a result and its
job's completion land together or not at all.

Faults (``store/faults.py``): an error while opening, or inside a write, that
makes the store unusable (corrupt, disk full, read-only, I/O error) is raised
as its ``StoreUnusable`` class and recorded in :attr:`Database.fault` until a
later write succeeds (the daemon logs each change). The file's identity (``st_dev``, ``st_ino``) is checked before
every commit and by :meth:`Database.check`, so a state file deleted or
replaced under a running process is said (``StoreReplaced``) instead of
written into an unlinked inode.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator

from llmc_rag_service.store.faults import StoreBusy, StoreReplaced, StoreUnusable, classify

#: Seconds a connection waits for another writer before raising "database is locked".
BUSY_TIMEOUT_S = 30.0
#: Seconds the watchdog's writability check waits for another writer.
HEALTH_TIMEOUT_S = 2.0
#: Seconds of one step of a wait for the write lock (see ``Database._begin``).
BEGIN_STEP_S = 0.5
#: Seconds a pausing fault (disk full) stays reported after its last failure.
#: On a full disk some writes still fit into reused WAL space (or, under a page
#: limit, update existing pages); without this hold the fault would flap and
#: log a line per write. Longer than the workers' pause between retries.
FAULT_HOLD_S = 15.0


def _identity(path: Path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of ``path``, or None if it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class Database:
    """Per-thread connections to one SQLite file, its write transactions and
    its faults; safe to share between threads.

    Args:
        path: The database file; its directory is created (mode 0700).

    Raises:
        StoreUnusable: the file cannot be opened (see :meth:`opening`).
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._local = threading.local()
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()
        self._writer = threading.RLock()  # this process's writers, one at a time (see write)
        self._identity: tuple[int, int] | None = None
        self._fault: StoreUnusable | None = None
        self._fault_last = 0.0  # time.monotonic() of the fault's last failure
        #: Where :meth:`close` moved the ``-wal`` of a deleted or replaced file.
        self.dropped: list[str] = []
        self._wal_seen: tuple[int, int, bytes] | None = None  # see _record and close
        with self.opening():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.conn  # noqa: B018 (opens the file and records its identity)

    @contextlib.contextmanager
    def opening(self) -> Iterator[None]:
        """Run an opening step: an ``OSError`` or ``sqlite3.Error`` that is a
        store fault closes the connections and is raised as its
        ``StoreUnusable`` class; a lock held past every wait stays a
        ``sqlite3.OperationalError``."""
        try:
            yield
        except StoreUnusable:
            self.close()
            raise
        except (OSError, sqlite3.Error) as exc:
            self.close()
            fault = classify(exc, self.path)
            if fault is None or isinstance(fault, StoreBusy):
                raise
            raise fault from exc

    # -- connections ---------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (autocommit mode; use :meth:`write`).

        Raises:
            StoreReplaced: the path now names another file than the one opened first.
        """
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._all.append((threading.current_thread(), conn))
        return conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if self._identity is None:  # the first connection names the file for good
                self._identity = _identity(self.path)
                self.verify(conn)  # before anything is written into a file that may not be ours
            else:
                self.check()
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def verify(self, conn: sqlite3.Connection) -> None:
        """Check, on the first connection and before it writes anything (even
        the switch to WAL), that the file is one this class may use; raise
        ``StoreCorrupt`` or ``sqlite3.DatabaseError`` if not. Here: nothing."""

    def before_commit(self, conn: sqlite3.Connection) -> None:
        """Called inside every write transaction just before COMMIT (a subclass
        keeps derived tables in step, in the same transaction). Here: nothing."""

    @contextlib.contextmanager
    def write(self, busy_timeout_s: float | None = None) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction: committed on exit, rolled back on error.

        ``busy_timeout_s`` waits at most that long for another writer (default
        :data:`BUSY_TIMEOUT_S`), e.g. short on the daemon's main loop, which
        must keep ticking. The file's identity is checked before the commit.

        Raises:
            sqlite3.OperationalError: locked by another writer past the wait
                (as every error that is no store fault, unchanged).
            StoreUnusable: the store cannot take the write (full, read-only,
                I/O error, corrupt, replaced); recorded in :attr:`fault`.
        """
        conn = self.conn
        # This process's writers queue on a lock first: SQLite's own wait polls with
        # sleeps of up to 100 ms, so a thread with a large transaction (the scanner)
        # would starve behind workers committing hundreds of small ones a second.
        if not self._writer.acquire(timeout=BUSY_TIMEOUT_S if busy_timeout_s is None else busy_timeout_s):
            raise sqlite3.OperationalError("database is locked (another thread of this process is writing)")
        try:
            yield from self._transaction(conn, busy_timeout_s)
        finally:
            self._writer.release()

    def _transaction(self, conn: sqlite3.Connection, busy_timeout_s: float | None) -> Iterator[sqlite3.Connection]:
        """The body of :meth:`write`, under this process's writer lock."""
        try:
            self._begin(conn, BUSY_TIMEOUT_S if busy_timeout_s is None else busy_timeout_s)
            yield conn
            self.before_commit(conn)
            self.check()  # never commit into a file that is no longer the store
            conn.execute("COMMIT")
        except BaseException as exc:
            # SQLITE_FULL and friends may already have rolled the transaction
            # back: a second ROLLBACK would hide the real error behind
            # "no transaction is active", and a failed COMMIT leaves it open.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            fault = self.note_error(exc)
            if fault is not None and fault is not exc:
                raise fault from exc
            raise
        self._note_success()

    @staticmethod
    def _begin(conn: sqlite3.Connection, wait_s: float) -> None:
        """``BEGIN IMMEDIATE``, waiting at most ``wait_s`` seconds for another
        process's writer, in steps of :data:`BEGIN_STEP_S`: SQLite's busy handler
        waits inside one C call, and Python handles a signal (Ctrl-C on enrich,
        SIGTERM) only when it returns, so one 30 s wait held Ctrl-C for 30 s.

        Raises:
            sqlite3.OperationalError: still locked after ``wait_s``.
        """
        deadline = time.monotonic() + wait_s
        try:
            while True:
                step = max(0.0, min(BEGIN_STEP_S, deadline - time.monotonic()))
                conn.execute(f"PRAGMA busy_timeout = {int(step * 1000)}")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if not isinstance(classify(exc, ""), StoreBusy) or time.monotonic() >= deadline:
                        raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

    def release_thread(self) -> None:
        """Close the calling thread's connection (a thread about to end)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._lock:
            self._all = [(t, c) for t, c in self._all if c is not conn]
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def close(self) -> None:
        """Close this thread's connection and those of threads that ended (call
        at shutdown). A connection of a thread still running (a worker past the
        stop grace) is left open: closing it under that thread can crash the
        process; the OS closes it at exit and WAL recovery makes that safe.

        After the file was deleted or replaced (:class:`StoreReplaced`), the
        ``-wal`` at the path may be the old file's: SQLite neither checkpoints
        nor deletes the WAL of a file moved away, and the next opener of
        whatever file is at the path now would replay the old frames into it
        (a fresh store got the old one's spans and jobs back). It is renamed
        aside (``-wal.stale-<pid>``: nothing is deleted) only if it is still
        exactly the WAL seen when the fault was found (same inode, one this
        process has open, same header: not a backup's copied over it) and the
        path does not name the opened file again (moved away and back); the
        ``-shm`` (an index, no data) goes with it. :attr:`dropped` names the
        files moved or removed."""
        stale = self._stale_wal()
        with self._lock:
            keep = []
            for thread, conn in self._all:
                if thread is threading.current_thread() or not thread.is_alive():
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                else:
                    keep.append((thread, conn))
            self._all = keep
        self._local = threading.local()
        if stale:
            wal, shm = self._side("-wal"), self._side("-shm")
            with contextlib.suppress(OSError):
                aside = wal.with_name(f"{wal.name}.stale-{os.getpid()}")
                os.rename(wal, aside)
                self.dropped.append(str(aside))
                shm.unlink(missing_ok=True)

    def _side(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def _stale_wal(self) -> bool:
        """Whether the ``-wal`` at the path is the one :meth:`_record` saw when
        the file was found deleted or replaced (see :meth:`close`)."""
        seen = self._wal_seen
        if seen is None or _identity(self.path) == self._identity:
            return False
        return _wal_mark(self._side("-wal"), _open_inodes()) == seen

    # -- faults and health ---------------------------------------------
    @property
    def fault(self) -> StoreUnusable | None:
        """The store fault in force (see ``store/faults.py``), or None. A
        pausing one (full, read-only, I/O) clears when a write succeeds
        :data:`FAULT_HOLD_S` after its last failure; a fatal one
        (corrupt, replaced) stays for the life of this object."""
        return self._fault

    def check(self) -> None:
        """Raise a fatal fault in force, or :class:`StoreReplaced` if the path
        no longer names the file first opened (deleted, or replaced by another
        file). Cheap (one ``stat``): called before every commit and on the
        daemon's timer."""
        fault = self._fault
        if fault is not None and not fault.pauses:
            raise fault
        if self._identity is None:
            return
        now = _identity(self.path)
        if now != self._identity:
            detail = "deleted" if now is None else f"replaced by another file (inode {self._identity[1]} -> {now[1]})"
            raise self._record(StoreReplaced(self.path, detail))

    def note_error(self, exc: BaseException) -> StoreUnusable | None:
        """Classify ``exc`` (``faults.classify``); if it is a store fault,
        record it in :attr:`fault` and return it. None for anything else,
        including a lock held by another process: that is no fault of the
        store and passes. Nothing is logged here: the lifecycle that owns the
        store (the daemon, enrich) says it once."""
        fault = classify(exc, self.path)
        if fault is None or isinstance(fault, StoreBusy):
            return None
        return self._record(fault)

    def _record(self, fault: StoreUnusable) -> StoreUnusable:
        with self._lock:
            previous = self._fault
            if previous is None or previous.pauses:  # a fatal fault stays the one reported
                self._fault, self._fault_last = fault, time.monotonic()
                if isinstance(fault, StoreReplaced):  # the old file's WAL, as it is now (see close)
                    self._wal_seen = _wal_mark(self._side("-wal"), _open_inodes())
        return fault

    def _note_success(self) -> None:
        if self._fault is None:  # the common case, without the lock
            return
        with self._lock:
            fault = self._fault
            if fault is not None and fault.pauses and time.monotonic() - self._fault_last >= FAULT_HOLD_S:
                self._fault = None

    def writable(self) -> str | StoreBusy | None:
        """Health check: None if a write transaction can be taken, else the
        reason: a :class:`StoreBusy` when another process (or a long write of
        this one) holds the write lock past :data:`HEALTH_TIMEOUT_S` -- a wait,
        not a fault -- else a text. Also the probe that notices when a paused
        store can write again."""
        try:
            with self.write(HEALTH_TIMEOUT_S) as tx:
                tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('health_at', ?)", (str(time.time()),))
        except (sqlite3.Error, StoreUnusable) as exc:
            fault = exc if isinstance(exc, StoreUnusable) else classify(exc, self.path)
            return fault if isinstance(fault, StoreBusy) else f"store not writable: {exc}"
        return None


def _open_inodes() -> set[tuple[int, int]]:
    """``(st_dev, st_ino)`` of every file this process has open (``/proc/self/fd``)."""
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/self/fd/{fd}")
                found.add((st.st_dev, st.st_ino))
    return found


#: Bytes of a WAL file's header: magic, format, page size, checkpoint
#: sequence, two salts, two checksums (https://sqlite.org/fileformat2.html#walformat).
WAL_HEADER_BYTES = 32


def _wal_mark(wal: Path, held: set[tuple[int, int]]) -> tuple[int, int, bytes] | None:
    """``(st_dev, st_ino, header)`` of ``wal`` if this process has it open
    (``held``: :func:`_open_inodes`), else None."""
    try:
        with open(wal, "rb") as f:
            st = os.fstat(f.fileno())
            header = f.read(WAL_HEADER_BYTES)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, header) if (st.st_dev, st.st_ino) in held else None
