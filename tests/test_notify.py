"""sd_notify client and watchdog health gate, tested against real datagram sockets."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from llmc_rag_service.service.notify import (
    HealthGate,
    Notifier,
    child_env,
    clean_status,
    watchdog_interval_s,
)


def _bind(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket standing in for systemd's notify socket."""
    path = str(tmp_path / "notify.sock")
    sock = _bind(path)
    yield path, sock
    sock.close()


def test_ready_arrives_as_exact_bytes(server):
    """ready() sends exactly b"READY=1" to the socket path."""
    path, sock = server
    with closing(Notifier(socket_path=path)) as notifier:
        assert notifier.ready() is True
    assert sock.recv(4096) == b"READY=1"


def test_socket_path_defaults_to_notify_socket_env(server):
    """Without socket_path, the NOTIFY_SOCKET of env is used."""
    path, sock = server
    with closing(Notifier(env={"NOTIFY_SOCKET": path})) as notifier:
        assert notifier.enabled
        assert notifier.stopping() is True
    assert sock.recv(4096) == b"STOPPING=1"


def test_socket_path_defaults_to_process_environment(server, monkeypatch):
    """Without socket_path or env, os.environ's NOTIFY_SOCKET is used."""
    path, sock = server
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with closing(Notifier()) as notifier:
        assert notifier.watchdog() is True
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_several_lines_are_one_datagram(server):
    """send() joins its lines with newlines into one datagram."""
    path, sock = server
    with closing(Notifier(socket_path=path)) as notifier:
        assert notifier.send("READY=1", "STATUS=up") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_non_ascii_status_arrives_intact_as_utf8(server):
    """A STATUS with a non-Latin-1 repo path arrives as its exact UTF-8 bytes."""
    path, sock = server
    text = "scanning /home/jörg/项目 ✓"
    with closing(Notifier(socket_path=path)) as notifier:
        assert notifier.status(text) is True
    assert sock.recv(4096) == ("STATUS=" + text).encode("utf-8")


def test_non_utf8_path_in_status_becomes_valid_utf8(server):
    """A path decoded with surrogateescape still gives a valid UTF-8 STATUS."""
    path, sock = server
    repo = os.fsdecode(b"/srv/caf\xe9")
    with closing(Notifier(socket_path=path)) as notifier:
        assert notifier.status(f"scanning {repo}") is True
    assert sock.recv(4096).decode("utf-8") == "STATUS=scanning /srv/caf\ufffd"


def test_reloading_sends_monotonic_usec_in_same_datagram(server):
    """reloading() sends RELOADING=1 and MONOTONIC_USEC= (CLOCK_MONOTONIC, us) together."""
    path, sock = server
    before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    with closing(Notifier(socket_path=path)) as notifier:
        assert notifier.reloading() is True
    after_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = sock.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before_us <= int(value) <= after_us


def test_extend_timeout_sends_microseconds(server):
    """extend_timeout(usec) sends EXTEND_TIMEOUT_USEC=<usec>."""
    path, sock = server
    with closing(Notifier(socket_path=path)) as notifier:
        assert notifier.extend_timeout(30_000_000) is True
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=30000000"


def test_abstract_socket_receives_message():
    """A NOTIFY_SOCKET starting with '@' reaches the abstract-namespace socket."""
    name = f"llmc-rag-test-{uuid.uuid4().hex}"
    sock = _bind("\0" + name)
    try:
        with closing(Notifier(env={"NOTIFY_SOCKET": "@" + name})) as notifier:
            assert notifier.ready() is True
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_no_socket_means_disabled_and_silent():
    """Without NOTIFY_SOCKET the notifier is disabled: sends return False, log nothing."""
    notifier = Notifier(env={})
    with capture_logs() as logs:
        assert notifier.enabled is False
        assert notifier.ready() is False
        assert notifier.status("x") is False
    assert logs == []


def test_failed_send_is_logged_once_until_a_success(tmp_path):
    """A dead socket path fails every send, logged once; a success resets the log."""
    path = str(tmp_path / "gone.sock")
    with closing(Notifier(socket_path=path)) as notifier:
        with capture_logs() as logs:
            assert notifier.ready() is False
            assert notifier.watchdog() is False
        assert [(e["event"], e["log_level"]) for e in logs] == [("notify_failed", "warning")]
        assert logs[0]["keys"] == ["READY"]
        sock = _bind(path)
        with capture_logs() as logs:
            assert notifier.watchdog() is True
        assert [e["event"] for e in logs] == ["notify_recovered"]
        sock.close()
        os.unlink(path)
        with capture_logs() as logs:
            assert notifier.watchdog() is False
            assert notifier.watchdog() is False
        assert [e["event"] for e in logs] == ["notify_failed"]


