"""``llmc-rag serve`` as a real process: reload of each setting, stop, and
journald priorities end to end. (The watchdog's schedule during a slow request
and the STATUS rate are checked in-process on a manual clock: ``tests/test_daemon.py``.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from llmc_rag_service.config import load_config
from llmc_rag_service.service.status import status_report
from tests.helpers import NotifySocket, chats, make_config, wait_for, write_tree
from llmc_rag_service.testing.emulator import OllamaEmulator


def edit_config(config, **changes) -> None:
    data = yaml.safe_load(config.source.read_text())
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    config.source.write_text(yaml.safe_dump(data))


def reload_and_wait(serve, notify: NotifySocket) -> None:
    readies = notify.drain().count("READY=1")
    serve.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: notify.drain().count("READY=1") > readies, 20, "READY=1 after the reload")


@pytest.mark.timeout(60)
def test_reload_applies_the_log_level(tmp_path, repo, ollama, notify, serve_factory):
    """A reload from level warning to info makes info events appear."""
    config = make_config(tmp_path, ollama.url, [repo], logging={"level": "warning"})
    serve = serve_factory(config, notify)
    notify.wait("READY=1")
    assert '"daemon_ready"' not in serve.logs()
    edit_config(config, logging={"level": "info"})
    reload_and_wait(serve, notify)
    wait_for(lambda: '"reloaded"' in serve.logs(), 10, "the info event reloaded")
    assert serve.stop() == 0
    assert '"daemon_stopped"' in serve.logs()


@pytest.mark.timeout(60)
def test_reload_applies_new_ollama_settings(tmp_path, repo, ollama, notify, serve_factory):
    """After a reload with another Ollama URL, the next save's job goes to the new server."""
    config = make_config(tmp_path, ollama.url, [repo])
    serve = serve_factory(config, notify)
    notify.wait("READY=1")
    wait_for(lambda: status_report(config)["totals"]["enriched"] == 2, 20, "catch-up on the first server")
    with OllamaEmulator() as second:
        edit_config(config, ollama={"url": second.url})
        reload_and_wait(serve, notify)
        (repo / "src" / "a.py").write_text("def f(x):\n    return x * 2\n\n\ndef g(y):\n    return y\n")
        wait_for(lambda: any("x * 2" in r.json["messages"][-1]["content"] for r in chats(second)), 20,
                 "the save's job on the new server")
        assert not any("x * 2" in r.json["messages"][-1]["content"] for r in chats(ollama))
        assert serve.stop() == 0


@pytest.mark.timeout(60)
def test_reload_stops_watching_a_removed_repo(tmp_path, repo, ollama, notify, serve_factory):
    """After a reload that drops a repo, a save there creates no job while a save in the kept repo does."""
    kept = tmp_path / "kept"
    write_tree(kept, {"k.py": "def k():\n    return 1\n"})
    config = make_config(tmp_path, ollama.url, [repo, kept])
    serve = serve_factory(config, notify)
    notify.wait("READY=1")
    wait_for(lambda: status_report(config)["totals"]["enriched"] == 3, 20, "catch-up of both repos")
    edit_config(config, repos=[{"path": str(kept)}])
    reload_and_wait(serve, notify)
    assert f'"removed": ["{repo}"]' in serve.logs()
    (repo / "src" / "a.py").write_text("def f(x):\n    return 'removed'\n")
    (kept / "k.py").write_text("def k():\n    return 'kept'\n")
    wait_for(lambda: any("'kept'" in r.json["messages"][-1]["content"] for r in chats(ollama)), 20, "the kept save")
    assert not any("'removed'" in r.json["messages"][-1]["content"] for r in chats(ollama))
    assert serve.stop() == 0


@pytest.mark.timeout(60)
def test_a_second_sigterm_exits_at_once_and_loses_nothing(tmp_path, repo, notify, serve_factory):
    """A second SIGTERM during the stop grace exits at once; the next start finishes the jobs."""
    with OllamaEmulator(latency_s=30.0) as slow:
        config = make_config(tmp_path, slow.url, [repo])
        serve = serve_factory(config, notify)
        wait_for(lambda: len(chats(slow)) == 2, 15, "two requests in flight")
        serve.proc.send_signal(signal.SIGTERM)
        notify.wait("STOPPING=1")
        assert serve.stop(signal.SIGTERM, timeout_s=5) == 128 + signal.SIGTERM
    with OllamaEmulator() as fast:
        config = make_config(tmp_path, fast.url, [repo])
        serve = serve_factory(config, notify)
        notify.wait("READY=1")
        wait_for(lambda: status_report(config)["totals"]["enriched"] == 2, 20, "the jobs finished after restart")
        assert serve.stop() == 0


