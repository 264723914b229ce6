"""Logging setup: JSON lines, journald priorities, console on a TTY, stdlib routing."""

from __future__ import annotations

import io
import json
import logging
import os
import select
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import structlog

from llmc_rag_service.logs import configure_logging, reset_logging, set_level

log = structlog.get_logger("llmc_rag_service.test")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    reset_logging()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[io.TextIOWrapper, dict[str, str]]]:
    """A real file standing in for the journal, with a JOURNAL_STREAM naming it."""
    stream = open(tmp_path / "journal.log", "w+", encoding="utf-8")
    st = os.fstat(stream.fileno())
    yield stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    stream.close()


def _lines(stream: io.TextIOBase) -> list[str]:
    stream.flush()
    stream.seek(0)
    return stream.read().splitlines()


def test_json_lines_carry_timestamp_level_logger_event_and_fields():
    """Off a TTY, each event is one JSON object with the standard keys and its fields."""
    stream = io.StringIO()
    configure_logging("info", stream=stream, env={})
    log.info("job_done", repo="/r", span="f", duration_s=1.5)
    (line,) = _lines(stream)
    record = json.loads(line)
    assert list(record)[:4] == ["timestamp", "level", "logger", "event"]
    assert record["level"] == "info"
    assert record["logger"] == "llmc_rag_service.test"
    assert record["event"] == "job_done"
    assert (record["repo"], record["span"], record["duration_s"]) == ("/r", "f", 1.5)
    stamp = datetime.fromisoformat(record["timestamp"])
    assert stamp.utcoffset() == timedelta(0)


def test_level_filters_lower_events():
    """Events below the configured level are not written."""
    stream = io.StringIO()
    configure_logging("warning", fmt="json", stream=stream, env={})
    log.info("hidden")
    log.warning("shown")
    assert [json.loads(x)["event"] for x in _lines(stream)] == ["shown"]


@pytest.mark.parametrize(
    ("method", "priority"),
    [("debug", 7), ("info", 6), ("warning", 4), ("error", 3), ("critical", 2)],
)
def test_journal_lines_start_with_syslog_priority(journal, method, priority):
    """On the journal stream each line starts with its syslog priority, then JSON."""
    stream, env = journal
    configure_logging("debug", stream=stream, env=env)
    getattr(log, method)("probe", n=1)
    (line,) = _lines(stream)
    prefix = f"<{priority}>"
    assert line.startswith(prefix)
    assert json.loads(line[len(prefix) :])["event"] == "probe"


def test_no_priority_prefix_when_journal_stream_names_another_file(journal, tmp_path):
    """A JOURNAL_STREAM for another inode (e.g. inherited by a redirected process)
    adds no prefix."""
    stream, _ = journal
    other = os.stat(tmp_path)
    configure_logging("info", stream=stream, env={"JOURNAL_STREAM": f"{other.st_dev}:{other.st_ino}"})
    log.info("probe")
    (line,) = _lines(stream)
    assert json.loads(line)["event"] == "probe"


def test_exception_is_one_line_at_error_priority(journal):
    """An exception with its traceback is one journal line at <3>, traceback in a field."""
    stream, env = journal
    configure_logging("info", stream=stream, env=env)
    try:
        {}["missing"]
    except KeyError:
        log.exception("job_failed", repo="/r")
    (line,) = _lines(stream)
    assert line.startswith("<3>")
    record = json.loads(line[3:])
    assert record["event"] == "job_failed"
    assert record["exception"].startswith("Traceback (most recent call last):")
    assert "KeyError: 'missing'" in record["exception"]


def test_stdlib_exception_is_one_line_at_error_priority(journal):
    """A stdlib logger's exc_info traceback is also one line at <3>."""
    stream, env = journal
    configure_logging("info", stream=stream, env=env)
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        logging.getLogger("watchdog.observers.inotify").error("add watch failed", exc_info=True)
    (line,) = _lines(stream)
    assert line.startswith("<3>")
    assert "OSError" in json.loads(line[3:])["exception"]


def test_stdlib_loggers_go_through_the_same_renderer():
    """A stdlib logger's record becomes the same JSON shape, %-args applied."""
    stream = io.StringIO()
    configure_logging("info", stream=stream, env={})
    logging.getLogger("watchdog.observers").warning("inotify limit %s", 8192)
    record = json.loads(_lines(stream)[0])
    assert record["logger"] == "watchdog.observers"
    assert record["level"] == "warning"
    assert record["event"] == "inotify limit 8192"
    assert "timestamp" in record


def test_httpx_info_noise_is_held_back_but_warnings_pass():
    """httpx/httpcore info lines are dropped even at debug; their warnings remain."""
    stream = io.StringIO()
    configure_logging("debug", stream=stream, env={})
    logging.getLogger("httpx").info("HTTP Request: POST /api/chat 200")
    logging.getLogger("httpcore.connection").debug("connect_tcp.started")
    logging.getLogger("httpx").warning("retrying")
    assert [json.loads(x)["event"] for x in _lines(stream)] == ["retrying"]


