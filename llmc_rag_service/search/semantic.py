"""Semantic ranking: the query's embedding against every stored vector (cosine, brute force).

Why brute force with numpy (measured in bench/RESULTS-search.md): at 100k x
768 one matrix-vector product is a few tens of milliseconds, far under the
100 ms budget, with no index to build or keep in sync and nothing beyond a
stock Python (SQLite extension loading is often disabled, so sqlite-vec and
friends are out). The matrix lives in memory as :data:`VECTOR_DTYPE`:

- float32: fastest product, but 300 MB at 100k x 768;
- float16: half of that, but numpy has no half-precision BLAS, so every query
  converts the matrix back to float32 (~10x slower than float32);
- int8 with one float32 scale per row (the default): a quarter of float32
  (77 MB at 100k x 768), about twice float32's time, cosine error ~1e-3.

Rows and query are L2-normalised, so the dot product is the cosine. The
matrix is cached in the process, keyed by (database file, model, input
version) and checked against the store's (count, max rowid) of those vectors,
so repeated queries (the MCP server) do not reload it; at most
:data:`CACHE_ENTRIES` matrices are kept.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from llmc_rag_service.store import reader, searchview, vectors
from llmc_rag_service.store.searchview import SpanFilter

#: In-memory element type of the vector matrix: "int8", "float16" or "float32".
VECTOR_DTYPE = "int8"
#: Matrices kept in the process cache.
CACHE_ENTRIES = 2
#: Rows multiplied per step (bounds the float32 scratch of int8/float16 matrices).
SCORE_CHUNK = 8192

EmbedQuery = Callable[[str], "np.ndarray | list[float]"]


class SemanticUnavailable(Exception):
    """Semantic ranking cannot be used for this query; the message says why
    (it becomes the ``degraded`` field of the answer)."""


@dataclass
class VectorIndex:
    """One model's vectors in memory.

    Attributes:
        hashes: Span hash of each row.
        matrix: ``[n, dim]`` normalised rows as :data:`VECTOR_DTYPE` (int8 rows scaled by ``scales``).
        scales: ``[n]`` float32 factor of each row (1 for float types).
    """

    hashes: list[str]
    matrix: np.ndarray
    scales: np.ndarray

    @property
    def dim(self) -> int:
        return self.matrix.shape[1] if self.matrix.ndim == 2 else 0

    @classmethod
    def build(cls, count: int, parts: Iterable[tuple[list[str], np.ndarray]], dtype: str = VECTOR_DTYPE) -> VectorIndex:
        """Fill an index from ``(hashes, float32 [k, dim])`` batches (``count`` rows expected at most)."""
        hashes: list[str] = []
        matrix, scales = np.zeros((0, 0), dtype=dtype), np.zeros(count, dtype=np.float32)
        for part_hashes, part in parts:
            if matrix.size == 0:
                matrix = np.empty((count, part.shape[1]), dtype=dtype)
            rows = slice(len(hashes), len(hashes) + len(part_hashes))
            matrix[rows], scales[rows] = _encode(part, dtype)
            hashes += part_hashes
        return cls(hashes, matrix[:len(hashes)], scales[:len(hashes)])

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Cosine similarity of every row with the normalised float32 ``query`` ([n] float32)."""
        out = np.empty(len(self.hashes), dtype=np.float32)
        for start in range(0, len(self.hashes), SCORE_CHUNK):
            block = self.matrix[start:start + SCORE_CHUNK].astype(np.float32, copy=False)
            out[start:start + SCORE_CHUNK] = block @ query
        return out * self.scales

    @property
    def nbytes(self) -> int:
        return self.matrix.nbytes + self.scales.nbytes


