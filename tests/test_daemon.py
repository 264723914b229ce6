"""The daemon in-process, against a real notify socket and the Ollama emulator:
watchdog health gate, STATUS heartbeat, start-up timeout extension, stop grace,
signals.

In-process so that the daemon's clock can be a
:class:`~llmc_rag_service.testing.clock.ManualClock`: the tests move time
themselves (a 400 s hang limit, a 9.5 s heartbeat) and follow the main loop's
own wake-ups, so they check the exact schedule and wait for nothing. Everything
else is the real code, real sockets, real HTTP.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from llmc_rag_service.service import daemon as daemon_mod
from llmc_rag_service.enrich import ollama as ol
from llmc_rag_service.enrich import workers
from llmc_rag_service.service.daemon import AlreadyRunning, Daemon
from llmc_rag_service.service.notify import Notifier
from llmc_rag_service.enrich.ollama import OllamaClient
from llmc_rag_service.service.status import LOCK_NAME, status_report
from llmc_rag_service.store.faults import StoreCorrupt
from llmc_rag_service.testing.clock import ManualClock
from llmc_rag_service.watch.watchset import WatchSet
from tests.helpers import RunningDaemon as Running
from tests.helpers import chats, make_config, wait_for, write_tree
from llmc_rag_service.testing.emulator import OllamaEmulator


def block_chat(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Make every chat request wait, inside the client, until ``release`` is set
    (an httpx that never times out); ``entered`` is set when one waits."""
    entered, release = threading.Event(), threading.Event()
    original = OllamaClient.chat

    def stuck(self, *args, **kwargs):
        entered.set()
        release.wait(20)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OllamaClient, "chat", stuck)
    return entered, release


def hang_limit_s(client: OllamaClient) -> float:
    """The workers check's limit (WorkerPool.hung): the longest request, a connect allowance per thread, the grace."""
    return client.max_request_s() + (client.concurrency + 1) * ol.CONNECT_TIMEOUT_S + workers.HANG_GRACE_S


@pytest.mark.timeout(30)
def test_a_worker_blocked_forever_stops_the_pings(tmp_path, repo, ollama, notify, monkeypatch):
    """WATCHDOG=1 comes every ping interval while a request is inside its hang limit (deadline + connect allowance + grace); once it is past the limit the pings stop, after one error naming the workers check."""
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    entered, release = block_chat(monkeypatch)
    config = make_config(tmp_path, ollama.url, [repo], ollama={"concurrency": 1})
    clock = ManualClock()
    with capture_logs() as logs:
        running = Running(config, notify, clock)
        try:
            assert entered.wait(10)
            started, every = clock(), running.daemon.ping_every_s
            limit = hang_limit_s(running.daemon.pipeline.client)
            running.settle()
            cadence = [running.step(started + k * every) for k in (1, 2, 3)]
            inside = running.step(started + limit - 0.01)
            assert running.daemon.pipeline.hung() is None
            past = running.step(started + limit + 0.01)
            assert running.daemon.pipeline.hung() is not None
            later = [running.step(clock() + every) for _ in range(3)]
        finally:
            release.set()
            running.stop()
    pings = running.notifier.times("WATCHDOG=1")
    assert pings == [started] + cadence + [inside]  # none past the limit: not at `past`, nor `later`
    assert past > inside and later[0] > past
    errors = [e for e in logs if e["event"] == "watchdog_unhealthy"]
    assert len(errors) == 1 and errors[0]["check"] == "workers" and errors[0]["log_level"] == "error"
    assert "has been running" in errors[0]["reason"]


