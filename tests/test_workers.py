"""The worker pool: policies per error kind, host quarantine, prompt budget, health, STATUS."""

from __future__ import annotations

import time

from structlog.testing import capture_logs

from llmc_rag_service.enrich import workers
from tests.helpers import fast_backoffs, wait_for, write_tree
from llmc_rag_service.testing.emulator import OllamaEmulator


def test_failures_in_a_row_quarantine_the_host_then_it_resumes(tmp_path, ollama, pipelines, monkeypatch):
    """Three failed attempts in a row quarantine the host (one warning); after the backoff it resumes."""
    fast_backoffs(monkeypatch)
    ollama.inject("runner_crash_500", count=3)
    p = pipelines(tmp_path, ollama.url, files=4, ollama={"concurrency": 1}, queue={"max_attempts": 5})
    with capture_logs() as logs:
        p.start()
        p.wait_done()
    events = [e["event"] for e in logs]
    assert events.count("ollama_quarantined") == 1 and events.count("ollama_recovered") == 1
    assert all(j["state"] == "done" for j in p.jobs())
    assert p.pipeline.pool.host.state == "ok"


def test_prompt_too_large_is_dead_lettered_at_once(tmp_path, ollama, pipelines):
    """A span whose prompt leaves no room for an answer in num_ctx fails at once, without a request."""
    p = pipelines(tmp_path, ollama.url, files=0, ollama={"options": {"num_ctx": 500}})
    write_tree(p.root, {"big.py": "def big():\n" + "    x = 'abcdefghijklmnopqrstuvwxyz'\n" * 40})
    p.pipeline.scan_all()
    p.start().wait_done()
    jobs = p.jobs()
    assert jobs and all(j["state"] == "failed" and "prompt_too_large" in j["last_error"] for j in jobs)
    assert ollama.count("/api/chat") == 0


def test_hung_names_a_request_past_its_deadline(tmp_path, ollama, pipelines):
    """The watchdog check reports a request running longer than the longest possible request."""
    p = pipelines(tmp_path, ollama.url, files=0)
    pool = p.pipeline.pool
    assert pool.hung() is None
    limit = p.pipeline.client.max_request_s() + 3 * 10.0 + workers.HANG_GRACE_S
    with pool._lock:
        pool._started[-1] = (pool.host, time.monotonic() - limit - 5)
    assert "has been running" in pool.hung()


def test_status_line_single_host_states(tmp_path, ollama, pipelines):
    """STATUS reads 'ollama ok', 'ollama unreachable at URL: error; retry in N s' or names the missing model."""
    p = pipelines(tmp_path, ollama.url, files=2)
    host = p.pipeline.pool.host
    assert p.pipeline.status_line() == "enriching: 2 pending, 0 in flight, 0 done, 0 failed; ollama ok"
    host.state, host.error, host.retry_at = "unreachable", "connection refused", time.monotonic() + 20.4
    assert p.pipeline.status_line() == (f"waiting: 2 pending, 0 in flight, 0 done, 0 failed; "
                                      f"ollama unreachable at {ollama.url}: connection refused; retry in 20 s")
    host.state = "model_missing"
    assert p.pipeline.status_line().endswith("; model test-model missing, run: ollama pull test-model")
    assert p.pipeline.last_error() == "connection refused" and p.pipeline.ollama_down() == "model_missing"


def test_warm_up_loads_without_holding_back_jobs(tmp_path, pipelines):
    """The optional warm-up loads the model with the chat options; jobs are sent at once, not after it."""
    with OllamaEmulator({"test-model": 1.0}) as emu:
        p = pipelines(tmp_path, emu.url, files=3)
        p.pipeline.warm_up()
        p.start().wait_done()
        wait_for(lambda: emu.count("/api/generate") == 1 and emu.requests[0].t_end, 5, "warm-up answered")
        warm = next(r for r in emu.requests if r.path == "/api/generate")
        first_chat = min(r.t_start for r in emu.requests if r.path == "/api/chat")
        assert first_chat < warm.t_end  # sent while the load was still running
        assert warm.json["options"] == next(r for r in emu.requests if r.path == "/api/chat").json["options"]
        assert emu.loads == 1 and all(j["state"] == "done" for j in p.jobs())


def test_a_store_error_does_not_kill_the_worker(tmp_path, ollama, pipelines, monkeypatch):
    """`database is locked` while storing a result (another process held the store too long): logged, the job goes back, the thread lives on and the job is done later."""
    import sqlite3

    from structlog.testing import capture_logs

    fast_backoffs(monkeypatch)
    monkeypatch.setattr(workers, "JOB_ERROR_PAUSE_S", 0.05)
    p = pipelines(tmp_path, ollama.url, files=3, ollama={"concurrency": 1})
    real = p.pipeline.queue.complete_many  # what the pool's result writer calls
    calls = []

    def locked_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(p.pipeline.queue, "complete_many", locked_once)
    with capture_logs() as logs:
        p.start()
        p.wait_done()
    assert all(j["state"] == "done" for j in p.jobs())
    assert [e for e in logs if e["event"] == "job_error" and e["log_level"] == "error"]
    assert p.pipeline.pool.dead() is None


def test_a_model_missing_for_long_changes_status_once_not_on_every_probe(tmp_path, ollama, pipelines, monkeypatch):
    """Probes that find the model still missing change nothing a STATUS shows, so they do not ask for a new
    STATUS (each costs a count of every pending job: on a large backlog that was the idle daemon's CPU);
    the probe that finds the model pulled does."""
    fast_backoffs(monkeypatch)
    ollama.uninstall("test-model")
    p = pipelines(tmp_path, ollama.url, files=2)
    pool = p.pipeline.pool
    p.start()
    wait_for(lambda: pool.host.state == "model_missing", 10, "the model found missing")
    changes: list[str] = []
    pool.on_change = lambda: changes.append(pool.host.state)
    # Requests sent before the state flipped end now (their 404s are job outcomes, which do change
    # the counts); once a probe ran, every worker waits on the host and only probes remain.
    first = ollama.count("/api/tags")
    wait_for(lambda: ollama.count("/api/tags") > first, 10, "a probe")
    changes.clear()
    probes = ollama.count("/api/tags")
    wait_for(lambda: ollama.count("/api/tags") >= probes + 4, 10, "four more probes")
    assert changes == []
    ollama.install("test-model")
    p.wait_done()
    assert changes and changes[0] == "ok"


def test_a_status_redrawn_while_a_host_waits_shows_new_counts_and_the_moved_countdown(tmp_path, ollama, pipelines):
    """status_line (the daemon's heartbeat redraws it while a host waits to be retried) reads the job counts
    afresh (the tallies: no walk of the pending jobs) and the host's "retry in" countdown."""
    p = pipelines(tmp_path, ollama.url, files=2)
    host = p.pipeline.pool.host
    host.state, host.error, host.retry_at = "unreachable", "connection refused", time.monotonic() + 20.4
    assert p.pipeline.status_line().startswith("waiting: 2 pending,") and "retry in 20 s" in p.pipeline.status_line()
    write_tree(p.root, {"new.py": "def g(x):\n    return x\n"})
    p.pipeline.scan_all()
    host.retry_at = time.monotonic() + 10.4
    line = p.pipeline.status_line()
    assert line.startswith("waiting: 3 pending,") and line.endswith("retry in 10 s")
