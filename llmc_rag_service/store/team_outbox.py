"""The team outbox in the local state database: results waiting for the team database.

While PostgreSQL is unreachable (or refuses a write), each result the daemon
produced is kept here and published when it returns, oldest first; a row is
deleted only after the team database accepted it, so a crash in between
publishes it again (harmless: ``ON CONFLICT DO NOTHING``).

The table is created by migration 3 of ``store.db.MIGRATIONS``. A key is
kept once per kind (``INSERT OR IGNORE``): the first result for a key is the
one published, as in the team database itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from llmc_rag_service.store.db import Store


@dataclass(frozen=True)
class OutboxItem:
    """One result waiting to be published.

    Attributes:
        kind: ``enrichment`` or ``embedding``.
        span_hash, model, version: the key (``model`` is the embed model and
            ``version`` the input version for an embedding).
        payload: the enrichment's fields as UTF-8 JSON, or the vector as
            float32 little-endian bytes.
        dim: the vector's dimension (0 for an enrichment).
        id: row id, set by the outbox (0 before it is stored).
    """

    kind: str
    span_hash: str
    model: str
    version: int
    payload: bytes
    dim: int = 0
    id: int = 0


class TeamOutbox:
    """The ``team_outbox`` table of a :class:`Store`; safe to share between threads."""

    def __init__(self, store: Store):
        self.store = store

    def add(self, items: Sequence[OutboxItem]) -> None:
        """Keep ``items`` (a key already waiting keeps its first payload)."""
        now = time.time()
        with self.store.write() as tx:
            tx.executemany(
                "INSERT OR IGNORE INTO team_outbox(kind, span_hash, model, version, payload, dim, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(i.kind, i.span_hash, i.model, i.version, bytes(i.payload), i.dim, now) for i in items])

    def oldest(self, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` waiting items, oldest first, with their ids."""
        rows = self.store.conn.execute(
            "SELECT kind, span_hash, model, version, payload, dim, id FROM team_outbox ORDER BY id LIMIT ?",
            (limit,)).fetchall()
        return [OutboxItem(*row) for row in rows]

    def remove(self, ids: Sequence[int]) -> None:
        """Forget the items with these ids (published)."""
        with self.store.write() as tx:
            tx.executemany("DELETE FROM team_outbox WHERE id = ?", [(i,) for i in ids])

    def count(self) -> int:
        """How many items wait."""
        return self.store.conn.execute("SELECT count(*) FROM team_outbox").fetchone()[0]
