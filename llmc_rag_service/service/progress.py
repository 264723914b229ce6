"""``enrich``'s progress: a bar with rate and ETA on a terminal, an ``enrich_progress`` log event every 10 s otherwise.

Progress is counted per lane, in spans, as ``status`` counts them: enriched,
then embedded (``enrich`` embeds once the enrichments are in), each of the
spans the scan found (the total is fixed once the scan is done); spans that
failed for good are said (``(3 failed)``) and are not left to do. On a
terminal the bar is one line redrawn in place (``\\r`` and erase-line, ``ESC [ K``):
``[######..............] 14/40 enriched  0/40 embedded  2.0 spans/s  ETA 0:13  <STATUS>``,
cut to the terminal's width at a word boundary with an ellipsis (:func:`fit_words`).
Log records must not land in the middle of it, so while the bar is shown
(:meth:`Progress.logs_above`) logging writes through :meth:`Progress.log_stream`:
each record erases the bar, is written on its own line, and the bar is drawn
again below it. The level is raised to warning while the bar is shown (unless
``logging.level`` is debug), and stays there until the process ends: one
``job_done`` line per span would flood the terminal, and the bar already counts them. Elsewhere (a pipe, a file, a
journal) progress is a log event like every other line of the stream, in the
configured format: ``enrich_progress`` with ``enriched``, ``enriched_total``,
``enriched_failed``, ``embedded``, ``embedded_total``, ``embedded_failed``,
``rate_per_s``, ``eta_s`` and ``status``.

Rate is the spans the current lane (the first with spans left) finished per
second over the last :data:`RATE_WINDOW_S` seconds. ETA adds up, per lane, the
spans left over that lane's own rate: embeddings go in batches, far faster
than enrichments, so one rate for both would overstate the time left. A lane
that has not started yet adds nothing until it has a rate. Time comes from
``clock`` (default ``time.monotonic``, seconds), so tests drive it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from typing import Callable, Iterator, NamedTuple, Sequence, TextIO, cast

import structlog

from llmc_rag_service import logs as logsetup

log = structlog.get_logger(__name__)

#: Seconds between ``enrich_progress`` events when the stream is not a terminal.
PLAIN_EVERY_S = 10.0
#: Seconds of history a rate is measured over.
RATE_WINDOW_S = 30.0
_ERASE = "\r\x1b[K"


class Lane(NamedTuple):
    """One lane's count: ``label`` (``enriched``, ``embedded``), spans ``done`` of
    ``total``, of which ``failed`` failed for good (neither done nor left to do)."""

    label: str
    done: int
    total: int
    failed: int = 0

    @property
    def left(self) -> int:
        """Spans still to do."""
        return max(0, self.total - self.done - self.failed)

    def counts(self) -> str:
        """``14/40 enriched``, ``37/40 enriched (3 failed)``."""
        return f"{self.done}/{self.total} {self.label}" + (f" ({self.failed} failed)" if self.failed else "")


def format_eta(seconds: float | None) -> str:
    """``0:09``, ``12:30``, ``2:03:04``; ``--:--`` when unknown."""
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def fit_words(text: str, width: int, ellipsis: str = "…") -> str:
    """``text`` if it has at most ``width`` characters, else cut at the last
    space that leaves room for ``ellipsis`` (trailing ``;,:`` dropped), never
    inside a word or a number; just the ellipsis if the first word is too long,
    "" if even that does not fit."""
    if len(text) <= width:
        return text
    room = width - len(ellipsis)
    if room < 0:
        return ""
    space = text.rfind(" ", 0, room + 1)  # a space right after the room is a boundary too
    kept = text[:space].rstrip(" ;,:") if space > 0 else ""
    return kept + ellipsis


class _Rate:
    """Spans per second of one lane over the last :data:`RATE_WINDOW_S` seconds."""

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, now: float, done: int) -> float | None:
        """Record ``done`` at ``now``; the rate, None while not known (less than
        half a second of history, or nothing finished in it)."""
        samples = self.samples
        if not samples or samples[-1][1] != done or now - samples[-1][0] >= 1.0:
            samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
            samples.popleft()
        (t0, d0), (t1, d1) = samples[0], samples[-1]
        if t1 - t0 < 0.5 or d1 <= d0:
            return None
        return (d1 - d0) / (t1 - t0)


class Progress:
    """Progress of ``enrich``'s lanes on ``stream``.

    Args:
        stream: Where to draw (stderr); a bar if it is a terminal.
        clock: Seconds, monotonic.
        width: Columns of the terminal (default: asked from the stream, else 100).
    """

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic, width: int | None = None):
        self.stream, self.clock = stream, clock
        self.tty = _isatty(stream)
        self.width = width or _columns(stream)
        self._rates: dict[str, _Rate] = {}
        self._ellipsis = _ellipsis(stream)
        self._lock = threading.RLock()
        self._bar = ""  # the bar as last drawn ("" = none on screen)
        # The first event comes after PLAIN_EVERY_S: at the start nothing is known yet
        # (no rate; the hosts not tried: "ollama ok" before the first request failed).
        self._plain_at = clock()

    def rate_and_eta(self, lanes: Sequence[Lane]) -> tuple[float | None, float | None]:
        """(spans per second of the current lane, seconds left for every lane),
        None when not known yet (the current lane has no rate)."""
        now = self.clock()
        rates = [self._rates.setdefault(lane.label, _Rate()).add(now, lane.done) for lane in lanes]
        left = [(lane.left, rate) for lane, rate in zip(lanes, rates)]
        current = next((i for i, (n, _) in enumerate(left) if n), len(left) - 1)
        if not lanes or rates[current] is None:
            return None, None
        return rates[current], sum(n / rate for n, rate in left if n and rate)

    def text(self, lanes: Sequence[Lane], line: str) -> str:
        """The bar's text, without control characters."""
        rate, eta = self.rate_and_eta(lanes)
        left, total = sum(lane.left for lane in lanes), sum(lane.total for lane in lanes)
        filled = int(20 * (total - left) / total) if total else 20
        counts = "  ".join(lane.counts() for lane in lanes)
        speed = f"{rate:.1f} spans/s" if rate is not None else "-- spans/s"
        head = f"[{'#' * filled}{'.' * (20 - filled)}] {counts}  {speed}  ETA {format_eta(eta)}  "
        # One column spare: a line exactly as wide as the terminal wraps on some.
        return fit_words(head + line, max(20, self.width - 1), self._ellipsis)

    def update(self, lanes: Sequence[Lane], line: str, final: bool = False) -> None:
        """Redraw the bar (a terminal; ``final`` ends its line), or log
        ``enrich_progress`` every :data:`PLAIN_EVERY_S` seconds from the start
        (not on ``final``: the summary that follows says it)."""
        with self._lock:
            if self.tty:
                text = self.text(lanes, line)
                self.stream.write(_ERASE + text + ("\n" if final else ""))
                self._bar = "" if final else text
                self.stream.flush()
                return
            rate, eta = self.rate_and_eta(lanes)  # every update is a sample of the rate
            if not final and self.clock() - self._plain_at >= PLAIN_EVERY_S:
                counts = {k: v for lane in lanes for k, v in ((lane.label, lane.done), (f"{lane.label}_total", lane.total),
                                                              (f"{lane.label}_failed", lane.failed))}
                log.info("enrich_progress", **counts, rate_per_s=None if rate is None else round(rate, 2),
                         eta_s=None if eta is None else round(eta), status=line)
                self._plain_at = self.clock()

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
        afterwards logging writes to ``stream`` again, at that same level until
        the process ends (the summary follows; info records would only be the
        stop's ``job_done`` lines). Elsewhere a no-op."""
        if not self.tty:
            yield
            return
        shown = level if level in ("debug", "error") else "warning"
        logsetup.configure_logging(shown, fmt, stream=self.log_stream())
        try:
            yield
        finally:
            self.end_bar()  # e.g. Ctrl-C: what is logged next starts on a line of its own
            # Still at the bar's level: the stop after it (Ctrl-C's in-flight jobs) must not
            # print a job_done line per span under the bar the user just saw.
            logsetup.configure_logging(shown, fmt, stream=self.stream)

    def end_bar(self) -> None:
        """End the bar's line if one is shown (it stays on screen as it was)."""
        with self._lock:
            if self._bar:
                self.stream.write("\n")
                self.stream.flush()
                self._bar = ""


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


def _ellipsis(stream: TextIO) -> str:
    """"…" (one column) where the stream's encoding has it, else "..."."""
    try:
        "…".encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return "..."
    return "…"


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
