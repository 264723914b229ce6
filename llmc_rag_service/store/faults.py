"""Store faults: what can make the state store unusable, said in one line.

Every low-level error of the store (``sqlite3.Error``, ``OSError``) that means
"this store cannot be used right now" is mapped here, in one place, to the
most specific class of this tree::

    StoreUnusable                 path, reason, hint; str() is the one-line message
     +-- StoreCorrupt             not a database, malformed, or another application's (fatal)
     +-- StoreReplaced            the file was deleted or replaced while open (fatal)
     +-- StoreReadOnly            the state dir or file cannot be written (pauses)
     +-- StoreFull                no space left: SQLITE_FULL or ENOSPC (pauses)
     +-- StoreIOError             another I/O error from the disk (pauses)
     +-- StoreBusy                locked by another process past every wait (pauses)

``pauses`` says whether the fault can go away by itself while the daemon runs
(space freed, a remount): ``serve`` pauses work and retries; a fatal fault ends
it. Other modules raise these; only ``cli.py`` turns them into an exit status
(74, EX_IOERR). Result codes: https://www.sqlite.org/rescode.html.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

#: Free bytes under which an I/O error of the store is taken for a full disk.
NEARLY_FULL_BYTES = 65536
#: What to do with a corrupt or foreign state file.
MOVE_ASIDE = "move it aside (mv {path} {path}.bad) and run again: a new store is made and the repos are rescanned"


class StoreUnusable(Exception):
    """The state store cannot be used; ``str()`` names the file, the reason and what to do.

    Attributes:
        path: The database file.
        reason: What is wrong (e.g. the SQLite message).
        hint: What the user can do about it.
        event: The stable log event name of this kind (``store_full``…).
        pauses: True if the fault can clear while the process runs.
    """

    event = "store_unusable"
    pauses = False

    def __init__(self, path: Path | str, reason: str, hint: str):
        self.path, self.reason, self.hint = Path(path), reason, hint
        super().__init__(f"{self.path}: {reason}; {hint}")

    def fields(self) -> dict[str, object]:
        """Structured log fields: ``path``, ``error``, plus the kind's own."""
        return {"path": str(self.path), "error": str(self)}


class StoreCorrupt(StoreUnusable):
    """Not a database, malformed, or the store of another application."""

    event = "store_corrupt"

    def __init__(self, path: Path | str, detail: str):
        super().__init__(path, f"not a usable llmc-rag store ({detail})", MOVE_ASIDE.format(path=path))


class StoreReplaced(StoreUnusable):
    """The file was deleted or replaced under a running process; writing on
    would put results into a file nobody will read again."""

    event = "store_replaced"

    def __init__(self, path: Path | str, detail: str):
        super().__init__(path, f"the state file was {detail} while in use",
                         "start again: a new store is built and the repos are rescanned "
                         "(systemd restarts serve by itself)")


class StoreReadOnly(StoreUnusable):
    """The state dir or the database file cannot be written."""

    event = "store_readonly"
    pauses = True

    def __init__(self, path: Path | str, detail: str):
        state_dir = Path(path).parent
        super().__init__(path, f"cannot write the state: {state_dir} is read-only ({detail})",
                         "make it writable or set state_dir to a writable directory")


class StoreFull(StoreUnusable):
    """No space left for the state. ``free_bytes``: what ``statvfs`` says is
    left for this user in the state dir (None if unknown)."""

    event = "store_full"
    pauses = True

    def __init__(self, path: Path | str, detail: str):
        state_dir = Path(path).parent
        self.free_bytes = free_bytes(state_dir)
        free = "unknown" if self.free_bytes is None else human_bytes(self.free_bytes)
        super().__init__(path, f"no space for the state in {state_dir} ({free} free): {detail}",
                         "free some space there; pending work is kept and resumes when there is room")

    def fields(self) -> dict[str, object]:
        return {**super().fields(), "state_dir": str(self.path.parent), "free_bytes": self.free_bytes}


class StoreIOError(StoreUnusable):
    """Another I/O error from the disk under the state dir."""

    event = "store_io_error"
    pauses = True

    def __init__(self, path: Path | str, detail: str):
        super().__init__(path, f"I/O error on the state ({detail})", "check the disk and the kernel log")


class StoreBusy(StoreUnusable):
    """Another process held the write lock past every wait."""

    event = "store_busy"
    pauses = True

    def __init__(self, path: Path | str, detail: str):
        super().__init__(path, f"locked by another process ({detail})",
                         "find the process holding it (fuser) or try again later")


#: A fault class by its cause; each takes (path, detail).
_Kind = Callable[[Path | str, str], StoreUnusable]
_BY_CODE: dict[int, _Kind] = {
    sqlite3.SQLITE_CORRUPT: StoreCorrupt,
    sqlite3.SQLITE_NOTADB: StoreCorrupt,
    sqlite3.SQLITE_FULL: StoreFull,
    sqlite3.SQLITE_READONLY: StoreReadOnly,
    sqlite3.SQLITE_PERM: StoreReadOnly,
    sqlite3.SQLITE_IOERR: StoreIOError,
    sqlite3.SQLITE_BUSY: StoreBusy,
    sqlite3.SQLITE_LOCKED: StoreBusy,
}
_BY_ERRNO: dict[int, _Kind] = {
    errno.ENOSPC: StoreFull,
    errno.EDQUOT: StoreFull,
    errno.EROFS: StoreReadOnly,
    errno.EACCES: StoreReadOnly,
    errno.EPERM: StoreReadOnly,
    errno.EIO: StoreIOError,
}


def classify(exc: BaseException, path: Path | str) -> StoreUnusable | None:
    """The fault ``exc`` means for the store at ``path``, or None when it is no
    store fault (e.g. an SQL error: a bug, not the file's state).

    ``sqlite3.Error`` is mapped by its primary result code; SQLITE_CANTOPEN by
    looking at the state dir (read-only, missing, or not a file we can open);
    ``OSError`` by errno. A ``StoreUnusable`` is returned as it is.
    """
    if isinstance(exc, StoreUnusable):
        return exc
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None:
            return None
        primary = code & 0xFF
        if primary == sqlite3.SQLITE_CANTOPEN:
            return _cantopen(Path(path), str(exc))
        kind = _BY_CODE.get(primary)
        if kind is StoreIOError and _nearly_full(Path(path).parent):
            kind = StoreFull  # e.g. the -shm file could not grow: "disk I/O error" on a full disk
        return kind(path, str(exc)) if kind else None
    if isinstance(exc, OSError):
        kind = _BY_ERRNO.get(exc.errno or 0, StoreIOError)
        return kind(path, exc.strerror or str(exc))
    return None


def _cantopen(path: Path, detail: str) -> StoreUnusable:
    """SQLITE_CANTOPEN says only "unable to open database file": find out why."""
    state_dir = path.parent
    if not os.access(state_dir, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return StoreReadOnly(path, detail)
    if path.exists() and not path.is_file():
        return StoreCorrupt(path, f"not a regular file: {detail}")
    return StoreIOError(path, detail)


def _nearly_full(directory: Path) -> bool:
    free = free_bytes(directory)
    return free is not None and free < NEARLY_FULL_BYTES


def free_bytes(directory: Path) -> int | None:
    """Bytes available to this user in ``directory``'s filesystem (statvfs), or None."""
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def human_bytes(n: int) -> str:
    """``n`` bytes as ``512 B``, ``12.0 KiB``, ``3.4 MiB``… (binary units)."""
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{size:.1f} {unit}"
