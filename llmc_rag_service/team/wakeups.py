"""Wake-ups for callers waiting on span hashes that a teammate is enriching.

A waiter registers the hashes it wants *before* it looks them up, so a
publication that lands between its lookup and its wait still wakes it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator


class Watch:
    """One waiter's interest in some span hashes; an Event set when any of
    them is published (or on a resync)."""

    def __init__(self, hashes: frozenset[str]):
        self.hashes = hashes
        self._event = threading.Event()

    def clear(self) -> None:
        """Forget earlier wake-ups (call before each lookup)."""
        self._event.clear()

    def wait(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` seconds for a wake-up; True if woken."""
        return self._event.wait(max(0.0, timeout_s))

    def wake(self) -> None:
        self._event.set()


class Wakeups:
    """Routes published span hashes to the watches that want them; thread-safe."""

    def __init__(self) -> None:
        self._by_hash: dict[str, set[Watch]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def watching(self, hashes: Iterable[str]) -> Iterator[Watch]:
        """A :class:`Watch` registered for ``hashes`` while the block runs."""
        watch = Watch(frozenset(hashes))
        with self._lock:
            for h in watch.hashes:
                self._by_hash.setdefault(h, set()).add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                for h in watch.hashes:
                    watchers = self._by_hash.get(h)
                    if watchers is not None:
                        watchers.discard(watch)
                        if not watchers:
                            del self._by_hash[h]

    def notify(self, span_hash: str | None) -> None:
        """Wake the watches of ``span_hash``; None wakes every watch (a
        reconnection may have missed notifications)."""
        with self._lock:
            if span_hash is None:
                targets = {w for ws in self._by_hash.values() for w in ws}
            else:
                targets = set(self._by_hash.get(span_hash, ()))
        for watch in targets:
            watch.wake()

    @property
    def waiting(self) -> int:
        """Number of span hashes someone waits for."""
        with self._lock:
            return len(self._by_hash)
