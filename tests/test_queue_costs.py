"""The queue's per-job costs cut for issue 12 keep its guarantees: tallies equal a recount
(also after kill -9), the catch-up pass runs only when something can be missing, and jobs
claimed ahead go back when the pool stops claiming."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from llmc_rag_service.enrich.embed_text import INPUT_VERSION
from llmc_rag_service.models import Enrichment
from llmc_rag_service.store.embed_jobs import EmbedQueue
from llmc_rag_service.store.jobs import PRIORITY_BACKFILL, PRIORITY_LIVE, JobQueue, QueueSet
from tests import queuekit
from tests.helpers import wait_for

E = Enrichment(summary="s", inputs=[], outputs=[], side_effects=[], pitfalls=[], usage="u")


def add_file(store, path, texts, queues=None, priority=PRIORITY_BACKFILL):
    """Store a file of one span per text (queuekit) and queue them in ``queues``, as a scan does."""
    hashes = queuekit.add_file(store, path, texts)
    if queues is not None:
        with store.write() as tx:
            queues.enqueue(tx, hashes, priority)
    return hashes


def vm_steps(store, work) -> int:
    """SQLite VM steps, in tens, of ``work()`` on this thread's store connection (the
    count restarts with each statement, so a statement's last few steps go uncounted)."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    store.conn.set_progress_handler(count, 10)
    try:
        work()
    finally:
        store.conn.set_progress_handler(None, 0)
    return steps[0]


def same(queue):
    """Tallies without the zero rows of states left empty."""
    return {state: n for state, n in queue.tallies().items() if n}


def test_tallies_equal_a_recount_after_every_kind_of_change(store):
    """Every queue operation (queue, claim, complete, retry, dead-letter, release, cancel, requeue, recover) keeps the tallies equal to a recount, and counts() reads done and failed from them."""
    q = JobQueue(store, "m", max_attempts=2)
    hashes = add_file(store, "a.py", [f"x = {i}" for i in range(8)], q)
    jobs = q.claim_many(6)
    q.complete(jobs[0], E, 1.0)
    q.complete_many([(jobs[1], E, 1.0), (jobs[2], E, None)])
    q.retry(jobs[3], "boom", delay_s=0)
    q.fail(jobs[4], "bad request")
    q.release(jobs[5])
    assert same(q) == q.recount() == {"done": 3, "pending": 4, "failed": 1}
    repo_id = store.repo_id("/repo")
    q.requeue_failed([repo_id])
    with store.write() as tx:
        store.delete_files(tx, repo_id, ["a.py"])
        q.cancel_orphans(tx, hashes)
    assert same(q) == q.recount() == {"done": 3}
    add_file(store, "b.py", ["y = 1", "y = 2"], q, PRIORITY_LIVE)
    q.claim_many(2)
    assert q.recover() == 2
    assert same(q) == q.recount() == {"done": 3, "pending": 2}
    assert q.counts() == {"pending": 2, "ready": 2, "running": 0, "failed": 0, "done": 3}