def _normalised(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.where(norms == 0, 1, norms)


def _encode(rows: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    rows = _normalised(rows.astype(np.float32))
    if dtype != "int8":
        return rows.astype(dtype), np.ones(len(rows), dtype=np.float32)
    peak = np.abs(rows).max(axis=1)
    scale = np.where(peak == 0, 1, peak / 127).astype(np.float32)
    return np.round(rows / scale[:, None]).astype(np.int8), scale


_cache: OrderedDict[tuple, tuple[tuple[int, int], VectorIndex]] = OrderedDict()
_cache_lock = threading.Lock()


def vector_index(conn: sqlite3.Connection, embed_model: str, input_version: int,
                 dtype: str = VECTOR_DTYPE) -> VectorIndex:
    """The cached index of one model's vectors, reloaded when the store's set changed."""
    key = (reader.database_file(conn), embed_model, input_version, dtype)
    with vectors.snapshot(conn):
        current = vectors.stamp(conn, embed_model, input_version)
        with _cache_lock:
            hit = _cache.get(key)
            if hit and hit[0] == current:
                _cache.move_to_end(key)
                return hit[1]
        index = VectorIndex.build(current[0], vectors.iter_embeddings(conn, embed_model, input_version), dtype)
    with _cache_lock:
        _cache[key] = (current, index)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return index


def query_vector(raw: object, dim: int, embed_model: str) -> np.ndarray:
    """The embedder's answer as a normalised float32 vector; SemanticUnavailable if unusable."""
    try:
        vector = np.asarray(raw, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise SemanticUnavailable(f"the query embedding is not a list of numbers ({exc})") from None
    if vector.size != dim:
        raise SemanticUnavailable(f"the query embedding has dimension {vector.size}, "
                                  f"but the stored vectors of {embed_model} have {dim}")
    if not np.isfinite(vector).all():
        raise SemanticUnavailable("the query embedding has NaN or infinite values")
    return _normalised(vector)


def ranked(conn: sqlite3.Connection, index: VectorIndex, query: np.ndarray, filt: SpanFilter,
           depth: int) -> list[tuple[int, float]]:
    """Span ids best first by cosine, at most ``depth``: ``(span_id, cosine)``.

    Candidates are taken best-first from the matrix and mapped to current spans
    passing ``filt`` (vectors of code that is gone are skipped); the candidate
    pool grows eightfold until ``depth`` spans are found or the matrix is exhausted.
    """
    scores = index.scores(query)
    pool, found = max(depth * 2, 64), []
    while len(scores):
        pool = min(pool, len(scores))
        top = np.argpartition(-scores, pool - 1)[:pool] if pool < len(scores) else np.arange(len(scores))
        by_hash = {index.hashes[i]: float(scores[i]) for i in top}
        rows = searchview.spans_of_hashes(conn, list(by_hash), filt)
        found = sorted(((by_hash[h], -width, span_id) for span_id, h, width in rows), reverse=True)
        if len(found) >= depth or pool >= len(scores):
            break
        pool *= 8
    return [(span_id, score) for score, _, span_id in found[:depth]]


class PendingEmbedding:
    """The query's embedding, computed on a daemon thread so that lexical work
    overlaps it and a hung embedder costs at most the budget.

    Args:
        embed_query: ``text -> vector``; may raise (its message is reported).
        text: The query.
        budget_s: Seconds from now that :meth:`result` waits at most.
        clock: Monotonic clock in seconds (injected by tests).
    """

    def __init__(self, embed_query: EmbedQuery, text: str, budget_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.budget_s, self._clock = budget_s, clock
        self._deadline = clock() + budget_s
        self._done = threading.Event()
        self._value: object = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, args=(embed_query, text), name="embed-query", daemon=True).start()

    def _run(self, embed_query: EmbedQuery, text: str) -> None:
        try:
            self._value = embed_query(text)
        except BaseException as exc:  # any failure of the embedder becomes a degraded answer
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> object:
        """The raw vector; SemanticUnavailable if the embedder failed or the budget ran out."""
        if not self._done.wait(max(0.0, self._deadline - self._clock())):
            raise SemanticUnavailable(f"the query embedding took longer than {self.budget_s:g} s")
        if self._error is not None:
            raise SemanticUnavailable(f"the query could not be embedded: {self._error}")
        return self._value
