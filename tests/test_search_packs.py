"""Packed vectors (store/vector_packs.py): a new search process starts from a few blobs, never from stale rows."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from llmc_rag_service.search import semantic
from llmc_rag_service.store import vector_packs, vectors
from tests.searchkit import EMBED, SearchRepo

PACK = 4  # rows per pack in these tests (the product packs 2048)
DIM = 8


@pytest.fixture(autouse=True)
def small_packs(monkeypatch):
    monkeypatch.setattr(vector_packs, "PACK_ROWS", PACK)
    semantic._cache.clear()  # each test reads the store as a new process would
    yield
    semantic._cache.clear()


@pytest.fixture
def sr(tmp_path):
    made = SearchRepo(tmp_path, {f"m{i}.py": f"def handler_{i}(event):\n    return event[{i}]\n" for i in range(10)})
    yield made
    made.close()


def unit(i: int) -> np.ndarray:
    """A vector pointing mostly along axis ``i % DIM`` (distinct cosines for each i)."""
    v = np.full(DIM, 0.01, np.float32)
    v[i % DIM] = 1.0 + i / 100
    return v


def put(sr: SearchRepo, hashes: list[str], model: str = EMBED) -> None:
    vectors.put_embeddings(sr.store, [(h, model, 1, unit(i)) for i, h in enumerate(hashes)])


def fresh_index(sr: SearchRepo, model: str = EMBED) -> semantic.VectorIndex:
    semantic._cache.clear()
    with sr.reader() as conn:
        return semantic.vector_index(conn, model, 1)


def test_the_writer_packs_full_batches_and_a_new_reader_starts_from_them(sr):
    """Ten vectors: two packs of four in the same transactions, two rows left in the tail; a new
    index holds all ten (packs + tail) and ranks them as the float32 vectors do."""
    hashes = sr.hashes()
    put(sr, hashes)
    conn = sr.store.conn
    assert [r[0] for r in conn.execute("SELECT rows FROM vector_packs ORDER BY seq")] == [4, 4]
    index = fresh_index(sr)
    assert index.packed_upto > 0 and len(index) == 10
    query = semantic.query_vector(unit(3), DIM, EMBED)
    with sr.reader() as reader:
        best = semantic.ranked(reader, index, query, semantic.SpanFilter(), 3)
    assert [sr.store.conn.execute("SELECT span_hash FROM spans WHERE id = ?", (i,)).fetchone()[0]
            for i, _ in best][0] == hashes[3]


def test_a_vector_embedded_again_after_packing_is_ranked_by_its_new_value(sr):
    """The packed row of a replaced vector is stale: search uses the new vector, never the old one."""
    hashes = sr.hashes()
    put(sr, hashes)
    vectors.put_embeddings(sr.store, [(hashes[0], EMBED, 1, unit(5) * -1)])  # now points away from axis 0
    query = semantic.query_vector(unit(0), DIM, EMBED)
    index = fresh_index(sr)
    assert len(index) == 11  # 8 packed + 3 tail rows, one of the packed ones stale
    with sr.reader() as reader:
        spans = dict(semantic.ranked(reader, index, query, semantic.SpanFilter(), 10))
        first = reader.execute("SELECT id FROM spans WHERE span_hash = ?", (hashes[0],)).fetchone()[0]
    assert len(spans) == 10 and spans[first] < 0  # ranked once, by the new (opposite) vector


def test_a_deleted_vector_is_never_returned_from_a_pack(sr):
    """A vector deleted after it was packed (its code held a secret) is not ranked."""
    hashes = sr.hashes()
    put(sr, hashes)
    sr.store.conn.execute("DELETE FROM embeddings WHERE span_hash = ?", (hashes[1],))
    index = fresh_index(sr)
    with sr.reader() as reader:
        ranked = semantic.ranked(reader, index, semantic.query_vector(unit(1), DIM, EMBED), semantic.SpanFilter(), 10)
        gone = reader.execute("SELECT id FROM spans WHERE span_hash = ?", (hashes[1],)).fetchone()[0]
    assert len(ranked) == 9 and gone not in dict(ranked)


def test_stale_rows_are_compacted_away(sr):
    """Replacing every packed vector twice leaves packs that hold each current vector once."""
    hashes = sr.hashes()
    for _ in range(3):
        put(sr, hashes)
    conn = sr.store.conn
    packed = vector_packs.load(conn, EMBED, 1)
    assert packed is not None
    current = vectors.current_rowids(conn, EMBED, 1, hashes)
    live = [h.decode() for h, r in zip(packed.hashes, packed.rowids) if current.get(h.decode()) == r]
    assert len(live) == len(set(live)) and len(packed.hashes) - len(live) <= max(PACK, len(packed.hashes) // 4)


def test_models_are_packed_apart_and_never_mixed(sr):
    """Packs belong to one model and input version: another model's index holds only its own vectors."""
    hashes = sr.hashes()
    put(sr, hashes)
    put(sr, hashes[:5], model="other")
    assert len(fresh_index(sr, "other")) == 5
    assert sorted(vector_packs.load(sr.store.conn, "other", 1).hashes.tolist()) == sorted(
        h.encode() for h in hashes[:4])


def test_a_store_written_before_packs_is_packed_by_pack_all(sr):
    """Vectors stored with no packs (an older llmc-rag) are packed in bounded steps by pack_all."""
    hashes = sr.hashes()
    put(sr, hashes)
    sr.store.conn.execute("DELETE FROM vector_packs")
    sr.store.conn.execute("DELETE FROM vector_pack_state")
    assert fresh_index(sr).packed_upto == 0
    assert vectors.pack_all(sr.store) == 8
    assert len(fresh_index(sr)) == 10 and fresh_index(sr).packed_upto > 0


def test_a_new_reader_loads_packs_while_a_writer_holds_the_lock(sr):
    """Loading packs is a read: it works while another connection holds a write transaction."""
    put(sr, sr.hashes())
    writer = sqlite3.connect(sr.db_path)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM vector_packs")
        assert len(fresh_index(sr)) == 10  # the committed packs, not the writer's pending delete
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_the_embedding_lane_packs_a_store_written_before_packs(tmp_path, sr):
    """Starting the embedding lane (serve, enrich) packs the vectors of its model and input
    version that an older llmc-rag stored without packs, and leaves other versions alone."""
    from llmc_rag_service.enrich.embed_text import INPUT_VERSION
    from llmc_rag_service.service.embed_lane import EmbedLane
    from tests.helpers import make_config

    hashes = sr.hashes()
    vectors.put_embeddings(sr.store, [(h, EMBED, INPUT_VERSION, unit(i)) for i, h in enumerate(hashes)])
    put(sr, hashes)  # input version 1: not the lane's
    sr.store.conn.execute("DELETE FROM vector_packs")
    sr.store.conn.execute("DELETE FROM vector_pack_state")
    config = make_config(tmp_path, "http://127.0.0.1:9", [sr.root], search={"embed_model": EMBED})
    lane = EmbedLane(sr.store, config)
    for client in lane.clients:
        client.close()
    assert vector_packs.packed_upto(sr.store.conn, EMBED, INPUT_VERSION) > 0
    assert vector_packs.packed_upto(sr.store.conn, EMBED, 1) == 0