def journal_env(path) -> dict:
    st = os.stat(path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


@pytest.mark.timeout(60)
def test_serve_under_journald_prefixes_every_line_with_its_priority(tmp_path, repo, ollama, notify, serve_factory):
    """With stderr being the journal stream, every line starts with <N>: info <6>, a refused reload <3>."""
    config = make_config(tmp_path, ollama.url, [repo], logging={"level": "info"})
    (tmp_path / "serve.log").touch()
    serve = serve_factory(config, notify, env=journal_env(tmp_path / "serve.log"))
    notify.wait("READY=1")
    config.source.write_text("ollama: [broken\n")
    serve.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload_failed" in serve.logs(), 10, "reload_failed")
    assert serve.stop() == 0
    lines = serve.logs().splitlines()
    assert lines and all(line[:3] in ("<3>", "<4>", "<6>") for line in lines), lines
    priority = {json.loads(line[3:])["event"]: line[:3] for line in lines}
    assert priority["daemon_ready"] == "<6>" and priority["reload_failed"] == "<3>"


@pytest.mark.timeout(30)
def test_an_unhandled_exception_is_one_error_line_in_the_journal(tmp_path, repo, ollama):
    """An exception escaping the main loop is one <3> line with the traceback inside, and the exit status is non-zero."""
    config = make_config(tmp_path, ollama.url, [repo], logging={"level": "info"})
    log_path = tmp_path / "stderr.log"
    log_path.touch()
    code = ("import sys, llmc_rag_service.service.daemon as d\n"
            "def boom(self):\n    raise RuntimeError('main loop broke')\n"
            "d.Daemon.main_loop = boom\n"
            "from llmc_rag_service.cli import main\nsys.exit(main(['serve', '-c', sys.argv[1]]))\n")
    with open(log_path, "ab") as stderr:
        proc = subprocess.run([sys.executable, "-c", code, str(config.source)], stderr=stderr, timeout=30,
                              env={**os.environ, **journal_env(log_path)})
    assert proc.returncode != 0
    lines = log_path.read_text().splitlines()
    crash = [line for line in lines if '"event": "unhandled_exception"' in line]
    assert len(crash) == 1 and crash[0].startswith("<3>")
    record = json.loads(crash[0][3:])
    assert "main loop broke" in record["exception"] and "Traceback" in record["exception"]
    assert all(line.startswith("<") for line in lines)
    assert '"daemon_stopped"' in log_path.read_text()  # shutdown still ran


@pytest.mark.timeout(60)
def test_a_reload_that_moves_state_dir_out_of_the_repo_is_refused(tmp_path, ollama, notify, serve_factory):
    """state_dir inside the repo, then a reload naming another one: the daemon keeps its
    open store, so the reload is refused (one reload_failed naming state_dir) and the repo
    keeps excluding the store: its WAL and lock never become indexed files."""
    repo = tmp_path / "repo"
    write_tree(repo, {"a.py": "def f(x):\n    return x\n"})
    config = make_config(tmp_path, ollama.url, [repo], state_dir=str(repo / ".state"))
    serve = serve_factory(config, notify)
    notify.wait("READY=1")
    wait_for(lambda: status_report(config)["totals"]["enriched"] == 1, 20, "the repo enriched")
    edit_config(config, state_dir=str(tmp_path / "elsewhere"))
    reload_and_wait(serve, notify)
    failed = [json.loads(line) for line in serve.logs().splitlines() if '"reload_failed"' in line]
    assert len(failed) == 1 and "state_dir: changed from" in failed[0]["error"], serve.logs()
    (repo / "a.py").write_text("def f(x):\n    return x + 1\n")  # a job: the store writes its WAL
    wait_for(lambda: status_report(config)["totals"]["enriched"] == 1
             and status_report(config)["totals"]["pending"] == 0, 20, "the save enriched")
    assert status_report(config)["totals"]["files"] == 1, serve.logs()
    assert serve.stop() == 0


@pytest.mark.timeout(60)
def test_a_nested_repo_dropped_by_a_reload_is_not_stored_twice(tmp_path, ollama, notify, serve_factory):
    """outer/ and outer/inner/ configured, then inner dropped by a reload: the outer repo indexes
    inner's files now, and inner's own rows are dropped, so each file is stored, counted and
    found once (they were kept as an 'unwatched' repo: every inner file twice)."""
    outer = tmp_path / "outer"
    write_tree(outer, {"a.py": "def f(x):\n    return x\n", "inner/b.py": "def g(y):\n    return y\n"})
    config = make_config(tmp_path, ollama.url, [outer, outer / "inner"])
    serve = serve_factory(config, notify)
    notify.wait("READY=1")
    wait_for(lambda: status_report(config)["totals"]["enriched"] == 2, 20, "both repos enriched")
    edit_config(config, repos=[{"path": str(outer)}])
    reload_and_wait(serve, notify)
    now = load_config(config.source)
    wait_for(lambda: [(r["path"], r["files"]) for r in status_report(now)["repos"]] == [(str(outer), 2)], 20,
             "inner's file indexed by the outer repo and inner's rows dropped")
    assert status_report(now)["totals"]["files"] == 2
    assert '"nested_repo_dropped"' in serve.logs()
    assert serve.stop() == 0