def test_tallies_equal_a_recount_after_kill_9(store, tmp_path):
    """A process killed with SIGKILL in the middle of claiming and completing jobs leaves tallies equal to a recount: they change in the same transactions as the jobs."""
    q = JobQueue(store, "m")
    add_file(store, "a.py", [f"x = {i}" for i in range(3000)], q)  # more than the child gets through
    child = textwrap.dedent(f"""
        import sys
        from llmc_rag_service.models import Enrichment
        from llmc_rag_service.store.db import Store
        from llmc_rag_service.store.jobs import JobQueue
        q = JobQueue(Store({str(store.path)!r}), "m")
        e = Enrichment("s", [], [], [], [], "u")
        print("working", flush=True)
        while True:
            jobs = q.claim_many(3)
            if not jobs:
                break
            q.complete_many([(j, e, 0.1) for j in jobs[:2]])
            q.retry(jobs[2], "again", delay_s=0)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "working\n"
        wait_for(lambda: q.tallies().get("done", 0) >= 30, 20, "the child to complete some jobs")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert same(q) == q.recount() and q.recount().get("done", 0) >= 30
    q.recover()  # its running jobs come back, the tallies with them
    assert same(q) == q.recount() and "running" not in q.recount()


def test_an_unchanged_tree_skips_the_catch_up_pass(store, monkeypatch):
    """enqueue_missing passes over the spans once per queue key; after that, with every new span queued by the scans, it costs one meta read."""
    passes = []
    for cls in (JobQueue, EmbedQueue):
        def counted(self, tx, priority, real=cls._missing_pass):
            passes.append(self.KIND)
            return real(self, tx, priority)
        monkeypatch.setattr(cls, "_missing_pass", counted)
    enrich = JobQueue(store, "m")
    embed = EmbedQueue(store, "emb", INPUT_VERSION, "m")
    queues = QueueSet(enrich, embed)
    add_file(store, "a.py", ["x = 1"])  # cut before any queue existed: only a pass finds it
    with store.write() as tx:
        assert queues.enqueue_missing(tx) == 2
    add_file(store, "b.py", ["y = 2"], queues)
    with store.write() as tx:
        assert queues.enqueue_missing(tx) == 0
    assert passes == ["enrich", "embed"]
    assert enrich.counts()["pending"] == embed.counts()["pending"] == 2


def test_spans_cut_without_the_embedding_queue_are_found_by_the_next_catch_up(store):
    """Spans queued while embeddings were off drop the embedding queue's mark, so when they are on again the catch-up queues their embeddings."""
    enrich = JobQueue(store, "m")
    embed = EmbedQueue(store, "emb", INPUT_VERSION, "m")
    add_file(store, "a.py", ["x = 1"], QueueSet(enrich, embed))
    with store.write() as tx:
        QueueSet(enrich, embed).enqueue_missing(tx)  # both marked complete
    add_file(store, "b.py", ["y = 2"], QueueSet(enrich))  # embeddings off meanwhile
    with store.write() as tx:
        assert QueueSet(enrich, embed).enqueue_missing(tx) == 1
    assert embed.counts()["pending"] == 2


def test_an_enrichment_stored_without_the_embedding_lane_reopens_its_embedding_at_the_catch_up(store):
    """An enrichment that lands while no embedding queue is told (embeddings off) drops the embedding marks, so the catch-up re-embeds the span with its summary."""
    enrich = JobQueue(store, "m")
    embed = EmbedQueue(store, "emb", INPUT_VERSION, "m")
    [h] = add_file(store, "a.py", ["x = 1"], QueueSet(enrich, embed))
    [job] = embed.claim_many(1)
    embed.store_vectors([(job, [1.0, 0.0], False)])  # embedded from the code alone
    with store.write() as tx:
        QueueSet(enrich, embed).enqueue_missing(tx)
    assert embed.counts()["done"] == 1
    enrich.complete(enrich.claim(), E, 1.0)  # embeddings off: enrich.on_result is None
    with store.write() as tx:
        assert QueueSet(enrich, embed).enqueue_missing(tx) == 1
    assert embed.upcoming(5) == [h]


def test_enqueue_raises_the_priority_of_a_waiting_job_for_a_save(store):
    """A save of a span already queued by a backfill makes its waiting job live, in the batch statement."""
    q = JobQueue(store, "m")
    hashes = add_file(store, "a.py", ["x = 1", "x = 2"], q, PRIORITY_BACKFILL)
    with store.write() as tx:
        assert q.enqueue(tx, [hashes[1]], PRIORITY_LIVE) == 0
        assert q.enqueue(tx, [hashes[0]], PRIORITY_BACKFILL) == 0  # never lowered
    assert q.upcoming(2) == [hashes[1], hashes[0]]


@pytest.mark.timeout(30)
def test_jobs_claimed_ahead_go_back_when_the_pool_is_retired(tmp_path, ollama, pipelines):
    """Jobs a claim took ahead of the workers are running under this process only while they wait: retiring the pool puts them back to pending at once, and the requests in flight finish and are stored."""
    ollama.inject("hang", count=2, seconds=1.0)  # long enough to retire the pool while both are in flight
    p = pipelines(tmp_path, ollama.url, files=6, ollama={"concurrency": 2})
    pool = p.pipeline.pool
    pool.claim_batch = 6  # one claim takes every job: two go out, four wait in memory
    p.start()
    wait_for(lambda: pool.in_flight == 2, 10, "two requests in flight")
    assert p.pipeline.counts()["running"] == 6
    pool.retire()
    assert p.pipeline.counts()["running"] == 2 and p.pipeline.counts()["pending"] == 4
    wait_for(lambda: p.pipeline.counts()["done"] == 2, 10, "the two answers stored")
    wait_for(lambda: pool.busy_threads() == 0 and not pool.results.thread.is_alive(), 10,
             "the retired workers and their result writer to end")
    assert p.pipeline.counts() == {"pending": 4, "ready": 4, "running": 0, "failed": 0, "done": 2, "in_flight": 0}


def test_a_files_rewrite_costs_the_same_whatever_the_number_of_pending_jobs(store, tmp_path):
    """The scan's per-file write (spans, both queues, orphan jobs cancelled, unheld text dropped, search
    index) reads no row per pending job: rewriting one file costs the same SQLite work with 200 and with
    4,000 jobs pending. (cancel_orphans walked every pending job of its kind once per lost span: a
    checkout of 10k files never settled on a large store.)"""
    from pathlib import Path

    from llmc_rag_service.index.writes import FileWrite, FileWrites
    from llmc_rag_service.models import Span

    queues = QueueSet(JobQueue(store, "m", 3), EmbedQueue(store, "e", INPUT_VERSION, "m"))
    repo_id = store.repo_id("/repo")
    writes = FileWrites(store, lambda: queues, repo_id, Path("/repo"))
    (tmp_path / "edit.py").write_text("g = 0\n")
    stat = os.stat(tmp_path / "edit.py")

    def rewrite_steps(version: int) -> int:
        """SQLite VM steps of rewriting edit.py with 10 new spans."""
        spans = [Span("function", f"g{i}", i + 1, i + 1, f"g{i} = {version}", "python") for i in range(10)]

        def rewrite() -> None:
            assert writes.add(FileWrite("edit.py", stat, f"v{version}", "python", None, spans, PRIORITY_LIVE)) is None
            assert writes.flush().files == 1

        return vm_steps(store, rewrite)

    def grow_to(files: int) -> None:
        for n in range(len(store.conn.execute("SELECT id FROM files WHERE path != 'edit.py'").fetchall()), files):
            add_file(store, f"f{n}.py", [f"x = {n}.{i}" for i in range(10)], queues)

    grow_to(10)
    rewrite_steps(0)
    small = rewrite_steps(1)
    grow_to(200)
    large = rewrite_steps(2)
    assert queues.queues[1].counts()["pending"] >= 2000
    assert large <= 1.5 * small, (small, large)


def test_no_pending_job_outlives_its_span(store):
    """A job that goes back to pending after its span went (released, retried, recovered) is dropped in the
    same transaction, as is one queued for a hash no span holds: the tallies' pending count is the work left."""
    from llmc_rag_service.models import Span

    q = JobQueue(store, "m", max_attempts=5)
    hashes = add_file(store, "a.py", [f"x = {i}" for i in range(4)], q)
    jobs = q.claim_many(3)
    repo_id = store.repo_id("/repo")
    with store.write() as tx:  # the file goes while its jobs run (a scan cancels only pending ones)
        store.put_file(tx, repo_id, "a.py", size=1, mtime_ns=2, content_hash="b", language="python",
                       skipped=None, spans=[Span("function", "y", 1, 1, "y = 0", "python")])
        assert q.cancel_orphans(tx, hashes) == 1  # the one not claimed
    q.release(jobs[0])
    q.retry(jobs[1], "boom", delay_s=0)
    with store.write() as tx:
        tx.execute("UPDATE jobs SET claimed_by = NULL WHERE id = ?", (jobs[2].id,))  # a dead process's claim
    assert q.recover() == 1
    with store.write() as tx:
        q.enqueue(tx, ["0" * 64], PRIORITY_BACKFILL)
    assert q.recount() == {} and same(q) == {}
    assert q.counts() == {"pending": 0, "ready": 0, "running": 0, "failed": 0, "done": 0}


def test_counts_read_no_row_per_pending_job(store):
    """counts() (every STATUS) costs the same SQLite work with 100 and with 3,000 jobs pending, and its ready
    count leaves out the jobs waiting out a backoff."""
    q = JobQueue(store, "m", max_attempts=5)

    def steps() -> int:
        return vm_steps(store, q.counts)

    add_file(store, "a.py", [f"x = {i}" for i in range(50)], q)
    add_file(store, "b.py", [f"y = {i}" for i in range(50)], q, PRIORITY_LIVE)
    small = steps()  # one index range per priority present: the same two below
    add_file(store, "c.py", [f"z = {i}" for i in range(2900)], q)
    large = steps()
    assert large <= small + 2, (small, large)
    q.retry(q.claim(), "boom", delay_s=60)
    assert q.counts() == {"pending": 3000, "ready": 2999, "running": 0, "failed": 0, "done": 0}


def test_a_store_of_schema_8_loses_its_pending_jobs_without_a_span_and_keeps_the_rest(tmp_path):
    """Migration 9 drops the pending jobs no span holds (an older store may have some: they were skipped by
    claims and counts, never sent) and keeps every other job, the tallies with them."""
    import sqlite3

    from llmc_rag_service.store.db import MIGRATIONS, Store

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:8], start=1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute("INSERT INTO repos(id, path, added_at) VALUES (1, '/repo', 0)")
    conn.execute("INSERT INTO files(id, repo_id, path, size, mtime_ns, content_hash, updated_at)"
                 " VALUES (1, 1, 'a.py', 1, 1, 'c', 0)")
    conn.execute("INSERT INTO spans(file_id, kind, name, start_line, end_line, span_hash)"
                 " VALUES (1, 'function', 'f', 1, 1, 'held')")
    for i, (span_hash, state) in enumerate([("held", "pending"), ("gone", "pending"), ("gone", "done")]):
        conn.execute("INSERT INTO jobs(kind, span_hash, model, prompt_version, state, priority, created_at,"
                     f" updated_at) VALUES ('enrich', ?, 'm{i}', 1, ?, 0, 0, 0)", (span_hash, state))
    conn.close()
    store = Store(path)
    try:
        rows = store.conn.execute("SELECT span_hash, state FROM jobs ORDER BY id").fetchall()
        assert [tuple(r) for r in rows] == [("held", "pending"), ("gone", "done")]
        assert dict(store.conn.execute("SELECT model, n FROM job_tallies WHERE n > 0").fetchall()) == \
            {"m0": 1, "m2": 1}
    finally:
        store.close()
