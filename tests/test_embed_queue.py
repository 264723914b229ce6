"""Embedding jobs in the persistent queue (kind ``embed``) on a real SQLite file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from llmc_rag_service.models import Enrichment
from tests.queuekit import add_file
from llmc_rag_service.store import vectors
from llmc_rag_service.store.db import MIGRATIONS, Store
from llmc_rag_service.store.embed_jobs import EmbedQueue
from llmc_rag_service.store.jobs import PRIORITY_BACKFILL, JobQueue, QueueSet

E = Enrichment(summary="Parses JSON.", inputs=[], outputs=[], side_effects=[], pitfalls=[], usage="f()")
CHAT, EMBED = "chat-m", "embed-m"


def queues(store, max_attempts=5):
    chat = JobQueue(store, CHAT, max_attempts)
    embed = EmbedQueue(store, EMBED, 1, CHAT, max_attempts)
    chat.on_result = embed.refresh
    return chat, embed


def vec(x: float = 1.0, dim: int = 4) -> list[float]:
    return [x] + [0.0] * (dim - 1)


def test_a_scan_queues_one_job_of_each_kind_per_span(store):
    """Through a QueueSet every new span gets an enrich job and an embed job; both kinds count apart."""
    chat, embed = queues(store)
    hashes = add_file(store, "a.py", ["x = 1", "y = 2"])
    with store.write() as tx:
        assert QueueSet(chat, embed).enqueue(tx, (h for h in hashes), PRIORITY_BACKFILL) == 4
    assert chat.counts()["pending"] == embed.counts()["pending"] == 2
    assert {j.span_hash for j in embed.claim_many(10)} == set(hashes)
    assert chat.counts()["running"] == 0 and embed.counts()["running"] == 2


def test_the_same_model_name_for_both_kinds_never_collides(store):
    """An embedding model named like the chat model still gets its own jobs (the key has the kind)."""
    chat, _ = queues(store)
    same = EmbedQueue(store, CHAT, 1, CHAT)
    hashes = add_file(store, "a.py", ["x = 1"])
    with store.write() as tx:
        assert chat.enqueue(tx, hashes, 0) == 1 and same.enqueue(tx, hashes, 0) == 1


def test_stored_vectors_finish_jobs_and_an_embedded_span_is_not_queued_again(store):
    """store_vectors writes the embeddings rows (float32 blobs) and marks the jobs done, together."""
    _, embed = queues(store)
    hashes = add_file(store, "a.py", ["x = 1"])
    with store.write() as tx:
        embed.enqueue(tx, hashes, 0)
    job = embed.claim()
    assert embed.store_vectors([(job, vec(0.5), False)]) == 0
    row = store.conn.execute("SELECT dim, length(vector), input_version FROM embeddings WHERE span_hash = ?",
                             hashes).fetchone()
    assert tuple(row) == (4, 16, 1) and embed.counts()["done"] == 1 and embed.model_dim() == 4
    with store.write() as tx:
        assert embed.enqueue(tx, hashes, 0) == 0 and embed.enqueue_missing(tx) == 0


def test_a_vector_of_another_dimension_is_refused_and_nothing_is_written(store):
    """The model's dimension is that of its stored vectors; a batch with another one writes nothing."""
    _, embed = queues(store)
    hashes = add_file(store, "a.py", ["x = 1", "y = 2"])
    with store.write() as tx:
        embed.enqueue(tx, hashes, 0)
    first, second = embed.claim_many(2)
    embed.store_vectors([(first, vec(), False)])
    with pytest.raises(ValueError, match="dimension"):
        embed.store_vectors([(second, vec(dim=3), False)])
    assert embed.counts()["running"] == 1 and store.conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 1


def test_an_enrichment_landing_queues_the_span_again(store):
    """Completing the enrichment reopens the span's done embed job in the same transaction."""
    chat, embed = queues(store)
    hashes = add_file(store, "a.py", ["x = 1"])
    with store.write() as tx:
        QueueSet(chat, embed).enqueue(tx, hashes, 0)
    embed.store_vectors([(embed.claim(), vec(), False)])
    assert embed.counts()["pending"] == 0
    chat.complete(chat.claim(), E, 0.1)
    assert embed.counts()["pending"] == 1
    assert embed.inputs(hashes)[hashes[0]].summary == "Parses JSON."


