"""Read-only connections for ``search``, ``export`` and the MCP server.

They run while ``serve`` writes. The store is in WAL mode, where readers never
wait for the writer; a connection opened here is ``mode=ro`` plus
``PRAGMA query_only`` (it cannot write even by mistake) with a busy timeout
for the short moments a reader must wait (WAL recovery after a crash). A
database in a directory this user cannot write (a system service's state
read by another user, with no ``-shm`` file yet) is opened ``immutable``:
the daemon is not running then, so nothing changes under the reader.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

from llmc_rag_service.store import fts

#: Seconds a reader waits on a lock (only WAL recovery takes one) before giving up.
READ_BUSY_TIMEOUT_S = 10.0


class StoreUnusable(Exception):
    """The store exists but cannot be read: corrupt, unreadable, from a newer
    version, or too old to search and not writable to migrate. The message says which."""


def _connect(db_path: Path, flags: str) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(str(db_path))}?{flags}"
    conn = sqlite3.connect(uri, uri=True, timeout=READ_BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(READ_BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA query_only = ON")
    return conn


def open_reader(db_path: Path | str) -> sqlite3.Connection:
    """A read-only connection to the store at ``db_path``.

    Raises:
        FileNotFoundError: no store there yet.
        StoreUnusable: the file is not a usable database.
    """
    db_path = Path(db_path)
    if not db_path.exists():
        raise FileNotFoundError(str(db_path))
    try:
        try:
            conn = _connect(db_path, "mode=ro")
            schema_version(conn)
        except sqlite3.OperationalError:
            conn = _connect(db_path, "mode=ro&immutable=1")
            schema_version(conn)
    except sqlite3.DatabaseError as exc:
        raise StoreUnusable(f"{db_path}: cannot read the store: {exc}") from exc
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """The store's schema version (``PRAGMA user_version``; 0 = never migrated)."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


def searchable(conn: sqlite3.Connection) -> bool:
    """Whether the store has the search index and the embeddings table."""
    return fts.has_index(conn)


def database_file(conn: sqlite3.Connection) -> str:
    """The file behind the connection's main database ("" for in-memory)."""
    return next((r[2] for r in conn.execute("PRAGMA database_list") if r[1] == "main"), "")
