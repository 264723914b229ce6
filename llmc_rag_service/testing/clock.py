"""A clock that moves only when a test says so (see :mod:`llmc_rag_service.clock`).

Usage::

    clock = ManualClock()
    daemon = Daemon(path, config, notifier, clock=clock)   # or Pipeline(..., clock=clock)
    ...
    clock.advance(5.0)                     # every wait due by then returns
    clock.wait_asleep(loop_thread)         # the loop handled it and waits again
    clock.advance_to(clock.deadline_of(loop_thread))   # follow the loop's own wake-ups

Threads waiting through :meth:`ManualClock.wait` return at once when their
event is set (seen within :data:`POLL_S` seconds of real time) and when
:meth:`advance` moves the clock past their deadline; never because real time
passed. :meth:`wait_asleep` is how a test knows that a thread it drives has
finished its turn: it is back in :meth:`wait`, with a deadline still ahead and
its event not set.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

#: Real seconds between looks at a waiting thread's event (an Event cannot notify a Condition).
POLL_S = 0.005


@dataclass
class _Sleeper:
    event: threading.Event
    deadline: float


class ManualClock:
    """A :class:`~llmc_rag_service.clock.Clock` that stands still until :meth:`advance`.

    Args:
        start: Monotonic seconds at the start.
        wall_start: Wall-clock seconds since the epoch at the start; wall time
            moves together with monotonic time.

    Thread-safe.
    """

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._cond = threading.Condition()
        self._sleepers: dict[int, _Sleeper] = {}  # thread ident -> its current wait

    def __call__(self) -> float:
        with self._cond:
            return self._now

    def time(self) -> float:
        with self._cond:
            return self._now + self._wall_offset

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        """As ``event.wait(timeout_s)``, with ``timeout_s`` in this clock's seconds."""
        ident = threading.get_ident()
        with self._cond:
            self._sleepers[ident] = _Sleeper(event, self._now + max(0.0, timeout_s))
            self._cond.notify_all()
            try:
                while not event.is_set() and self._now < self._sleepers[ident].deadline:
                    self._cond.wait(POLL_S)
                return event.is_set()
            finally:
                del self._sleepers[ident]
                self._cond.notify_all()

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` (>= 0) ahead; waits due by then return.
        Raises ValueError on a negative step (monotonic time never goes back)."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back, got {seconds} s")
        with self._cond:
            self.advance_to(self._now + seconds)

    def advance_to(self, when: float) -> None:
        """Set the clock to ``when`` exactly (e.g. a thread's :meth:`deadline_of`,
        so a wait for ``x`` seconds sees exactly ``x`` pass); no-op if it is already
        there or past it."""
        with self._cond:
            if when > self._now:
                self._now = when
                self._cond.notify_all()

    def asleep(self, thread: threading.Thread) -> bool:
        """True while ``thread`` waits in :meth:`wait` with its deadline ahead and its event unset."""
        with self._cond:
            sleeper = self._sleepers.get(thread.ident or -1)
            return sleeper is not None and sleeper.deadline > self._now and not sleeper.event.is_set()

    def wait_asleep(self, thread: threading.Thread, timeout_s: float = 10.0) -> None:
        """Block until :meth:`asleep` is true of ``thread`` (it finished its turn).

        Raises:
            TimeoutError: not within ``timeout_s`` seconds of real time
                (the thread is stuck, or does not wait through this clock).
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self.asleep(thread):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{thread.name} did not go to sleep on the clock within {timeout_s} s")
                self._cond.wait(min(left, POLL_S))

    def deadline_of(self, thread: threading.Thread) -> float | None:
        """When the wait ``thread`` is in now ends by itself, or None if it is not waiting."""
        with self._cond:
            sleeper = self._sleepers.get(thread.ident or -1)
            return None if sleeper is None else sleeper.deadline

    def next_deadline(self) -> float | None:
        """The earliest deadline of the threads waiting now, or None if none waits."""
        with self._cond:
            return min((s.deadline for s in self._sleepers.values()), default=None)
