"""The secret redaction's records in the store: its audit counts and the allow list in force.

What is redacted is decided in ``index/redact.py``; the counts are read back by
``views.StoreReader.repo_secrets`` / ``answers_redacted`` for ``status --json``.
Rows: ``repos.secret_files`` (secret files by name a full scan passed by),
``files.redacted`` (written by ``Store.put_file``), and two ``meta`` keys:
``answers_redacted`` (values replaced in model answers, since the store was
made) and ``secrets_allow`` (a digest of the ``secrets.allow`` list the stored
spans were cut with).
"""

from __future__ import annotations

import sqlite3

from llmc_rag_service.store.database import Database


def count_answer_redactions(store: Database, count: int) -> None:
    """Add ``count`` to the secret values redacted from model answers so far."""
    with store.write() as tx:
        tx.execute("""INSERT INTO meta(key, value) VALUES ('answers_redacted', ?) ON CONFLICT(key)
                      DO UPDATE SET value = CAST(CAST(value AS INTEGER) + ? AS TEXT)""", (str(count), count))


def reread_files_for(store: Database, allow_key: str) -> int:
    """Make every indexed file be read and cut again by its next scan (its hash
    forgotten: see ``Scanner``) unless the stored spans were cut with the
    ``secrets.allow`` list whose digest is ``allow_key``. Returns how many files
    were marked (0 also for a new store: nothing was cut yet)."""
    row = store.conn.execute("SELECT value FROM meta WHERE key = 'secrets_allow'").fetchone()
    if row is not None and row[0] == allow_key:
        return 0
    with store.write() as tx:
        marked: int = tx.execute("UPDATE files SET content_hash = '' WHERE skipped IS NULL").rowcount
        tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('secrets_allow', ?)", (allow_key,))
    return marked


def set_secret_files(tx: sqlite3.Connection, repo_id: int, count: int) -> None:
    """Inside ``tx``, record how many secret files by name (never read) a full
    scan of the repo passed by."""
    tx.execute("UPDATE repos SET secret_files = ? WHERE id = ?", (count, repo_id))