@pytest.mark.timeout(30)
def test_a_slow_request_inside_its_deadline_keeps_the_pings_going(tmp_path, repo, ollama, notify, monkeypatch):
    """While a request runs for as long as its deadline allows, WATCHDOG=1 comes every ping interval (a little under half of WATCHDOG_USEC); its answer is then stored and the health gate never failed."""
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    entered, release = block_chat(monkeypatch)
    config = make_config(tmp_path, ollama.url, [repo], ollama={"concurrency": 1, "timeout_s": 5, "load_timeout_s": 1})
    clock = ManualClock()
    with capture_logs() as logs:
        running = Running(config, notify, clock)
        try:
            assert entered.wait(10)
            started = clock()
            deadline = started + running.daemon.pipeline.client.max_request_s()
            while clock() < deadline:
                running.step()
            release.set()
            wait_for(lambda: status_report(config)["totals"]["enriched"] == 2, 10, "the slow answer and the next")
        finally:
            release.set()
            running.stop()
    every = running.daemon.ping_every_s
    assert every == pytest.approx(0.8)  # 1 s half-interval minus 20 %
    pings = [t for t in running.notifier.times("WATCHDOG=1") if t <= deadline]
    assert pings[0] == started and pings[-1] > deadline - every
    assert [b - a for a, b in zip(pings, pings[1:])] == pytest.approx([every] * (len(pings) - 1))
    assert not [e for e in logs if e["event"] == "watchdog_unhealthy"]


@pytest.mark.timeout(30)
def test_status_heartbeat_while_busy_and_unchanged(tmp_path, repo, ollama, notify, monkeypatch):
    """While a long request runs and nothing changes, STATUS is sent again exactly every STATUS_MAX_GAP_S (the loop wakes for it, never later) and no more often, and never says idle."""
    entered, release = block_chat(monkeypatch)
    config = make_config(tmp_path, ollama.url, [repo], ollama={"concurrency": 1})
    clock = ManualClock()
    running = Running(config, notify, clock)
    try:
        assert entered.wait(10)
        pipeline = running.daemon.pipeline
        wait_for(lambda: pipeline.activity() is None and pipeline.counts()["pending"] == 1, 10,
                 "the catch-up scan done, one job in flight, one waiting")
        settled = clock()
        while clock() < settled + 2.0:  # the start-up's STATUS changes go out (at most one per STATUS_MIN_GAP_S)
            running.step()
        start = clock()
        while clock() < start + 4 * daemon_mod.STATUS_MAX_GAP_S:
            running.step()
        end = clock()
    finally:
        release.set()
        running.stop()
    status = [(t, m) for t, m in running.notifier.sent if m.startswith("STATUS=") and t <= end]
    window = [t for t, _ in status if t >= start]
    assert len(window) >= 3
    edges = [max(t for t, _ in status if t < start)] + window  # from the last STATUS before the window
    assert [b - a for a, b in zip(edges, edges[1:])] == [daemon_mod.STATUS_MAX_GAP_S] * (len(edges) - 1)
    assert len({m for t, m in status if t >= start}) == 1  # the same text: a heartbeat, not a change
    assert not any(m.startswith("STATUS=idle") for _, m in status), status


@pytest.mark.timeout(30)
def test_status_is_rate_limited_and_ends_on_the_final_state(tmp_path, notify, ollama):
    """Many job outcomes give STATUS messages at most twice a second, and the last one tells the final state."""
    root = tmp_path / "many"
    write_tree(root, {f"m{i}.py": "".join(f"def f{i}_{j}(x):\n    return x + {j}\n\n\n" for j in range(10))
                      for i in range(6)})
    config = make_config(tmp_path, ollama.url, [root])
    running = Running(config, notify, ManualClock())
    try:
        final = "STATUS=idle: 0 pending, 0 in flight, 60 done"
        running.step_until(lambda: any(m.startswith(final) for m in running.notifier.messages()), "the final STATUS")
    finally:
        running.stop()
    stamps = running.notifier.times("STATUS=")  # clock seconds
    assert len(stamps) >= 2
    assert min(b - a for a, b in zip(stamps, stamps[1:])) >= daemon_mod.STATUS_MIN_GAP_S
    assert [m for m in running.notifier.messages() if m.startswith("STATUS=")][-1].startswith(final)


