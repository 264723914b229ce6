"""The daemon in-process, against a real notify socket and the Ollama emulator:
watchdog health gate, STATUS heartbeat, start-up timeout extension, stop grace.

In-process so that a few constants (hang grace, heartbeat, stop grace) can be
shortened; everything else is the real code, real sockets, real HTTP.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from structlog.testing import capture_logs

from llmc_rag_service.service import daemon as daemon_mod
from llmc_rag_service.enrich import ollama as ol
from llmc_rag_service.enrich import workers
from llmc_rag_service.service.daemon import Daemon
from llmc_rag_service.service.notify import Notifier
from llmc_rag_service.enrich.ollama import OllamaClient
from llmc_rag_service.service.status import status_report
from llmc_rag_service.watch.watchset import WatchSet
from tests.helpers import NotifySocket, make_config, wait_for
from tests.helpers import RunningDaemon as Running
from llmc_rag_service.testing.emulator import OllamaEmulator


def times_of(notify: NotifySocket, message: str) -> list[float]:
    return [t for t, m in list(notify.messages) if m == message]


@pytest.mark.timeout(30)
def test_a_worker_blocked_forever_stops_the_pings(tmp_path, repo, ollama, notify, monkeypatch):
    """A request stuck past its deadline plus grace ends WATCHDOG=1 (pings go on until then), after one error naming the workers check."""
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    # Shrink the hang limit (request deadline + connect allowance + grace) to about 2 s.
    monkeypatch.setattr(OllamaClient, "max_request_s", lambda self: 0.5)
    monkeypatch.setattr(ol, "CONNECT_TIMEOUT_S", 0.1)
    monkeypatch.setattr(workers, "HANG_GRACE_S", 1.3)
    monkeypatch.setattr(daemon_mod, "STOP_GRACE_S", 0.2)
    entered, release = threading.Event(), threading.Event()
    original = OllamaClient.chat

    def stuck(self, *args, **kwargs):  # an httpx that never times out
        entered.set()
        release.wait(20)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OllamaClient, "chat", stuck)
    config = make_config(tmp_path, ollama.url, [repo], ollama={"concurrency": 1})
    with capture_logs() as logs:
        running = Running(config, notify)
        try:
            assert entered.wait(10)
            hung_at = time.monotonic()
            wait_for(lambda: running.daemon.pipeline.hung(), 10, "the hang limit")
            limit_at = time.monotonic()
            wait_for(lambda: any(e["event"] == "watchdog_unhealthy" for e in logs), 5, "watchdog_unhealthy")
            quiet_until = time.monotonic() + 1.5  # longer than WATCHDOG_USEC: systemd would have fired
            wait_for(lambda: time.monotonic() > quiet_until, 5, "1.5 s more")
        finally:
            release.set()
            running.stop()
    pings = times_of(notify, "WATCHDOG=1")
    assert sum(hung_at < t < limit_at - 0.5 for t in pings) >= 2  # a job inside its limit is no hang
    assert pings[-1] <= limit_at + running.daemon.ping_every_s + 0.1
    errors = [e for e in logs if e["event"] == "watchdog_unhealthy"]
    assert len(errors) == 1 and errors[0]["check"] == "workers" and errors[0]["log_level"] == "error"


@pytest.mark.timeout(30)
def test_status_heartbeat_while_busy_and_unchanged(tmp_path, repo, notify, monkeypatch):
    """While a long request runs and nothing changes, STATUS still arrives at least every STATUS_MAX_GAP_S (plus one tick)."""
    monkeypatch.setattr(daemon_mod, "STATUS_MAX_GAP_S", 1.0)
    monkeypatch.setattr(daemon_mod, "STOP_GRACE_S", 0.2)
    with OllamaEmulator(latency_s=4.0) as slow:
        config = make_config(tmp_path, slow.url, [repo], ollama={"concurrency": 1})
        running = Running(config, notify)
        try:
            wait_for(lambda: slow.count("/api/chat") >= 1, 10, "a request in flight")
            start = time.monotonic()
            wait_for(lambda: time.monotonic() > start + 3.0, 10, "3 s of a busy daemon")
        finally:
            running.stop()
    status = [(t, m) for t, m in notify.messages if m.startswith("STATUS=") and start <= t <= start + 3.0]
    assert len(status) >= 2
    assert not any(m.startswith("STATUS=idle") for _, m in status), status
    edges = [start] + [t for t, _ in status] + [start + 3.0]
    assert max(b - a for a, b in zip(edges, edges[1:])) <= 1.0 + daemon_mod.TICK_S + 0.3


@pytest.mark.timeout(30)
def test_a_long_start_extends_the_timeout_and_is_ready_only_after_the_watches(tmp_path, repo, ollama, notify, monkeypatch):
    """While adding watches takes long, EXTEND_TIMEOUT_USEC arrives repeatedly; READY=1 comes only after the watches are in place."""
    monkeypatch.setattr(daemon_mod, "EXTEND_EVERY_S", 0.05)
    monkeypatch.setattr(daemon_mod, "EXTEND_BY_S", 1.0)
    release, watched = threading.Event(), threading.Event()
    original = WatchSet.start

    def slow_start(self, *args, **kwargs):  # a repo with very many directories
        release.wait(20)
        original(self, *args, **kwargs)
        watched.set()

    monkeypatch.setattr(WatchSet, "start", slow_start)
    config = make_config(tmp_path, ollama.url, [repo])
    daemon = Daemon(config.source, config, Notifier(notify.path))
    starter = threading.Thread(target=daemon.startup)
    starter.start()
    try:
        wait_for(lambda: sum(m == "EXTEND_TIMEOUT_USEC=1000000" for m in notify.drain()) >= 3, 10, "3 extensions")
        assert "READY=1" not in notify.drain()
        release.set()
        notify.wait("READY=1")
        assert watched.is_set()
    finally:
        release.set()
        starter.join(10)
        daemon.shutdown()


@pytest.mark.timeout(30)
def test_stop_returns_jobs_still_running_after_the_grace_to_pending(tmp_path, repo, notify, monkeypatch):
    """A stop with requests still running past the grace ends anyway, with those jobs pending again and the store closed."""
    monkeypatch.setattr(daemon_mod, "STOP_GRACE_S", 0.3)
    with OllamaEmulator(latency_s=30.0) as slow:
        config = make_config(tmp_path, slow.url, [repo])
        running = Running(config, notify)
        wait_for(lambda: running.daemon.pipeline.pool.in_flight == 2, 10, "two requests in flight")
        with capture_logs() as logs:
            running.stop()
    stopped = [e for e in logs if e["event"] == "daemon_stopped"]
    assert stopped and stopped[0]["returned_to_pending"] == 2
    assert "STOPPING=1" in notify.drain()
    totals = status_report(config)["totals"]
    assert totals["pending"] == 2 and totals["enriched"] == 0


def test_notify_and_watchdog_variables_are_not_inherited(tmp_path, ollama, monkeypatch):
    """The daemon reads NOTIFY_SOCKET and WATCHDOG_USEC/PID, then removes them so child processes cannot speak for it."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nowhere.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    config = make_config(tmp_path, ollama.url, [tmp_path])
    daemon = Daemon(config.source, config)
    assert daemon.notifier.socket_path == str(tmp_path / "nowhere.sock")
    assert daemon.ping_every_s == pytest.approx(4.0)
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)
