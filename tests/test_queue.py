"""The persistent job queue on a real SQLite file."""

import subprocess
import sys

import pytest

from llmc_rag_service.models import Enrichment
from tests.queuekit import add_file
from llmc_rag_service.store.jobs import PRIORITY_BACKFILL, PRIORITY_LIVE, JobQueue, backoff_s
from llmc_rag_service.store.db import MIGRATIONS, Store

E = Enrichment(summary="s", inputs=[], outputs=[], side_effects=[], pitfalls=[], usage="u")


def test_store_is_wal_with_schema_version(store):
    """The store uses WAL and records its schema version in user_version."""
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert store.migrate() == len(MIGRATIONS)


def test_enqueue_dedupes_by_span_hash(store):
    """The same span hash queued twice is one job."""
    q = JobQueue(store, "m")
    hashes = add_file(store, "a.py", ["x = 1", "x = 1", "y = 2"])
    with store.write() as tx:
        assert q.enqueue(tx, hashes, PRIORITY_BACKFILL) == 2
        assert q.enqueue(tx, hashes, PRIORITY_BACKFILL) == 0
    assert q.counts()["pending"] == 2


def test_live_jobs_run_before_backfill(store):
    """A just-saved file's span is claimed before older backfill jobs."""
    q = JobQueue(store, "m")
    old = add_file(store, "old.py", ["a = 1", "b = 2"])
    new = add_file(store, "new.py", ["c = 3"])
    with store.write() as tx:
        q.enqueue(tx, old, PRIORITY_BACKFILL)
        q.enqueue(tx, new, PRIORITY_LIVE)
    assert q.claim().span_hash == new[0]


def test_complete_stores_result_and_job_in_one_transaction(store):
    """A completed job is done and its enrichment is stored; an enriched hash is never queued again."""
    q = JobQueue(store, "m")
    hashes = add_file(store, "a.py", ["a = 1"])
    with store.write() as tx:
        q.enqueue(tx, hashes, 0)
    job = q.claim()
    q.complete(job, E, 0.5)
    assert q.counts()["done"] == 1
    with store.write() as tx:
        assert q.enqueue(tx, hashes, 0) == 0
    # A different model has its own jobs.
    with store.write() as tx:
        assert JobQueue(store, "other").enqueue(tx, hashes, 0) == 1


def test_retry_backs_off_then_dead_letters_with_reason(store):
    """Failures back off with growing delays, then the job is failed keeping the last error."""
    q = JobQueue(store, "m", max_attempts=3)
    hashes = add_file(store, "a.py", ["a = 1"])
    with store.write() as tx:
        q.enqueue(tx, hashes, 0)
    job = q.claim()
    assert q.retry(job, "invalid_json: x") is False
    assert q.claim() is None  # not due yet: backoff
    assert q.next_due_s() > 0
    store.conn.execute("UPDATE jobs SET next_attempt_at = 0")
    job = q.claim()
    assert job.attempts == 1
    assert q.retry(job, "empty_response") is False
    store.conn.execute("UPDATE jobs SET next_attempt_at = 0")
    assert q.retry(q.claim(), "length: cut") is True
    row = store.conn.execute("SELECT state, attempts, last_error FROM jobs").fetchone()
    assert tuple(row) == ("failed", 3, "length: cut")


def test_release_keeps_attempts(store):
    """A release (outage, missing model) does not count an attempt."""
    q = JobQueue(store, "m", max_attempts=1)
    hashes = add_file(store, "a.py", ["a = 1"])
    with store.write() as tx:
        q.enqueue(tx, hashes, 0)
    for _ in range(3):
        q.release(q.claim(), 0.0, "unreachable")
    assert store.conn.execute("SELECT state, attempts FROM jobs").fetchone()[:] == ("pending", 0)


