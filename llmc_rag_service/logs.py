"""The one place where structlog and stdlib logging are configured.

Every record, from ``structlog.get_logger(__name__)`` or from a stdlib logger
(watchdog, httpx), goes through one stdlib handler whose
``structlog.stdlib.ProcessorFormatter`` renders it:

- JSON (one object per line): ``timestamp`` (ISO 8601, UTC), ``level``,
  ``logger``, ``event``, then the event's fields; an exception's traceback is the
  string field ``exception``, so a traceback never spans lines.
- console: structlog's readable renderer (colours only on a TTY).

``fmt="auto"`` picks console on a TTY, else JSON. When the stream is the journal
(``$JOURNAL_STREAM`` is ``<device>:<inode>`` of the stream's fd, see
systemd.exec(5)), each line starts with its syslog priority (``<3>`` error,
``<4>`` warning, ``<6>`` info, ``<7>`` debug, ``<2>`` critical; sd-daemon(3)),
which journald strips and stores, so ``journalctl -p err`` shows errors only.

An exception nobody caught (main thread or any other thread) is logged by
``sys.excepthook``/``threading.excepthook`` as one error record with its
traceback in ``exception`` (so one ``<3>`` journal line), not as Python's
multi-line stderr dump, which journald would store as many info lines.

httpx/httpcore log every request at info: their level is held at warning or above;
watchdog's at info or above; psycopg's at warning and its pool's at error (the
team cache says an outage once, as ``team_unreachable``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# syslog priorities (sd-daemon(3) SD_CRIT ... SD_DEBUG) by structlog level name.
PRIORITIES = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
# psycopg's pool warns, over several lines, about each failed connection
# attempt; the team cache reports an outage itself, once (``team_unreachable``).
_NOISY_FLOORS = {"httpx": logging.WARNING, "httpcore": logging.WARNING, "watchdog": logging.INFO,
                 "psycopg": logging.WARNING, "psycopg.pool": logging.ERROR}
_FIRST_KEYS = ("timestamp", "level", "logger", "event")
_FORMATS = ("auto", "json", "console")

_handler: logging.Handler | None = None
_unhandled_log = structlog.get_logger("llmc_rag_service.unhandled")


def _log_unhandled(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    """``sys.excepthook``: one error record (Ctrl-C keeps Python's default)."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    _unhandled_log.error("unhandled_exception", error=f"{exc_type.__name__}: {exc}", exc_info=(exc_type, exc, tb))


def _log_thread_unhandled(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook``: one error record naming the thread."""
    if args.exc_type is SystemExit:
        return
    thread = args.thread.name if args.thread is not None else None
    _unhandled_log.error("thread_crashed", thread=thread, error=f"{args.exc_type.__name__}: {args.exc_value}",
                         exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def stream_is_journal(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """True if ``stream``'s file descriptor is the journal connection that
    ``$JOURNAL_STREAM`` (``"<st_dev>:<st_ino>"``, decimal) names."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, OSError, AttributeError):
        return False


def _parse_level(level: str) -> int:
    try:
        return _LEVELS[level.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}") from None


def _ordered(event_dict: dict[str, Any]) -> dict[str, Any]:
    first = {k: event_dict[k] for k in _FIRST_KEYS if k in event_dict}
    return first | {k: v for k, v in event_dict.items() if k not in first}


class _Finish:
    """Last formatter step: render, make the text valid UTF-8 (a lone surrogate
    from a non-UTF-8 path becomes a visible ``\\udcXX`` escape, still valid JSON),
    and prefix the syslog priority when writing to the journal."""

    def __init__(self, as_json: bool, colors: bool, journal: bool):
        self._as_json = as_json
        self._journal = journal
        self._renderer: Callable[[Any, str, dict[str, Any]], Any]  # JSON or console, both give str
        if as_json:
            self._renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
        else:
            self._renderer = structlog.dev.ConsoleRenderer(colors=colors)

    def __call__(self, logger: Any, method_name: str, event_dict: dict[str, Any]) -> str:
        level = str(event_dict.get("level", "info"))
        if self._as_json:
            event_dict = _ordered(event_dict)
        text: str = self._renderer(logger, method_name, event_dict)
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        if self._journal:
            text = f"<{PRIORITIES.get(level, 6)}>{text}"
        return text


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
    ]


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler that writes to whatever ``sys.stderr`` is when a record is
    emitted (as the stdlib's ``logging.lastResort`` does), not the object it was
    at configuration: a replaced stderr (a test's capture, a closed pipe swapped
    out) must not leave a thread logging into a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass  # always sys.stderr


def _make_handler(stream: TextIO | None, as_json: bool, journal: bool) -> logging.Handler:
    finish = _Finish(as_json, colors=_isatty(sys.stderr if stream is None else stream), journal=journal)
    tail = [structlog.processors.format_exc_info, finish] if as_json else [finish]
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        foreign_pre_chain=_shared_processors(),
    )
    handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    return handler


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Configure structlog and stdlib logging to write to ``stream`` (default
    ``sys.stderr``) at ``level`` (debug|info|warning|error|critical) in ``fmt``
    (auto|json|console). ``env`` (default ``os.environ``) is read for
    ``JOURNAL_STREAM``. Calling it again (a reload) replaces the previous setup.
    Also installs ``sys.excepthook`` and ``threading.excepthook`` so an uncaught
    exception is one error record (``reset_logging`` restores Python's hooks).
    Raises ValueError for an unknown level or format.
    """
    global _handler
    _parse_level(level)
    if fmt not in _FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; use one of {', '.join(_FORMATS)}")
    target = sys.stderr if stream is None else stream
    as_json = fmt == "json" or (fmt == "auto" and not _isatty(target))
    handler = _make_handler(stream, as_json, stream_is_journal(target, env))
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    _handler = handler
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # No caching: module-level loggers must follow a reconfiguration.
        cache_logger_on_first_use=False,
    )
    logging.captureWarnings(True)
    sys.excepthook, threading.excepthook = _log_unhandled, _log_thread_unhandled
    set_level(level)


def set_level(level: str) -> None:
    """Set the level of every logger (the root), keeping the noisy libraries at
    their floors. Takes effect at once, also for loggers created earlier.
    Raises ValueError for an unknown level."""
    value = _parse_level(level)
    logging.getLogger().setLevel(value)
    for name, floor in _NOISY_FLOORS.items():
        logging.getLogger(name).setLevel(max(value, floor))


def reset_logging() -> None:
    """Undo ``configure_logging`` (for tests): remove our handler, restore
    structlog's defaults and the stdlib levels."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler = None
    root.setLevel(logging.WARNING)
    for name in _NOISY_FLOORS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.captureWarnings(False)
    sys.excepthook, threading.excepthook = sys.__excepthook__, threading.__excepthook__
    structlog.reset_defaults()