def test_clean_status_makes_one_line():
    """Newlines and control characters become spaces; the text is stripped."""
    assert clean_status("a\nb\tc\x00d\x7fe\u2028f\r\n") == "a b c d e f"


def test_clean_status_clips_with_ascii_marker():
    """A long text is clipped to max_chars, ending with an ASCII '...'."""
    out = clean_status("é" * 300, max_chars=20)
    assert len(out) == 20
    assert out == "é" * 17 + "..."
    assert clean_status("short", max_chars=20) == "short"


def test_clean_status_rejects_tiny_limit():
    """A max_chars too small to hold the clip marker is refused."""
    with pytest.raises(ValueError):
        clean_status("abc", max_chars=3)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_if_ours(env, expected):
    """The ping interval is half of WATCHDOG_USEC in seconds, None if unset, invalid
    or meant for another PID."""
    assert watchdog_interval_s(env) == expected


def test_child_env_drops_notify_and_watchdog_variables():
    """Subprocess environments lose NOTIFY_SOCKET and WATCHDOG_*, keep the rest."""
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "PATH": "/bin"}
    assert child_env(env) == {"PATH": "/bin"}
    assert "NOTIFY_SOCKET" in env  # the input is not modified


def test_child_env_defaults_to_process_environment(monkeypatch):
    """child_env() without arguments copies os.environ minus the systemd variables."""
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/x")
    monkeypatch.setenv("LLMC_TEST_KEEP", "1")
    env = child_env()
    assert "NOTIFY_SOCKET" not in env
    assert env["LLMC_TEST_KEEP"] == "1"


def test_health_gate_logs_one_error_on_failure_and_info_on_recovery():
    """Pings stop while a check fails: one error on the way down, one info on recovery."""
    state = {"store": None}
    gate = HealthGate()
    gate.add_check("main_loop", lambda: None)
    gate.add_check("store", lambda: state["store"])
    with capture_logs() as logs:
        assert gate.should_ping() is True
        state["store"] = "database is locked"
        assert gate.should_ping() is False
        assert gate.should_ping() is False
        state["store"] = None
        assert gate.should_ping() is True
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("watchdog_unhealthy", "error"),
        ("watchdog_healthy", "info"),
    ]
    assert logs[0]["check"] == "store"
    assert logs[0]["reason"] == "database is locked"


def test_health_gate_counts_a_raising_check_as_failing():
    """A check that raises fails with its exception text instead of escaping."""

    def broken() -> str | None:
        raise RuntimeError("watcher thread gone")

    gate = HealthGate()
    gate.add_check("watchers", broken)
    gate.add_check("ok", lambda: None)
    assert gate.failures() == [("watchers", "RuntimeError: watcher thread gone")]
    with capture_logs() as logs:
        assert gate.should_ping() is False
    assert logs[0]["check"] == "watchers"


def test_health_gate_without_checks_pings():
    """An empty gate is healthy."""
    assert HealthGate().should_ping() is True


def test_timeout_extender_sends_extensions_until_the_step_ends(server):
    """Inside the context, EXTEND_TIMEOUT_USEC arrives every every_s; after it, none."""
    from llmc_rag_service.service.notify import TimeoutExtender

    path, sock = server
    with closing(Notifier(socket_path=path)) as notifier, \
            TimeoutExtender(notifier, every_s=0.05, extend_s=2.0) as extender:
        assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=2000000"
        assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=2000000"
    sent = extender.sent
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        while True:  # drain what was sent before the exit; nothing may follow
            sock.recv(4096)
            sent -= 1
    assert sent == 2  # every message sent arrived, and none after the exit


def test_timeout_extender_refuses_an_extension_shorter_than_its_period():
    """every_s must be below extend_s, or systemd could time out between two messages."""
    from llmc_rag_service.service.notify import TimeoutExtender

    with pytest.raises(ValueError):
        TimeoutExtender(Notifier(socket_path=None), every_s=5.0, extend_s=5.0)


def test_unset_notify_environment_removes_only_the_notify_variables():
    """NOTIFY_SOCKET and WATCHDOG_* go, everything else stays."""
    from llmc_rag_service.service.notify import unset_notify_environment

    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "PATH": "/bin"}
    unset_notify_environment(env)
    assert env == {"PATH": "/bin"}


@pytest.mark.parametrize(("half_s", "every_s"), [(30.0, 29.0), (1.0, 0.8), (0.5, 0.4)])
def test_pings_come_a_little_before_half_the_interval(half_s, every_s):
    """The ping period is half the interval less 20 % (at most 1 s)."""
    from llmc_rag_service.service.notify import ping_every_s

    assert ping_every_s(half_s) == pytest.approx(every_s)
