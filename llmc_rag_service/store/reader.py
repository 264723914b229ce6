"""Read-only connections for ``search``, ``export`` and the MCP server.

They run while ``serve`` writes. The store is in WAL mode, where readers never
wait for the writer. A connection from :func:`open_reader` is the one
``status`` and ``show`` use (:class:`store.views.StoreReader`: ``mode=ro``, a
busy timeout for the short moments a reader must wait, ``immutable`` for a
store in a directory this user cannot write), plus ``PRAGMA query_only`` (it
cannot write even by mistake) and autocommit, so reads see new commits and
:func:`store.vectors.snapshot` can open a read transaction of its own.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from llmc_rag_service.store.faults import MOVE_ASIDE, StoreUnusable
from llmc_rag_service.store.views import StoreReader

__all__ = ["StoreUnusable", "database_file", "open_reader", "schema_version"]


def open_reader(db_path: Path | str) -> sqlite3.Connection:
    """A read-only connection to the store at ``db_path``.

    Raises:
        FileNotFoundError: no store there yet (or one created a moment ago, not migrated).
        StoreUnusable: the file is not a usable database.
    """
    try:
        reader = StoreReader.open(Path(db_path))
        if reader is None:
            raise FileNotFoundError(str(db_path))
        conn = reader.conn
        conn.isolation_level = None
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.DatabaseError as exc:
        raise StoreUnusable(db_path, f"cannot read the store ({exc})", MOVE_ASIDE.format(path=db_path)) from exc
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """The store's schema version (``PRAGMA user_version``; 0 = never migrated)."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


def database_file(conn: sqlite3.Connection) -> str:
    """The file behind the connection's main database ("" for in-memory)."""
    return next((r[2] for r in conn.execute("PRAGMA database_list") if r[1] == "main"), "")