def asked(ollama, text: str) -> bool:
    """Whether the prompt of a chat request the emulator received holds ``text``."""
    return any(text in r.json["messages"][-1]["content"] for r in chats(ollama))


@contextlib.contextmanager
def running_logged(config, notify) -> Iterator[tuple[Running, list]]:
    """A daemon on a manual clock, its logs captured, stopped on exit."""
    with capture_logs() as logs:
        running = Running(config, notify, ManualClock())
        try:
            yield running, logs
        finally:
            running.stop()


@pytest.mark.timeout(30)
def test_a_deleted_repo_degrades_and_comes_back(tmp_path, repo, ollama, notify, monkeypatch):
    """Deleting one watched repo keeps the daemon running (STATUS says so, one error, no watchdog failure); other repos still work; the repo is picked up again when it reappears."""
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    other = tmp_path / "other"
    write_tree(other, {"o.py": "def o():\n    return 0\n"})
    config = make_config(tmp_path, ollama.url, [repo, other])
    with running_logged(config, notify) as (running, logs):
        wait_for(lambda: status_report(config)["totals"]["enriched"] == 3, 10, "both repos enriched")
        shutil.rmtree(repo)
        running.step_until(lambda: any("degraded: repo missing" in m for m in running.notifier.messages()),
                           "STATUS saying so")
        (other / "o.py").write_text("def o():\n    return 1\n")
        running.step_until(lambda: asked(ollama, "return 1"), "the other repo still watched")
        write_tree(repo, {"src/a.py": "def f(x):\n    return x * 3\n"})
        running.step_until(lambda: asked(ollama, "x * 3"), "the repo picked up again")
        assert running.thread.is_alive()
    events = [e["event"] for e in logs]
    # one error: the root moved away (watch identity) or, if seen only on a restart, unwatchable
    assert events.count("repo_moved") + events.count("repo_unwatchable") == 1 and events.count("repo_back") == 1
    assert "watchdog_unhealthy" not in events


@pytest.mark.timeout(30)
def test_a_repo_missing_at_start_is_said_once_and_scanned_when_it_appears(tmp_path, repo, ollama, notify):
    """A configured repo with no directory at start: one error (repo_unwatchable, no second repo_missing
    from a catch-up scan of nothing); once the directory appears it is watched and scanned."""
    later = tmp_path / "later"
    config = make_config(tmp_path, ollama.url, [repo, later])
    with running_logged(config, notify) as (running, logs):
        wait_for(lambda: status_report(config)["totals"]["enriched"] == 2, 10, "the present repo enriched")
        write_tree(later, {"l.py": "def late():\n    return 'here'\n"})
        running.step_until(lambda: asked(ollama, "return 'here'"), "the repo scanned once it appeared")
    errors = [e["event"] for e in logs if e["log_level"] == "error"]
    assert errors == ["repo_unwatchable"]
    assert [e["event"] for e in logs].count("repo_back") == 1


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


HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@pytest.fixture
def own_handlers():
    """A handler of the test's own for each signal the daemon handles; the originals are put back after."""
    original = {signum: signal.getsignal(signum) for signum in HANDLED}
    mine = {signum: (lambda signum, frame: None) for signum in HANDLED}
    for signum, handler in mine.items():
        signal.signal(signum, handler)
    yield mine
    for signum, handler in original.items():
        signal.signal(signum, handler)


