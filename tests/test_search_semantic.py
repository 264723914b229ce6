"""Semantic and hybrid search: RRF ranks, degraded answers, model changes, the vector cache."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from llmc_rag_service.search import semantic
from llmc_rag_service.search.fusion import RRF_K, narrowest_first, rrf
from llmc_rag_service.store import vectors
from tests.searchkit import DIM, EMBED, SearchRepo, embed

CODE = {
    "net/sock.py": "def open_socket(host, port):\n    return socket.create_connection((host, port))\n",
    "net/retry.py": "def retry_with_backoff(call):\n    for attempt in range(5):\n        call()\n",
    "cfg/load.py": "def load_settings(path):\n    return yaml.safe_load(open(path))\n",
}


@pytest.fixture
def sr(tmp_path):
    made = SearchRepo(tmp_path, CODE)
    made.embed_all()
    yield made
    made.close()


def vector_of(sr: SearchRepo, name: str) -> list[float]:
    span_hash = next(h for h in sr.hashes() if sr.store.span_text(h)["name"] == name)
    with sr.reader() as conn:
        hashes, matrix = vectors.load_embeddings(conn, EMBED, 1)
    return matrix[hashes.index(span_hash)].tolist()


def test_rrf_sums_reciprocal_ranks():
    """An id in both lists scores 1/(k+r1) + 1/(k+r2); ties go to the better best rank."""
    fused = dict(rrf([1, 2, 3], [3, 4]))
    assert fused[3] == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 1))
    assert fused[4] == pytest.approx(1 / (RRF_K + 2))
    assert [i for i, _ in rrf([1, 2], [2, 1])] == [1, 2]


def test_narrowest_first_moves_a_member_above_its_container():
    """A span inside a higher-ranked span of the same file moves right above it; others keep their order."""
    items = [("a.py", 1, 50), ("b.py", 1, 9), ("a.py", 10, 20), ("a.py", 60, 70)]
    assert narrowest_first(items, lambda t: (t[0], t[1], t[2])) == [
        ("a.py", 10, 20), ("a.py", 1, 50), ("b.py", 1, 9), ("a.py", 60, 70)]


def test_hybrid_reports_both_ranks_and_fuses_them(sr):
    """A span found only by meaning (the embedder points at it) joins the lexical hits, with its semantic rank."""
    target = vector_of(sr, "load_settings")
    result = sr.search("socket", embed_query=lambda text: target)
    assert result.mode == "hybrid" and result.degraded is None
    hits = {h.name: h for h in result.hits}
    assert hits["open_socket"].lexical_rank == 1
    assert hits["load_settings"].semantic_rank == 1 and hits["load_settings"].lexical_rank is None
    both = hits["open_socket"]
    assert both.score == pytest.approx(1 / (RRF_K + 1) + 1 / (RRF_K + both.semantic_rank), abs=1e-6)


def test_semantic_mode_ranks_by_cosine(sr):
    """mode=semantic ranks by the query embedding alone; its best hit has cosine ~1 with itself."""
    result = sr.search("ignored words", mode="semantic", embed_query=lambda text: vector_of(sr, "retry_with_backoff"))
    assert result.mode == "semantic" and result.hits[0].name == "retry_with_backoff"
    assert result.hits[0].score == pytest.approx(1.0, abs=0.02) and result.hits[0].lexical_rank is None


def test_hashed_embedder_finds_by_shared_words(sr):
    """With the hashed bag-of-words embedder, 'connection to a host' finds open_socket semantically."""
    assert sr.search("connection to a host port", mode="semantic").hits[0].name == "open_socket"


def _blocked(release: threading.Event):
    def embed_query(text):
        release.wait(10)
        return embed(text)
    return embed_query


@pytest.mark.parametrize("case, reason", [
    ("off", "search.embed_model is null"),
    ("no_vectors", "no embeddings of other-model are computed yet"),
    ("no_embedder", "no query embedder"),
    ("raises", "could not be embedded: connection refused"),
    ("wrong_dim", f"dimension 3, but the stored vectors of {EMBED} have {DIM}"),
    ("nan", "NaN or infinite"),
    ("not_numbers", "not a list of numbers"),
    ("timeout", "took longer than 0.2 s"),
])
@pytest.mark.parametrize("mode", ["hybrid", "semantic"])
def test_unavailable_embeddings_give_a_lexical_answer_saying_why(sr, case, reason, mode):
    """Whatever stops semantic ranking, the answer is the lexical one with degraded naming the cause."""
    release = threading.Event()

    def refuse(text):
        raise ConnectionError("connection refused")

    kwargs = {
        "off": {"embed_model": None}, "no_vectors": {"embed_model": "other-model"}, "no_embedder": {"embed_query": None},
        "raises": {"embed_query": refuse}, "wrong_dim": {"embed_query": lambda t: [1.0, 0.0, 0.0]},
        "nan": {"embed_query": lambda t: [float("nan")] * DIM}, "not_numbers": {"embed_query": lambda t: {"a": 1}},
        "timeout": {"embed_query": _blocked(release), "budget_s": 0.2},
    }[case]
    try:
        result = sr.search("socket", mode=mode, **kwargs)
    finally:
        release.set()
    assert result.mode == "lexical" and reason in result.degraded
    assert [h.name for h in result.hits] == ["open_socket"] and result.hits[0].semantic_rank is None


def test_lexical_mode_never_calls_the_embedder(sr):
    """mode=lexical does not embed the query and is not degraded."""
    def explode(text):
        raise AssertionError("embedder called")

    result = sr.search("socket", mode="lexical", embed_query=explode)
    assert result.degraded is None and result.hits[0].name == "open_socket"


def test_only_the_configured_model_and_input_version_are_ranked(sr):
    """Vectors of another model or input version are never mixed into the ranking."""
    old = vector_of(sr, "open_socket")
    rows = [(h, "old-model", 1, old) for h in sr.hashes()]  # every span looks like open_socket to old-model
    vectors.put_embeddings(sr.store, rows)
    settings_target = vector_of(sr, "load_settings")
    result = sr.search("zzz", mode="semantic", embed_query=lambda t: settings_target)
    assert result.hits[0].name == "load_settings" and result.hits[0].score == pytest.approx(1.0, abs=0.02)
    v2 = [(h, EMBED, 2, old) for h in sr.hashes()]  # version 2: everything identical
    vectors.put_embeddings(sr.store, v2)
    result = sr.search("zzz", mode="semantic", embed_query=lambda t: settings_target, input_version=1)
    assert result.hits[0].name == "load_settings"
    flat = sr.search("zzz", mode="semantic", embed_query=lambda t: settings_target)  # newest version: 2
    assert len({h.score for h in flat.hits}) == 1


def test_cache_reloads_when_vectors_change(sr):
    """A vector replaced after a search is used by the next search (the cache checks the store's stamp)."""
    query = vector_of(sr, "open_socket")
    assert sr.search("x", mode="semantic", embed_query=lambda t: query).hits[0].name == "open_socket"
    retry_hash = next(h for h in sr.hashes() if sr.store.span_text(h)["name"] == "retry_with_backoff")
    vectors.put_embeddings(sr.store, [(retry_hash, EMBED, 1, np.asarray(query) * 3)])
    names = [h.name for h in sr.search("x", mode="semantic", embed_query=lambda t: query).hits]
    assert set(names[:2]) == {"open_socket", "retry_with_backoff"}


def test_cache_appends_new_vectors_and_rebuilds_after_a_delete(sr):
    """A vector added after a search is appended to the cached matrix; a deleted one is gone after the rebuild."""
    target = vector_of(sr, "open_socket")
    with sr.reader() as conn:
        first = semantic.vector_index(conn, EMBED, 1)
    assert len(first) == 3
    sr.write({"net/extra.py": "def close_socket(sock):\n    sock.close()\n"})
    sr.embed_all()
    with sr.reader() as conn:
        grown = semantic.vector_index(conn, EMBED, 1)
    # embed_all embedded the 3 old spans again: their new rows are appended and the old ones go stale
    assert grown is first and len(grown) == 7
    names = [h.name for h in sr.search("x", mode="semantic", embed_query=lambda t: target).hits]
    assert len(names) == len(set(names)) == 4 and names[0] == "open_socket"
    vectors.put_embeddings(sr.store, [("gone", EMBED, 1, target)])
    sr.store.conn.execute("DELETE FROM embeddings WHERE span_hash = 'gone'")
    with sr.reader() as conn:
        rebuilt = semantic.vector_index(conn, EMBED, 1)
    assert rebuilt is not first and len(rebuilt) == 4 and not rebuilt.has("gone")


def test_index_refuses_rows_of_another_dimension():
    """Adding vectors of another dimension to an index raises instead of corrupting it."""
    index = semantic.VectorIndex()
    index.add(["a"], np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="dimension 3"):
        index.add(["b"], np.ones((1, 3), np.float32))


def test_vectors_of_deleted_code_are_not_returned(sr):
    """An embedding whose span is gone from every file is skipped."""
    target = vector_of(sr, "load_settings")
    sr.delete("cfg/load.py")
    names = [h.name for h in sr.search("x", mode="semantic", embed_query=lambda t: target).hits]
    assert "load_settings" not in names and names


@pytest.mark.parametrize("dtype", ["int8", "float16"])
def test_compact_matrices_rank_like_float32(dtype):
    """int8 (per-row scale) and float16 matrices give cosines within 0.01 of float32 and the same best match."""
    rng = np.random.default_rng(7)
    matrix = rng.standard_normal((2000, 96)).astype(np.float32)
    hashes = [f"h{i}" for i in range(2000)]
    exact, compact = semantic.VectorIndex("float32"), semantic.VectorIndex(dtype)
    exact.add(hashes, matrix)
    compact.add(hashes[:1000], matrix[:1000])  # grows in place on the second batch
    compact.add(hashes[1000:], matrix[1000:])
    for row in (3, 1500):
        query = semantic.query_vector(matrix[row] + 0.1 * rng.standard_normal(96), 96, "m")
        a, b = exact.scores(query), compact.scores(query)
        assert np.abs(a - b).max() < 0.01 and int(np.argmax(b)) == row
    assert compact.nbytes < exact.nbytes


def test_hybrid_hits_that_hold_none_of_the_words_are_said_to_be_by_meaning_only(sr):
    """Semantic ranking always has nearest neighbours: when no hybrid hit holds a word of the query,
    the plain output says so on stderr instead of passing them off as matches; one lexical hit is enough
    to say nothing."""
    import io

    from llmc_rag_service.search.cli_view import print_result

    target = vector_of(sr, "load_settings")
    for query, said in (("zebra giraffe", True), ("socket", False)):
        out, err = io.StringIO(), io.StringIO()
        print_result(sr.search(query, embed_query=lambda text: target), out, err, as_json=False)
        assert out.getvalue()  # the hits are shown either way
        assert (err.getvalue() == f"llmc-rag: no span holds the words of {query!r}; these are the nearest by meaning\n") \
            is said, err.getvalue()


def test_semantic_hits_that_hold_none_of_the_words_are_said_to_be_by_meaning_only(sr):
    """--mode semantic says it too when no hit holds a word of the query (and not when one does);
    --json is unchanged (no such note or field)."""
    import io
    import json

    from llmc_rag_service.search.cli_view import print_result

    target = vector_of(sr, "load_settings")
    for query, said in (("zebra giraffe", True), ("socket", False)):
        result = sr.search(query, mode="semantic", embed_query=lambda text: target)
        assert result.mode == "semantic" and result.hits
        out, err = io.StringIO(), io.StringIO()
        print_result(result, out, err, as_json=False)
        assert (err.getvalue() == f"llmc-rag: no span holds the words of {query!r}; these are the nearest by meaning\n") \
            is said, err.getvalue()
        out, err = io.StringIO(), io.StringIO()
        print_result(result, out, err, as_json=True)
        assert set(json.loads(out.getvalue())) == {"query", "mode", "degraded", "hits"} and err.getvalue() == ""
