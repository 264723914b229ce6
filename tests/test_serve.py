"""``llmc-rag serve`` as a real process: sd_notify on a real datagram socket, saves, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml

from llmc_rag_service.service.status import show_report, status_report
from tests.helpers import chats, make_config, wait_for, write_tree


@pytest.mark.timeout(60)
def test_serve_ready_catch_up_save_and_clean_stop(tmp_path, repo, ollama, notify, serve_factory):
    """READY after start, catch-up enriches the repo, one save re-enriches the one changed span, SIGTERM stops with STOPPING=1 and exit 0."""
    config = make_config(tmp_path, ollama.url, [repo])
    serve = serve_factory(config, notify)
    notify.wait("READY=1")
    wait_for(lambda: status_report(config)["totals"]["enriched"] == 2, what="catch-up enrichment")
    assert status_report(config)["daemon"]["running"] is True
    (repo / "src" / "a.py").write_text("def f(x):\n    return x + 1\n\n\ndef g(y):\n    return y\n")
    wait_for(lambda: len(chats(ollama)) == 3, what="the save's job")
    wait_for(lambda: all(s["state"] == "enriched" for s in show_report(config, str(repo / "src" / "a.py"))))
    assert "return x + 1" in chats(ollama)[-1].json["messages"][-1]["content"]
    notify.wait("ollama ok")
    assert serve.stop() == 0
    assert "STOPPING=1" in notify.drain()
    assert status_report(config)["daemon"]["running"] is False
    assert len(chats(ollama)) == 3
    assert '"level": "error"' not in serve.logs()


@pytest.mark.timeout(30)
def test_bad_config_exits_78_and_never_sends_ready(tmp_path, notify):
    """serve on a config with a wrong type exits 78 and sends no READY."""
    path = tmp_path / "bad.yaml"
    path.write_text("watch:\n  debounce_ms: soon\n")
    proc = subprocess.run([sys.executable, "-m", "llmc_rag_service", "serve", "-c", str(path)],
                          env={**os.environ, "NOTIFY_SOCKET": notify.path}, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 78
    assert "watch.debounce_ms" in proc.stderr
    assert notify.drain() == []


@pytest.mark.timeout(60)
def test_watchdog_pings_at_half_the_interval(tmp_path, repo, ollama, notify, serve_factory):
    """With WATCHDOG_USEC set, WATCHDOG=1 arrives repeatedly at about half the interval."""
    config = make_config(tmp_path, ollama.url, [repo])
    serve = serve_factory(config, notify, env={"WATCHDOG_USEC": "1000000"})
    notify.wait("READY=1")
    wait_for(lambda: sum(m == "WATCHDOG=1" for m in notify.drain()) >= 4, what="4 watchdog pings")
    times = [t for t, m in notify.messages if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) < 1.0  # always inside the 1 s watchdog interval
    assert serve.stop() == 0


@pytest.mark.timeout(60)
def test_reload_adds_a_repo_and_survives_a_broken_config(tmp_path, repo, ollama, notify, serve_factory):
    """SIGHUP sends RELOADING=1 with MONOTONIC_USEC and READY=1; a new repo is watched; a broken config is refused and the daemon keeps running."""
    config = make_config(tmp_path, ollama.url, [repo])
    serve = serve_factory(config, notify)
    notify.wait("READY=1")
    second = tmp_path / "second"
    write_tree(second, {"b.py": "def b():\n    return 2\n"})
    data = yaml.safe_load(config.source.read_text())
    data["repos"].append({"path": str(second)})
    config.source.write_text(yaml.safe_dump(data))
    serve.proc.send_signal(signal.SIGHUP)
    reloading = notify.wait("RELOADING=1")
    assert "MONOTONIC_USEC=" in reloading
    wait_for(lambda: any("b.py" in r.json["messages"][-1]["content"] for r in chats(ollama)), what="new repo enriched")
    config.source.write_text("ollama: [broken\n")
    serve.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload_failed" in serve.logs(), what="reload_failed log")
    assert serve.proc.poll() is None
    (second / "b.py").write_text("def b():\n    return 3\n")
    wait_for(lambda: any("return 3" in r.json["messages"][-1]["content"] for r in chats(ollama)),
             what="old config still in force")
    assert serve.stop() == 0


@pytest.mark.timeout(90)
def test_kill_9_loses_nothing(tmp_path, repo, notify, serve_factory):
    """A daemon killed with SIGKILL mid-request leaves its jobs to the next start, which finishes them."""
    from llmc_rag_service.testing.emulator import OllamaEmulator

    with OllamaEmulator(latency_s=30.0) as slow:
        config = make_config(tmp_path, slow.url, [repo])
        serve = serve_factory(config, notify)
        notify.wait("READY=1")
        wait_for(lambda: len(chats(slow)) >= 1, what="a request in flight")
        serve.stop(signal.SIGKILL)
    with OllamaEmulator() as fast:
        config = make_config(tmp_path, fast.url, [repo])
        serve = serve_factory(config, notify)
        wait_for(lambda: status_report(config)["totals"]["enriched"] == 2, what="recovered jobs done")
        assert "jobs_recovered" in serve.logs()
        assert serve.stop() == 0


@pytest.mark.timeout(60)
def test_second_serve_on_the_same_state_refuses(tmp_path, repo, ollama, notify, serve_factory):
    """A second serve on the same state directory exits non-zero instead of sharing it."""
    config = make_config(tmp_path, ollama.url, [repo])
    first = serve_factory(config, notify)
    notify.wait("READY=1")
    second = serve_factory(config)
    assert second.proc.wait(30) == 70
    assert "already_running" in second.logs()
    assert first.stop() == 0


#: Files of the "large" catch-up scan: far more than a serve indexes between READY and the test's SIGTERM
#: (a few), so every stop lands mid-scan (asserted: no scan_done).
LARGE_SCAN_FILES = 1000


@pytest.mark.timeout(90)
def test_sigterm_during_a_large_catch_up_scan_exits_cleanly(tmp_path, ollama, notify, serve_factory):
    """SIGTERM while the catch-up scan of 1,000 files runs: STOPPING=1 and exit 0 (no crash), three times over."""
    root = tmp_path / "big"
    write_tree(root, {f"pkg{i // 100}/m{i}.py": f"def f{i}():\n    return {i}\n" for i in range(LARGE_SCAN_FILES)})
    config = make_config(tmp_path, ollama.url, [root])
    for _ in range(3):
        notify.messages.clear()  # each round waits for its own process's READY
        serve = serve_factory(config, notify)
        notify.wait("READY=1")
        assert serve.stop() == 0
        assert "STOPPING=1" in notify.drain()
        assert "daemon_stopped" in serve.logs()
    assert "Traceback" not in serve.logs()
    assert '"scan_done"' not in serve.logs()  # each SIGTERM came while the catch-up scan ran


def open_files(fd_dir: str) -> list[str]:
    """What each open file descriptor of a process refers to (``/proc/PID/fd`` link targets), sorted."""
    targets = []
    for fd in os.listdir(fd_dir):
        try:
            targets.append(os.readlink(os.path.join(fd_dir, fd)))
        except OSError:  # closed meanwhile
            pass
    return sorted(targets)


#: SQLite database descriptors a daemon may hold parked after reloads: one per thread of a
#: pool pair that had a connection (workers, live slots, result writers of both lanes).
PARKED_MAX = 10


@pytest.mark.timeout(90)
def test_reloads_do_not_leak_file_descriptors(tmp_path, repo, ollama, notify, serve_factory):
    """Twenty reloads that rebuild the worker pool leave the daemon's open file count where it was."""
    config = make_config(tmp_path, ollama.url, [repo])
    serve = serve_factory(config, notify)
    notify.wait("READY=1")
    wait_for(lambda: status_report(config)["totals"]["enriched"] == 2, what="catch-up")
    fd_dir = f"/proc/{serve.proc.pid}/fd"

    def reload_with(concurrency: int) -> None:
        data = yaml.safe_load(config.source.read_text())
        data["ollama"]["concurrency"] = concurrency
        config.source.write_text(yaml.safe_dump(data))
        notify.messages.clear()
        serve.proc.send_signal(signal.SIGHUP)
        notify.wait("READY=1")

    for concurrency in (3, 2, 3, 2):  # warm up: first reloads may open lasting files
        reload_with(concurrency)
    before = open_files(fd_dir)
    for i in range(20):  # ends on 2 workers, as before: each thread's store connection is open while it lives
        reload_with(2 if i % 2 else 3)
    db = str(config.db_path)

    def back() -> bool:
        """Every file back but SQLite's parked database descriptors: a closed connection's
        descriptor of the database file stays open while other connections of the process
        hold locks on it, and the next connection opened reuses it (os_unix.c, unixClose and
        findReusableFd), so their number follows how many threads had a connection at once,
        at most PARKED_MAX, never the number of reloads. Each open connection also holds its
        own WAL descriptor, closed with it: a leaked connection shows there."""
        now = open_files(fd_dir)
        others = [f for f in now if f != db]
        return (len(others) <= len([f for f in before if f != db]) + 2
                and now.count(db) <= before.count(db) + PARKED_MAX)

    # A leak never gives them back (20 reloads, each retiring 4 or more connections);
    # retired pools close theirs once their threads end, which on a loaded machine
    # (parallel workers) has taken more than 20 s.
    try:
        wait_for(back, timeout_s=60, what="file descriptors back")
    except AssertionError as exc:  # say which files stayed open, for the diagnosis
        raise AssertionError(f"{exc}: {before} before, {open_files(fd_dir)} now") from None
    assert serve.stop() == 0