@pytest.mark.timeout(30)
def test_run_in_process_reloads_and_stops_on_signals_and_restores_the_handlers(tmp_path, repo, ollama, notify,
                                                                                own_handlers):
    """Daemon.run() in the test's own process: SIGHUP reloads (RELOADING=1, then READY=1), SIGTERM stops it cleanly (STOPPING=1, store closed, jobs done), and the handlers in force before are back once it returns."""
    config = make_config(tmp_path, ollama.url, [repo])
    daemon = Daemon(config.source, config, Notifier(notify.path))
    failed: list[BaseException] = []

    def drive() -> None:  # signals go to the main thread, which runs the daemon
        try:
            notify.wait("READY=1")
            wait_for(lambda: status_report(config)["totals"]["enriched"] == 2, 10, "the catch-up enriched")
            assert {signum: signal.getsignal(signum) for signum in HANDLED} != own_handlers
            os.kill(os.getpid(), signal.SIGHUP)
            wait_for(lambda: notify.drain().count("READY=1") == 2, 10, "READY=1 after the reload")
            os.kill(os.getpid(), signal.SIGTERM)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
            failed.append(exc)
            daemon.stop_requested = True
            daemon.wake.set()

    driver = threading.Thread(target=drive, name="test-driver")
    driver.start()
    try:
        daemon.run()
    finally:
        driver.join(10)
    if failed:
        raise failed[0]
    assert {signum: signal.getsignal(signum) for signum in HANDLED} == own_handlers
    messages = notify.drain()
    reloading = [i for i, m in enumerate(messages) if m.startswith("RELOADING=1\nMONOTONIC_USEC=")]
    assert len(reloading) == 1 and messages[reloading[0] + 1:].count("READY=1") == 1
    assert messages[-1] == "STOPPING=1"
    assert status_report(config)["daemon"]["running"] is False


_HANDLER_PROBE = """
import os, signal, sys
from pathlib import Path
from llmc_rag_service.config import load_config
from llmc_rag_service.service.daemon import Daemon
config_path = Path(sys.argv[1])
daemon = Daemon(config_path, load_config(config_path))
previous = daemon.install_signals()
# The main loop's wake.wait()/wake.clear() hold wake's lock for a few bytecodes; a handler
# runs between two bytecodes of the main thread, so it may run right there.
with daemon.wake._cond:
    os.kill(os.getpid(), signal.SIG{name})
    sum(range(10))  # any bytecode: the handler runs here
print("handler returned", flush=True)
assert daemon.wake.wait(10), "the waker thread set the event"
daemon.restore_signals(previous)
print("woken", daemon.stop_requested or daemon.reload_requested, flush=True)
"""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["TERM", "HUP"])
def test_a_signal_that_lands_while_the_main_thread_holds_the_wake_lock_is_handled(tmp_path, repo, name):
    """A signal handled while the main thread is inside wake.wait()/clear() (holding the event's lock):
    the handler returns at once (it only sets a flag; it used to call wake.set() and wait forever on a
    lock its own thread held: the main loop hung, SIGTERM stopped nothing), and the waker thread wakes
    the loop as soon as the lock is free (breakstop's reproduction; the likely CI hang)."""
    config = make_config(tmp_path, "http://127.0.0.1:9", [repo])
    proc = subprocess.run([sys.executable, "-c", _HANDLER_PROBE.replace("{name}", name), str(config.source)],
                          capture_output=True, text=True, timeout=20)
    assert proc.stdout.splitlines() == ["handler returned", "woken True"], proc.stderr


def test_run_restores_the_handlers_when_start_up_fails(tmp_path, repo, ollama, own_handlers):
    """A run() that cannot start (another serve holds the state directory) raises AlreadyRunning with the holder's pid, and leaves the handlers as they were."""
    config = make_config(tmp_path, ollama.url, [repo])
    config.state_dir.mkdir(parents=True)
    with open(config.state_dir / LOCK_NAME, "w") as held:
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(AlreadyRunning) as raised:
            Daemon(config.source, config).run()
    assert raised.value.pid == 4242
    assert {signum: signal.getsignal(signum) for signum in HANDLED} == own_handlers


