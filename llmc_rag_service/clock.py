"""Time as the long-running parts see it, injectable so tests can drive it.

The daemon's main loop, the worker pool, the watchers and the job queue read
the time and wait through a :class:`Clock` given to them (default
:data:`SYSTEM`, the real one), as :class:`~llmc_rag_service.watch.repo.Debouncer`
and :class:`~llmc_rag_service.watch.gitgate.GitGate` take a ``clock``. A test
passes a :class:`~llmc_rag_service.testing.clock.ManualClock` and moves time
itself, so a 5 s retry, a 10 s STATUS heartbeat or a 60 s hang limit is
checked exactly, without waiting for it.

Joins of threads on stop, HTTP deadlines and the age of files on disk stay on
real time: they measure the world outside the process.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """What the parts need of time. A Clock is also a ``Callable[[], float]``
    (monotonic seconds), so it can be given wherever a plain ``clock`` is taken."""

    def __call__(self) -> float:
        """Monotonic seconds (as ``time.monotonic()``): for intervals and deadlines."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (as ``time.time()``): for times kept in the store."""
        ...

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        """Wait until ``event`` is set (True) or ``timeout_s`` seconds of this
        clock have passed (False), as ``event.wait(timeout_s)``."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and ``Event.wait``."""

    def __call__(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        return event.wait(max(0.0, timeout_s))


#: The real clock, the default of every part that takes one.
SYSTEM: Clock = SystemClock()
