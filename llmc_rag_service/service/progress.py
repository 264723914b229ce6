"""``enrich``'s progress: a bar with rate and ETA on a terminal, a plain line every 10 s otherwise.

On a terminal the bar is one line redrawn in place (``\\r`` and erase-line,
``ESC [ K``). Log records must not land in the middle of it, so while the bar
is shown (:meth:`Progress.logs_above`) logging writes through
:meth:`Progress.log_stream`: each record erases the bar, is written on its own
line, and the bar is drawn again below it. The level is raised to warning
while the bar is shown (unless ``logging.level`` is debug): one ``job_done``
line per span would flood the terminal, and the bar already counts them.

Rate is jobs finished per second over the last :data:`RATE_WINDOW_S` seconds;
ETA is the jobs left divided by that rate. Time comes from ``clock``
(default ``time.monotonic``, seconds), so tests drive it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from typing import Callable, Iterator, TextIO, cast

from llmc_rag_service import logs as logsetup

#: Seconds between plain progress lines when the stream is not a terminal.
PLAIN_EVERY_S = 10.0
#: Seconds of history the rate is measured over.
RATE_WINDOW_S = 30.0
_ERASE = "\r\x1b[K"


def format_eta(seconds: float | None) -> str:
    """``0:09``, ``12:30``, ``2:03:04``; ``--:--`` when unknown."""
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Progress of ``done`` out of ``total`` jobs on ``stream``.

    Args:
        stream: Where to draw (stderr); a bar if it is a terminal.
        clock: Seconds, monotonic.
        width: Columns of the terminal (default: asked from the stream, else 100).
    """

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic, width: int | None = None):
        self.stream, self.clock = stream, clock
        self.tty = _isatty(stream)
        self.width = width or _columns(stream)
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.RLock()
        self._bar = ""  # the bar as last drawn ("" = none on screen)
        self._plain_at = -PLAIN_EVERY_S

    def rate_and_eta(self, done: int, total: int) -> tuple[float | None, float | None]:
        """(jobs per second over the window, seconds left), None when not known yet."""
        now = self.clock()
        samples = self._samples
        if not samples or samples[-1][1] != done or now - samples[-1][0] >= 1.0:
            samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
            samples.popleft()
        (t0, d0), (t1, d1) = samples[0], samples[-1]
        if t1 - t0 < 0.5 or d1 <= d0:
            return None, None
        rate = (d1 - d0) / (t1 - t0)
        return rate, max(0, total - done) / rate

    def text(self, done: int, total: int, line: str) -> str:
        """The progress text, without control characters."""
        rate, eta = self.rate_and_eta(done, total)
        speed = f"{rate:.1f} jobs/s" if rate is not None else "-- jobs/s"
        if self.tty:
            filled = int(20 * done / total) if total else 20
            head = f"[{'#' * filled}{'.' * (20 - filled)}] {done}/{total} jobs  {speed}  ETA {format_eta(eta)}  "
            return (head + line)[: max(20, self.width - 1)]
        return f"enrich: {done}/{total} jobs, {speed}, ETA {format_eta(eta)}; {line}"

    def update(self, done: int, total: int, line: str, final: bool = False) -> None:
        """Redraw the bar (a terminal), or write a plain line at most every
        :data:`PLAIN_EVERY_S` seconds and on ``final``."""
        with self._lock:
            text = self.text(done, total, line)
            if self.tty:
                self.stream.write(_ERASE + text + ("\n" if final else ""))
                self._bar = "" if final else text
            elif final or self.clock() - self._plain_at >= PLAIN_EVERY_S:
                self.stream.write(text + "\n")
                self._plain_at = self.clock()
            self.stream.flush()

    def write_above(self, text: str) -> None:
        """Write ``text`` (whole lines) above the bar, then draw the bar again."""
        with self._lock:
            if self._bar:
                self.stream.write(_ERASE)
            self.stream.write(text)
            if self._bar and text.endswith("\n"):
                self.stream.write(self._bar)
            self.stream.flush()

    def log_stream(self) -> TextIO:
        """A stream for the logging handler that writes through :meth:`write_above`."""
        return cast(TextIO, _AboveBar(self))  # file-like enough for logging: write, flush, isatty

    @contextlib.contextmanager
    def logs_above(self, level: str, fmt: str) -> Iterator[None]:
        """While the block runs on a terminal, route logging through
        :meth:`log_stream` at warning (or ``level`` when it is debug or error);
        afterwards restore logging to ``stream`` at ``level``. Elsewhere a no-op."""
        if not self.tty:
            yield
            return
        shown = level if level in ("debug", "error") else "warning"
        logsetup.configure_logging(shown, fmt, stream=self.log_stream())
        try:
            yield
        finally:
            logsetup.configure_logging(level, fmt, stream=self.stream)


class _AboveBar:
    """File-like: what logging writes goes above the bar (one record per write)."""

    def __init__(self, progress: Progress):
        self._progress = progress

    def write(self, text: str) -> int:
        self._progress.write_above(text)
        return len(text)

    def flush(self) -> None:
        self._progress.stream.flush()

    def isatty(self) -> bool:
        return self._progress.tty

    def fileno(self) -> int:
        return self._progress.stream.fileno()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _columns(stream: TextIO) -> int:
    """$COLUMNS, else the terminal's width, else 100 (a pty may report 0)."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(stream.fileno()).columns or 100
    except (AttributeError, ValueError, OSError):
        return 100
