"""A full state disk: work pauses, says so, and resumes by itself; enrich exits 74.

The state dir is a real tmpfs of a few MB filled by a filler file, or where no
filesystem can be mounted, a real SQLITE_FULL from a page limit (tests/storage.py).
"""

from __future__ import annotations

import collections
import threading

import pytest
from structlog.testing import capture_logs

from llmc_rag_service import cli
from llmc_rag_service.enrich import workers
from llmc_rag_service.service import daemon as daemon_mod
from llmc_rag_service.service import oneshot
from llmc_rag_service.service.notify import Degraded
from llmc_rag_service.service.pipeline import Pipeline
from llmc_rag_service.store import database
from llmc_rag_service.store.faults import StoreFull
from llmc_rag_service.store.jobs import JobQueue
from llmc_rag_service.testing.emulator import OllamaEmulator
from tests.helpers import RunningDaemon, make_config, wait_for, write_tree
from tests.storage import done_without_enrichment, enriched, integrity, small_disk  # noqa: F401 (fixture)

FILES = 24


@pytest.fixture
def quick_retries(monkeypatch):
    """Workers retry a paused store every 0.1 s; a fault clears 0.3 s after its last failure."""
    monkeypatch.setattr(workers, "JOB_ERROR_PAUSE_S", 0.1)
    monkeypatch.setattr(database, "FAULT_HOLD_S", 0.3)


def _repo(tmp_path):
    root = tmp_path / "repo"
    write_tree(root, {f"m{i}.py": f"def f{i}(x):\n    return x * {i}\n" for i in range(FILES)})
    return root


def _fill_after(monkeypatch, disk, completions: int) -> threading.Event:
    """Fill the disk right after the transaction holding the ``completions``-th stored result (mid-run)."""
    filled, count, lock = threading.Event(), [0], threading.Lock()
    original = JobQueue.complete_many

    def complete_many(self, results):
        results = list(results)
        original(self, results)
        with lock:
            before, count[0] = count[0], count[0] + len(results)
            if before < completions <= count[0]:
                disk.fill()
                filled.set()

    monkeypatch.setattr(JobQueue, "complete_many", complete_many)
    return filled


@pytest.mark.timeout(60)
def test_a_full_disk_pauses_the_workers_and_they_resume_when_space_returns(tmp_path, small_disk, quick_retries,
                                                                          monkeypatch):
    """The disk fills mid-run: no worker thread dies (a failing claim included); the fault names the state dir and its free space in the store, STATUS and the health check; once space returns every job is done and the file is intact."""
    failures: collections.Counter = collections.Counter()  # worker thread -> store faults it went through
    original_note = database.Database.note_error

    def note_error(self, exc):
        fault = original_note(self, exc)
        if isinstance(fault, StoreFull) and threading.current_thread().name.startswith("worker-"):
            failures[threading.current_thread().name] += 1
        return fault

    monkeypatch.setattr(database.Database, "note_error", note_error)
    with OllamaEmulator(latency_s=0.05) as emu:
        config = make_config(tmp_path, emu.url, [_repo(tmp_path)], state_dir=str(small_disk.path),
                             ollama={"concurrency": 3})
        pipeline = Pipeline(config)
        try:
            pipeline.scan_all()
            filled = _fill_after(monkeypatch, small_disk, completions=4)
            pipeline.start_workers()
            assert filled.wait(20)
            wait_for(lambda: len(failures) == 3 and min(failures.values()) >= 2, 20, "every worker paused twice")
            assert pipeline.hung() is None  # no worker thread died
            fault = pipeline.store_fault()
            assert isinstance(fault, StoreFull) and str(small_disk.path) in str(fault) and "free" in str(fault)
            assert pipeline.status_line().startswith(f"paused: no space for the state in {small_disk.path} (")
            health = pipeline.store_health()
            assert isinstance(health, Degraded) and str(small_disk.path) in health
            small_disk.free()
            wait_for(lambda: pipeline.counts()["pending"] + pipeline.counts()["running"] == 0, 30, "all jobs done")
            wait_for(lambda: pipeline.store_health() is None, 10, "the store healthy again")
            assert pipeline.counts()["done"] == FILES
        finally:
            pipeline.close(2.0)
    assert integrity(config.db_path) == "ok"
    assert done_without_enrichment(config.db_path) == 0


@pytest.mark.timeout(60)
def test_serve_says_full_keeps_pinging_and_resumes_by_itself(tmp_path, small_disk, quick_retries, notify,
                                                             monkeypatch):
    """serve on a disk that fills: one store_full error naming the state dir, STATUS says paused, the health gate reports it while the watchdog pings go on; with space back, work finishes without a restart."""
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setattr(daemon_mod, "STOP_GRACE_S", 0.2)
    with OllamaEmulator(latency_s=0.05) as emu, capture_logs() as logs:
        config = make_config(tmp_path, emu.url, [_repo(tmp_path)], state_dir=str(small_disk.path),
                             ollama={"concurrency": 2})
        filled = _fill_after(monkeypatch, small_disk, completions=3)
        running = RunningDaemon(config, notify)
        try:
            assert filled.wait(20)
            notify.wait(f"STATUS=paused: no space for the state in {small_disk.path}")
            paused_at = len(notify.drain())
            wait_for(lambda: notify.drain()[paused_at:].count("WATCHDOG=1") >= 3, 10, "pings while paused")
            small_disk.free()
            wait_for(lambda: running.daemon.pipeline.counts()["pending"] == 0
                     and running.daemon.pipeline.counts()["running"] == 0, 30, "all jobs done")
            assert running.error is None and running.thread.is_alive()
        finally:
            running.stop()
    full = [e for e in logs if e["event"] == "store_full"]
    assert full and full[0]["log_level"] == "error" and full[0]["state_dir"] == str(small_disk.path)
    assert "free_bytes" in full[0]
    assert [e["check"] for e in logs if e["event"] == "watchdog_degraded"][:1] == ["store"]
    assert any(e["event"] == "store_recovered" for e in logs)
    assert not [e for e in logs if e["event"] in ("worker_error", "main_loop_error", "watchdog_unhealthy")]
    assert integrity(config.db_path) == "ok"
    assert done_without_enrichment(config.db_path) == 0


@pytest.mark.timeout(60)
def test_enrich_on_a_disk_that_fills_exits_74_with_one_line(tmp_path, small_disk, quick_retries, monkeypatch, capsys):
    """enrich gives up after STORE_WAIT_S with exit 74 and one line naming the state dir and its free space; the results stored before are intact, and a run after freeing space finishes the rest."""
    monkeypatch.setattr(oneshot, "STORE_WAIT_S", 0.5)
    with OllamaEmulator(latency_s=0.02) as emu:
        config = make_config(tmp_path, emu.url, [_repo(tmp_path)], state_dir=str(small_disk.path),
                             logging={"level": "warning"})
        _fill_after(monkeypatch, small_disk, completions=5)
        assert cli.main(["enrich", "-c", str(config.source)]) == cli.EX_IOERR
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"llmc-rag: state unusable: {config.db_path}: "
                               f"no space for the state in {small_disk.path} (")
        assert "free" in last and "Traceback" not in err
        small_disk.free()
        assert integrity(config.db_path) == "ok"
        assert done_without_enrichment(config.db_path) == 0
        assert enriched(config.db_path) >= 5
        # The filler fired once; this run has the room to finish.
        assert cli.main(["enrich", "-c", str(config.source)]) == cli.EX_OK
    assert enriched(config.db_path) == FILES
