"""Where results wait while the team database cannot take them: the interface and an in-memory one.

The daemon backs it with ``store.team_outbox.TeamOutbox`` (a table in its
SQLite state, so nothing waiting is lost to a restart); :class:`MemoryOutbox`
serves one-shot runs without a store, tests and benchmarks.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from llmc_rag_service.store.team_outbox import OutboxItem

__all__ = ["MemoryOutbox", "Outbox", "OutboxItem"]


class Outbox(Protocol):
    """A FIFO of :class:`OutboxItem`, keyed once per (kind, span_hash, model, version).

    Implementations are thread-safe: the daemon's workers add, the team
    cache's maintenance thread drains.
    """

    def add(self, items: Sequence[OutboxItem]) -> None:
        """Keep ``items``; a key already waiting keeps its first payload."""

    def oldest(self, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` items, oldest first, each with its ``id``."""

    def remove(self, ids: Sequence[int]) -> None:
        """Drop the items with these ids (published)."""

    def count(self) -> int:
        """How many items wait."""


class MemoryOutbox:
    """An :class:`Outbox` in memory (lost at exit)."""

    def __init__(self) -> None:
        self._items: dict[int, OutboxItem] = {}
        self._keys: set[tuple[Any, ...]] = set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, items: Sequence[OutboxItem]) -> None:
        with self._lock:
            for item in items:
                key = (item.kind, item.span_hash, item.model, item.version)
                if key not in self._keys:
                    self._keys.add(key)
                    new = replace(item, id=next(self._ids))
                    self._items[new.id] = new

    def oldest(self, limit: int) -> list[OutboxItem]:
        with self._lock:
            return [self._items[i] for i in sorted(self._items)[:limit]]

    def remove(self, ids: Sequence[int]) -> None:
        with self._lock:
            for i in ids:
                item = self._items.pop(i, None)
                if item:
                    self._keys.discard((item.kind, item.span_hash, item.model, item.version))

    def count(self) -> int:
        with self._lock:
            return len(self._items)