@pytest.mark.timeout(60)
def test_status_says_when_changes_wait_for_git(tmp_path, repo, ollama, notify, serve_factory):
    """While .git/index.lock exists, a save is held and STATUS says so; when the lock goes, it is enriched."""
    (repo / ".git").mkdir()
    config = make_config(tmp_path, ollama.url, [repo])
    serve = serve_factory(config, notify)
    notify.wait("READY=1")
    wait_for(lambda: status_report(config)["totals"]["enriched"] == 2, what="catch-up")
    lock = repo / ".git" / "index.lock"
    lock.write_text("")
    (repo / "src" / "a.py").write_text("def f(x):\n    return x - 1\n\n\ndef g(y):\n    return y\n")
    held = notify.wait("holding 1 changes while git runs in repo (index.lock)")
    assert held.startswith("STATUS=")
    assert not any("x - 1" in r.json["messages"][-1]["content"] for r in chats(ollama))
    lock.unlink()
    wait_for(lambda: any("x - 1" in r.json["messages"][-1]["content"] for r in chats(ollama)), what="released save")
    assert serve.stop() == 0


@pytest.mark.timeout(60)
def test_warm_up_loads_the_model_at_start_with_the_same_options(tmp_path, repo, ollama, notify, serve_factory):
    """With ollama.warm_up, serve sends Ollama's empty-prompt load request at start, with the chats' keep_alive and options (no reload follows), and never /api/ps."""
    config = make_config(tmp_path, ollama.url, [repo], ollama={"warm_up": True, "keep_alive": -1})
    serve = serve_factory(config, notify)
    notify.wait("READY=1")
    wait_for(lambda: status_report(config)["totals"]["enriched"] == 2, what="catch-up")
    loads = [r.json for r in ollama.requests if r.path == "/api/generate"]
    assert len(loads) == 1 and loads[0]["prompt"] == "" and loads[0]["keep_alive"] == -1
    assert loads[0]["options"] == chats(ollama)[0].json["options"]
    assert ollama.loads == 1 and ollama.count("/api/ps") == 0
    assert serve.stop() == 0