@pytest.mark.timeout(30)
def test_stop_lets_an_in_flight_job_finish_within_the_grace(tmp_path, repo, ollama, notify, monkeypatch, own_handlers):
    """SIGTERM while two requests run: STOPPING=1 goes out, the answers that come within the grace are still stored, nothing is returned to pending, and run() returns normally (serve exits 0)."""
    entered, release = block_chat(monkeypatch)
    config = make_config(tmp_path, ollama.url, [repo], ollama={"concurrency": 2})
    daemon = Daemon(config.source, config, Notifier(notify.path))
    failed: list[BaseException] = []

    def drive() -> None:
        try:
            wait_for(lambda: getattr(daemon, "pipeline", None) and daemon.pipeline.pool.in_flight == 2, 10,
                     "two requests in flight")
            os.kill(os.getpid(), signal.SIGTERM)
            notify.wait("STOPPING=1", 10)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
            failed.append(exc)
            daemon.stop_requested = True
            daemon.wake.set()
        finally:
            release.set()  # the answers come only now, inside the grace

    driver = threading.Thread(target=drive, name="test-driver")
    driver.start()
    try:
        with capture_logs() as logs:
            daemon.run()
    finally:
        release.set()
        driver.join(10)
    if failed:
        raise failed[0]
    stopped = [e for e in logs if e["event"] == "daemon_stopped"]
    assert stopped and stopped[0]["returned_to_pending"] == 0
    assert [e["in_flight"] for e in logs if e["event"] == "daemon_stopping"] == [2]
    assert status_report(config)["totals"]["enriched"] == 2


@pytest.mark.timeout(30)
def test_a_slow_status_is_recomputed_at_most_every_ten_times_its_cost(tmp_path, repo, ollama, notify):
    """While something changes all the time (a backfill's job outcomes), a STATUS text whose counts took
    0.4 s is recomputed at most every 4 s, so the loop that hands saves to the indexer stays free."""
    clock = ManualClock()
    running = Running(make_config(tmp_path, ollama.url, [repo]), notify, clock)
    computed: list[float] = []
    try:
        pipeline = running.daemon.pipeline
        running.step_until(lambda: pipeline.activity() is None, "the catch-up scan done")
        real = pipeline.status_line

        def slow_status_line(activity=None):
            computed.append(clock())
            clock.advance(0.4)  # the counts of a store of a million jobs
            return real(activity)

        pipeline.status_line = slow_status_line
        start = clock()
        while clock() < start + 20.0:
            running.daemon._mark_dirty()  # a job outcome, as the workers report one
            running.settle()  # asleep on the clock again: it has a deadline to read
            running.step(min(clock.deadline_of(running.thread), clock() + 0.25))
    finally:
        running.stop()
    gaps = [b - a for a, b in zip(computed, computed[1:])]
    assert len(computed) >= 3 and min(gaps) >= 4.0 - 1e-6  # ten times 0.4 s


@pytest.mark.timeout(60)
def test_run_again_in_the_same_process_after_a_failed_start(tmp_path, repo, ollama, notify, own_handlers):
    """Daemon.run() whose start-up fails (a damaged store) raises StoreCorrupt and leaves nothing held;
    once the store is gone, a second Daemon.run() in the same process starts and stops cleanly (it used
    to raise AlreadyRunning naming its own pid: the failed start kept the state dir's lock; break2)."""
    config = make_config(tmp_path, ollama.url, [repo])
    config.state_dir.mkdir(parents=True)
    config.db_path.write_bytes(b"not a store " * 400)
    with pytest.raises(StoreCorrupt):
        Daemon(config.source, config, Notifier(notify.path)).run()
    config.db_path.unlink()
    ended = threading.Event()

    def drive() -> None:
        wait_for(lambda: ended.is_set() or "READY=1" in notify.drain(), 20, "READY=1")
        if not ended.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    driver = threading.Thread(target=drive, name="test-driver")
    driver.start()
    try:
        assert Daemon(config.source, config, Notifier(notify.path)).run() is None
    finally:
        ended.set()
        driver.join(25)
