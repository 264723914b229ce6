"""Signals that only set flags, and a thread that wakes the main loop for them.

Python runs a signal handler on the main thread, between two bytecodes of
whatever that thread is doing. The daemon's main loop sleeps in
``Event.wait`` and calls ``Event.clear``; both hold the event's internal
(non-reentrant) lock for a few bytecodes. A handler that called
``event.set()`` there waited for a lock its own thread held: the main loop
hung for good (SIGTERM: no stop, no log line; a burst of SIGHUP: handlers
nested until RecursionError). So handlers take no lock; this module's
:class:`SignalWaker` does the waking from another thread instead.

It uses ``signal.set_wakeup_fd`` (Python docs, "signal"): the interpreter's
C-level handler writes the signal number to a pipe as the signal arrives,
before any Python code runs; the waker thread blocks reading that pipe and
sets the event, as any other thread of the daemon may.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable


class SignalWaker:
    """Set ``event`` whenever a signal with a Python handler arrives, after
    calling ``on_signal(signum)`` (on this thread, at once: even while the main
    thread is stuck inside a long C call and its Python handler cannot run yet).

    :meth:`start` on the main thread (``set_wakeup_fd`` requires it), before
    the handlers are installed; :meth:`stop` on the main thread puts back the
    previous wake-up fd and ends the thread. Raises ValueError from
    ``set_wakeup_fd`` when started off the main thread.
    """

    def __init__(self, event: threading.Event, on_signal: Callable[[int], None] | None = None):
        self.event, self.on_signal = event, on_signal
        self._read_fd = self._write_fd = -1
        self._previous = -1
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="signal-waker", daemon=True)

    def start(self) -> None:
        """Open the pipe, make it the wake-up fd, start the thread."""
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._write_fd, False)  # the C handler must never block
        try:
            self._previous = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        except ValueError:
            self._close_fds()
            raise
        self._thread.start()

    def stop(self) -> None:
        """Put the previous wake-up fd back, end the thread, close the pipe."""
        if self._write_fd < 0:
            return
        signal.set_wakeup_fd(self._previous)
        self._closing = True
        try:
            os.write(self._write_fd, b"\0")  # wakes the reader, which sees _closing
        except BlockingIOError:
            pass  # the pipe is full: the reader has bytes to wake it already
        self._thread.join()
        self._close_fds()

    def _run(self) -> None:
        while True:
            data = os.read(self._read_fd, 512)
            if not data or self._closing:
                return
            if self.on_signal is not None:
                for signum in data:
                    self.on_signal(signum)
            self.event.set()

    def _close_fds(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            if fd >= 0:
                os.close(fd)
        self._read_fd = self._write_fd = -1