def test_an_enrichment_landing_during_the_request_keeps_the_job_pending(store):
    """A vector made from the code alone while the enrichment landed is stored, and the job is redone."""
    chat, embed = queues(store)
    hashes = add_file(store, "a.py", ["x = 1"])
    with store.write() as tx:
        QueueSet(chat, embed).enqueue(tx, hashes, 0)
    job = embed.claim()                      # the text is made without a summary...
    chat.complete(chat.claim(), E, 0.1)      # ...the enrichment lands meanwhile
    assert embed.store_vectors([(job, vec(), False)]) == 1
    assert embed.counts()["pending"] == 1
    again = embed.claim()
    assert embed.store_vectors([(again, vec(), True)]) == 0 and embed.counts()["done"] == 1


def test_catch_up_redoes_vectors_made_without_the_enrichment_that_exists_now(store):
    """enqueue_missing reopens a done job whose basis is not the current enrichment (e.g. after a switch back)."""
    chat, embed = queues(store)
    hashes = add_file(store, "a.py", ["x = 1"])
    with store.write() as tx:
        QueueSet(chat, embed).enqueue(tx, hashes, 0)
    chat.on_result = None  # the enrichment lands while this embedding model is not in use
    chat.complete(chat.claim(), E, 0.1)
    embed.store_vectors([(embed.claim(), vec(), True)])
    store.conn.execute("UPDATE jobs SET basis = NULL WHERE kind = 'embed'")  # as if made from the code alone
    with store.write() as tx:
        assert embed.enqueue_missing(tx) == 1
    assert embed.counts()["pending"] == 1


def test_a_changed_embed_model_queues_everything_lazily_and_keeps_the_old_vectors_apart(store):
    """Another model has no vectors: every span is queued for it; the old model's rows stay under their own key."""
    _, embed = queues(store)
    hashes = add_file(store, "a.py", ["x = 1", "y = 2"])
    with store.write() as tx:
        embed.enqueue(tx, hashes, 0)
    embed.store_vectors([(j, vec(), False) for j in embed.claim_many(2)])
    other = EmbedQueue(store, "other-embed", 1, CHAT)
    with store.write() as tx:
        assert other.enqueue_missing(tx) == 2
    other.store_vectors([(j, vec(dim=8), False) for j in other.claim_many(2)])
    hashes_old, matrix_old = vectors.load_embeddings(store.conn, EMBED, 1)
    assert matrix_old.shape == (2, 4) and vectors.load_embeddings(store.conn, "other-embed", 1)[1].shape == (2, 8)


def test_failed_embed_jobs_dead_letter_with_their_reason_and_retry_failed_revives_them(store):
    """max_attempts refused vectors dead-letter the job with the reason; requeue_failed gives it a fresh start."""
    _, embed = queues(store, max_attempts=2)
    hashes = add_file(store, "a.py", ["x = 1"])
    with store.write() as tx:
        embed.enqueue(tx, hashes, 0)
    assert embed.retry(embed.claim(), "InvalidEmbedding: NaN", delay_s=0.0) is False
    assert embed.retry(embed.claim(), "InvalidEmbedding: NaN", delay_s=0.0) is True
    assert store.conn.execute("SELECT state, last_error FROM jobs WHERE kind = 'embed'").fetchone()[:] == \
        ("failed", "InvalidEmbedding: NaN")
    assert embed.requeue_failed([store.repo_id("/repo")]) == 1 and embed.counts()["pending"] == 1


def test_a_running_embed_job_of_a_killed_process_is_recovered(store):
    """A process killed (SIGKILL) holding an embed job leaves it running; the next recover returns it."""
    add_file(store, "a.py", ["x = 1"])
    with store.write() as tx:
        queues(store)[1].enqueue_missing(tx)
    code = (f"import os; from llmc_rag_service.store.db import Store; "
            f"from llmc_rag_service.store.embed_jobs import EmbedQueue; "
            f"q = EmbedQueue(Store({str(store.path)!r}), {EMBED!r}, 1, {CHAT!r}); assert q.claim(); "
            f"os.kill(os.getpid(), 9)")
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == -9
    _, embed = queues(store)
    assert embed.counts()["running"] == 1
    assert JobQueue(store, CHAT).recover() == 0  # another kind's recover leaves it alone
    assert embed.recover() == 1 and embed.counts()["pending"] == 1


def test_a_store_of_schema_2_is_migrated_keeping_its_jobs(tmp_path):
    """Migration 3 rebuilds jobs with a kind column: old rows become enrich jobs, ids and states kept."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:2], start=1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute("INSERT INTO jobs(id, span_hash, model, prompt_version, state, priority, created_at, updated_at)"
                 " VALUES (7, 'h', 'm', 1, 'failed', 0, 0, 0)")
    conn.close()
    store = Store(path)
    row = store.conn.execute("SELECT id, kind, state, basis FROM jobs").fetchone()
    assert tuple(row) == (7, "enrich", "failed", None) and store.migrate() == len(MIGRATIONS)
    store.close()
