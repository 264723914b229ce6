"""Opening the store for search and export: read-only, migrated first if it is older."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from llmc_rag_service.store import reader
from llmc_rag_service.store.db import MIGRATIONS, Store
from llmc_rag_service.store.reader import StoreUnusable


def open_store(db_path: Path | str) -> sqlite3.Connection:
    """A read-only connection to a store with the current schema (see store.reader).

    A store of an older schema is migrated first by opening it once for
    writing (what ``serve`` would do on start; the FTS index is backfilled).

    Raises:
        FileNotFoundError: there is no store yet (nothing was ever indexed).
        StoreUnusable: corrupt or unreadable, from a newer llmc-rag, or older
            and not writable by this user; the message says which and what to do.
    """
    conn = reader.open_reader(db_path)
    version = reader.schema_version(conn)
    if version > len(MIGRATIONS):
        conn.close()
        raise StoreUnusable(db_path, f"the store has schema version {version}, newer than this llmc-rag "
                            f"knows ({len(MIGRATIONS)})", "upgrade llmc-rag")
    if version < len(MIGRATIONS):
        conn.close()
        try:
            Store(db_path).close()
        except StoreUnusable:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnusable(db_path, f"the store has schema version {version} and needs migrating to "
                                f"{len(MIGRATIONS)}, which failed ({exc})", "run `llmc-rag serve` or "
                                "`llmc-rag enrich` once as the owner of the state directory") from exc
        conn = reader.open_reader(db_path)
    return conn
