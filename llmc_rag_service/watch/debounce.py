"""Per-path debouncing of file events (see :class:`Debouncer`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Debouncer:
    """Per-path debounce with a cap: a path is due when it has been quiet for debounce_ms, or
    when max_delay_ms passed since its FIRST event in the current burst (a continuous stream
    still flushes). ``clock`` returns seconds (monotonic). Raises ValueError on negative delays.

    Cost per event and per :meth:`due` is O(1) amortised, whatever the number of pending
    paths (a 20,000-file extract must not make every poll walk 20,000 entries): paths are
    kept in two insertion-ordered dicts, by latest event and by first event, both ordered
    by time because the clock never goes back, so due paths are always at their fronts.
    """

    def __init__(self, debounce_ms: int = 500, max_delay_ms: int = 5000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if debounce_ms < 0 or max_delay_ms < 0:
            raise ValueError(f"delays must be >= 0 ms, got {debounce_ms=} {max_delay_ms=}")
        self._quiet_s = debounce_ms / 1000.0
        self._cap_s = max_delay_ms / 1000.0
        self._clock = clock
        self._lock = threading.Lock()
        self._first: dict[str, float] = {}  # relpath -> clock() of the burst's first event, oldest first
        self._last: dict[str, float] = {}  # relpath -> clock() of the latest event, oldest first

    def add(self, relpath: str) -> bool:
        """Record an event for ``relpath`` now. Thread-safe. Returns True if nothing was
        pending before (the caller's loop may be asleep with nothing scheduled)."""
        now = self._clock()
        with self._lock:
            was_empty = not self._last
            self._last.pop(relpath, None)  # re-insert at the end: the order stays by time
            self._last[relpath] = now
            self._first.setdefault(relpath, now)
        return was_empty

    def touch(self, relpath: str) -> bool:
        """Record an event for ``relpath`` now if it is pending already (then True);
        else change nothing and return False. Lets the watcher skip its ignore
        check for the second and later events of a file (a write is 2-4 events)."""
        now = self._clock()
        with self._lock:
            if relpath not in self._last:
                return False
            del self._last[relpath]  # re-insert at the end: the order stays by time
            self._last[relpath] = now
        return True

    def due(self) -> set[str]:
        """Pop and return the paths that are due now."""
        now = self._clock()
        ready: set[str] = set()
        with self._lock:
            for order, delay in ((self._last, self._quiet_s), (self._first, self._cap_s)):
                for path, at in order.items():
                    if at + delay > now:
                        break
                    ready.add(path)
            for path in ready:
                del self._last[path], self._first[path]
        return ready

    def take_all(self) -> set[str]:
        """Pop and return every pending path, due or not."""
        with self._lock:
            paths = set(self._last)
            self._last.clear()
            self._first.clear()
        return paths

    def next_due_s(self) -> float | None:
        """Seconds (>= 0) until the next path is due, None if nothing is pending."""
        now = self._clock()
        with self._lock:
            if not self._last:
                return None
            quiet_at = next(iter(self._last.values())) + self._quiet_s
            cap_at = next(iter(self._first.values())) + self._cap_s
        return max(0.0, min(quiet_at, cap_at) - now)

    def pending(self) -> int:
        """Number of paths waiting."""
        with self._lock:
            return len(self._last)
