"""A deadline on the daemon's stop: a stop that hangs says where, then ends.

systemd kills a unit that is still stopping after ``TimeoutStopSec`` (45 s in
the shipped unit) with SIGKILL, and the journal then shows nothing about why.
:class:`StopDeadline` runs aside from the stop: when the stop is still under
way at its deadline it logs one ``stop_overdue`` error holding every thread's
innermost frames, so ``journalctl -p err -u llmc-rag`` shows what it waited on,
and calls ``on_overdue`` (``serve`` exits there with ``cli.EX_SOFTWARE``;
jobs left running are returned to pending by the next start, as after a kill).
"""

from __future__ import annotations

import sys
import threading
import traceback
from typing import Callable

import structlog

from llmc_rag_service.clock import SYSTEM, Clock

log = structlog.get_logger(__name__)

#: Innermost frames kept per thread in ``stop_overdue``.
FRAMES_PER_THREAD = 6


def thread_stacks(frames: int = FRAMES_PER_THREAD) -> dict[str, list[str]]:
    """Every live thread's innermost ``frames`` frames, innermost last:
    ``{"<thread name>": ["<file>:<line> in <function>", ...]}`` (names made
    unique with ``#<ident>`` when two threads share one)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    stacks: dict[str, list[str]] = {}
    for ident, frame in sys._current_frames().items():
        name = names.get(ident, "?")
        if name in stacks:
            name = f"{name}#{ident}"
        summary = traceback.extract_stack(frame)[-frames:]
        stacks[name] = [f"{f.filename}:{f.lineno} in {f.name}" for f in summary]
    return stacks


class StopDeadline:
    """Watch one stop: :meth:`start` when it begins, :meth:`cancel` when it ended.

    Args:
        deadline_s: Seconds of ``clock`` the stop may take.
        on_overdue: Called on the watching thread after the error is logged
            (``serve``: ``os._exit``); None only logs (a daemon inside a test).
        clock: Time of the wait (tests pass a manual one).
    """

    def __init__(self, deadline_s: float, on_overdue: Callable[[], None] | None = None, clock: Clock = SYSTEM):
        self.deadline_s, self.on_overdue, self.clock = deadline_s, on_overdue, clock
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stop-deadline", daemon=True)
        self.fired = False

    def start(self) -> None:
        """Begin counting (the stop begins)."""
        self._thread.start()

    def cancel(self) -> None:
        """The stop ended in time: the watching thread ends without a word."""
        self._ended.set()
        if self._thread.ident is not None:
            self._thread.join()

    def _watch(self) -> None:
        if self.clock.wait(self._ended, self.deadline_s):
            return
        self.fired = True
        log.error("stop_overdue", deadline_s=self.deadline_s, threads=thread_stacks())
        if self.on_overdue is not None:
            self.on_overdue()