def test_psycopg_pool_connection_warnings_are_held_back():
    """The pool's multi-line warning per failed connection attempt is dropped (the team cache logs the
    outage itself); its errors and psycopg's own warnings remain."""
    stream = io.StringIO()
    configure_logging("debug", stream=stream, env={})
    logging.getLogger("psycopg.pool").warning("error connecting in 'llmc-team': connection failed:\n  refused")
    logging.getLogger("psycopg.pool").error("pool broken")
    logging.getLogger("psycopg").warning("notice")
    assert [json.loads(x)["event"] for x in _lines(stream)] == ["pool broken", "notice"]


def test_non_utf8_path_still_gives_valid_json():
    """A path with a lone surrogate (undecodable bytes) is logged as parsable JSON."""
    stream = io.StringIO()
    configure_logging("info", stream=stream, env={})
    path = os.fsdecode(b"/srv/caf\xe9.py")
    log.info("file_skipped", path=path, reason="undecodable")
    (line,) = _lines(stream)
    line.encode("utf-8")  # raises if the text is not valid UTF-8
    assert json.loads(line)["path"] == path


def test_console_format_on_a_tty_is_not_json():
    """On a pseudo-TTY the auto format is the readable console renderer."""
    master, slave = os.openpty()
    stream = os.fdopen(slave, "w", encoding="utf-8")
    try:
        configure_logging("info", stream=stream, env={})
        log.info("console_probe", key="v")
        stream.flush()
        out = _read_until(master, b"console_probe")
    finally:
        stream.close()
        os.close(master)
    text = out.decode("utf-8", "replace").strip()
    assert "console_probe" in text
    assert "key" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def _read_until(fd: int, needle: bytes, deadline_s: float = 5.0) -> bytes:
    data = b""
    end = time.monotonic() + deadline_s
    while needle not in data and time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        if ready:
            data += os.read(fd, 4096)
    return data


def test_reconfigure_replaces_handler_and_level():
    """A second configure_logging (a reload) changes the level and does not duplicate lines."""
    stream = io.StringIO()
    configure_logging("info", stream=stream, env={})
    log.debug("hidden")
    configure_logging("debug", stream=stream, env={})
    log.debug("shown")
    assert [json.loads(x)["event"] for x in _lines(stream)] == ["shown"]


def test_set_level_applies_to_existing_loggers():
    """set_level changes what an already created logger writes."""
    stream = io.StringIO()
    configure_logging("info", stream=stream, env={})
    log.info("before")
    set_level("error")
    log.warning("dropped")
    log.error("kept")
    assert [json.loads(x)["event"] for x in _lines(stream)] == ["before", "kept"]


def test_unknown_level_or_format_is_refused():
    """An unknown level or format raises ValueError naming the valid choices."""
    with pytest.raises(ValueError, match="debug"):
        configure_logging("loud", stream=io.StringIO(), env={})
    with pytest.raises(ValueError, match="console"):
        configure_logging("info", fmt="xml", stream=io.StringIO(), env={})


def test_uncaught_thread_exception_is_one_line_at_error_priority(journal):
    """An exception escaping a thread is one <3> line naming the thread, traceback inside."""
    import threading

    stream, env = journal
    configure_logging("info", stream=stream, env=env)

    def crash() -> None:
        raise ValueError("thread broke")

    thread = threading.Thread(target=crash, name="crasher")
    thread.start()
    thread.join(5)
    (line,) = _lines(stream)
    assert line.startswith("<3>")
    record = json.loads(line[3:])
    assert record["event"] == "thread_crashed" and record["thread"] == "crasher"
    assert "ValueError: thread broke" in record["exception"]


def test_uncaught_main_exception_hook_logs_one_line_and_reset_restores_python_hooks(journal):
    """sys.excepthook logs one <3> line; reset_logging puts Python's own hooks back."""
    import sys
    import threading

    stream, env = journal
    configure_logging("info", stream=stream, env=env)
    try:
        raise RuntimeError("main broke")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    (line,) = _lines(stream)
    assert line.startswith("<3>") and json.loads(line[3:])["event"] == "unhandled_exception"
    reset_logging()
    assert sys.excepthook is sys.__excepthook__ and threading.excepthook is threading.__excepthook__


def test_the_default_stream_is_whatever_stderr_is_at_each_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configured for stderr, records follow a later swap of ``sys.stderr``: a
    stderr replaced and closed (a test's capture, a dropped pipe) gets nothing
    and raises nothing ("--- Logging error --- I/O operation on closed file")."""
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    configure_logging("info", "json")
    monkeypatch.setattr("sys.stderr", second)
    first.close()
    structlog.get_logger("t").info("after_swap", n=1)
    assert json.loads(second.getvalue())["event"] == "after_swap"