def test_backoff_is_jittered_exponential_and_capped():
    """Backoff doubles per attempt within [half, full] of the ceiling, capped."""
    for attempt, ceiling in [(1, 2), (2, 4), (5, 32)]:
        values = {backoff_s(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= v <= ceiling for v in values) and len(values) > 1
    assert backoff_s(100) <= 300


def test_deleted_span_cancels_pending_job_and_is_never_claimed(store):
    """A job whose span is in no file any more is cancelled and never claimed."""
    q = JobQueue(store, "m")
    hashes = add_file(store, "a.py", ["a = 1"])
    with store.write() as tx:
        q.enqueue(tx, hashes, 0)
        store.delete_files(tx, store.repo_id("/repo"), ["a.py"])
    assert q.claim() is None
    with store.write() as tx:
        assert q.cancel_orphans(tx) == 1


def test_job_left_running_by_a_dead_process_goes_back_to_pending(store, tmp_path):
    """A job claimed by a process that died (kill -9) is pending again after recover()."""
    q = JobQueue(store, "m")
    hashes = add_file(store, "a.py", ["a = 1"])
    with store.write() as tx:
        q.enqueue(tx, hashes, 0)
    code = (
        "import os, sys; from llmc_rag_service.store.db import Store; from llmc_rag_service.store.jobs import JobQueue;"
        f"q = JobQueue(Store({str(store.path)!r}), 'm'); assert q.claim(); os.kill(os.getpid(), 9)"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=30)
    assert proc.returncode == -9
    assert q.counts()["running"] == 1
    assert q.recover() == 1
    assert q.claim() is not None


def test_running_job_of_a_live_process_is_not_recovered(store):
    """recover() leaves alone jobs claimed by another live process (a concurrent enrich)."""
    q = JobQueue(store, "m")
    hashes = add_file(store, "a.py", ["a = 1"])
    with store.write() as tx:
        q.enqueue(tx, hashes, 0)
    q.claim()
    store.conn.execute("UPDATE jobs SET claimed_by = 1")  # pid 1 is alive
    assert q.recover() == 0


def _claimed_by(store, q, pid, claimed_at=None):
    hashes = add_file(store, "z.py", ["z = 1"])
    with store.write() as tx:
        q.enqueue(tx, hashes, 0)
    q.claim()
    store.conn.execute("UPDATE jobs SET claimed_by = ?, claimed_at = COALESCE(?, claimed_at)", (pid, claimed_at))


def test_a_job_of_a_killed_but_unreaped_process_is_recovered(store):
    """A zombie (killed, its parent has not waited yet) still answers kill(pid, 0): its jobs are recovered anyway."""
    q = JobQueue(store, "m")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _claimed_by(store, q, child.pid)
        child.kill()
        with open(f"/proc/{child.pid}/stat") as f:  # wait (bounded by the test timeout) until it is a zombie
            while f.read().split(")")[-1].split()[0] != "Z":
                f.seek(0)
        assert q.recover() == 1
    finally:
        child.kill()
        child.wait()


def test_a_job_whose_pid_was_reused_by_a_newer_process_is_recovered(store):
    """A live process that started after the claim is not the claimer (the pid was reused): the job is recovered."""
    q = JobQueue(store, "m")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _claimed_by(store, q, child.pid, claimed_at=1.0)  # claimed long before the child started
        assert q.recover() == 1
    finally:
        child.kill()
        child.wait()


def test_store_survives_a_rolled_back_write(store):
    """An exception inside write() rolls the whole transaction back."""
    with pytest.raises(RuntimeError):
        with store.write() as tx:
            tx.execute("INSERT INTO meta(key, value) VALUES ('k', 'v')")
            raise RuntimeError
    assert store.get_meta("k") is None
    assert store.writable() is None


def test_a_claim_walks_an_index_in_claim_order_instead_of_sorting_every_pending_job(store):
    """The claim query's plan uses the jobs_claim index for its ORDER BY (no temporary sort of all pending jobs)."""
    q = JobQueue(store, "m")
    plan = [row[3] for row in store.conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE state = 'pending' AND kind = ? AND model = ? "
        "AND prompt_version = ? AND next_attempt_at <= 0 ORDER BY priority, id LIMIT 8", q._key())]
    assert any("jobs_claim" in step for step in plan) and not any("TEMP B-TREE" in step for step in plan), plan
