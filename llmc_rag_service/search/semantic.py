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

Rows and query are L2-normalised, so the dot product is the cosine. A new
process starts from the store's packs (:mod:`store.vector_packs`: the int8
rows as a few large blobs, kept by the writer) plus the few rows written
after them, so a fresh ``llmc-rag search`` loads 100k vectors in tens of
milliseconds. The matrix is cached in the process, keyed by (database file,
model, input version, dtype), so repeated queries (the MCP server) do not
reload it: each query reads the store's O(1) stamp (epoch, max rowid);
vectors written since are appended (a replaced vector's old row goes stale
and is skipped), and a delete or in-place update (epoch changed) rebuilds
it. At most :data:`CACHE_ENTRIES` matrices are kept.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from llmc_rag_service.store import reader, searchview, vector_packs, vectors
from llmc_rag_service.store.searchview import SpanFilter

#: In-memory element type of the vector matrix: "int8", "float16" or "float32".
VECTOR_DTYPE = "int8"
#: Matrices kept in the process cache.
CACHE_ENTRIES = 2
#: Rows converted and multiplied per step: the float32 copy of a step stays in the CPU cache.
SCORE_CHUNK = 1024

EmbedQuery = Callable[[str], "np.ndarray | list[float]"]


class SemanticUnavailable(Exception):
    """Semantic ranking cannot be used for this query; the message says why
    (it becomes the ``degraded`` field of the answer)."""


class VectorIndex:
    """One model's vectors in memory, grown in place as new vectors arrive.

    Row ``i`` holds the normalised vector of span hash ``hash_at(i)`` as
    ``dtype`` (int8 rows are multiplied by their float32 scale) and the
    ``embeddings`` rowid it was read from (-1: unknown). Rows are only
    appended: a hash embedded again gets a new row and its old row stays,
    *stale*; :func:`ranked` drops a candidate whose rowid is no longer the
    hash's current one (``source`` names the model and version to check; None:
    no check). :meth:`add` may run while another thread is in :meth:`scores`:
    a reader uses the arrays and row count it started with.
    """

    def __init__(self, dtype: str = VECTOR_DTYPE, source: tuple[str, int] | None = None):
        self.dtype, self.source = dtype, source
        #: The rowid up to which the store's packs were loaded (0: none).
        self.packed_upto = 0
        self._lock = threading.Lock()
        self._state: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int] = (
            np.zeros((0, 0), dtype), np.zeros(0, np.float32), np.zeros(0, vector_packs.HASH_DTYPE),
            np.zeros(0, np.int64), 0)

    def __len__(self) -> int:
        n: int = self._state[4]
        return n

    @property
    def dim(self) -> int:
        dim: int = self._state[0].shape[1]
        return dim

    @property
    def nbytes(self) -> int:
        """Bytes of the rows in use (matrix and scales)."""
        matrix, scales, _, _, n = self._state
        used: int = n * (matrix.shape[1] * matrix.itemsize + scales.itemsize)
        return used

    def hash_at(self, row: int) -> str:
        """The span hash of row ``row``."""
        return str(self._state[2][row].decode("ascii"))

    def rowid_at(self, row: int) -> int:
        """The ``embeddings`` rowid row ``row`` was read from (-1: unknown)."""
        return int(self._state[3][row])

    def has(self, span_hash: str) -> bool:
        """Whether some row holds ``span_hash`` (stale or not)."""
        hashes, n = self._state[2], self._state[4]
        return bool((hashes[:n] == span_hash.encode("ascii")).any())

    def reserve(self, rows: int, dim: int) -> None:
        """Make room for ``rows`` rows of ``dim`` values without regrowing."""
        with self._lock:
            self._grow(rows, dim)

    def _grow(self, rows: int, dim: int) -> None:
        matrix, scales, hashes, rowids, n = self._state
        if rows <= len(matrix) and matrix.shape[1] == dim:
            return
        size = max(rows, len(matrix) * 3 // 2)
        bigger = np.empty((size, dim), self.dtype)
        more_scales, more_hashes = np.empty(size, np.float32), np.empty(size, vector_packs.HASH_DTYPE)
        more_rowids = np.empty(size, np.int64)
        if n:
            bigger[:n], more_scales[:n], more_hashes[:n], more_rowids[:n] = (
                matrix[:n], scales[:n], hashes[:n], rowids[:n])
        self._state = (bigger, more_scales, more_hashes, more_rowids, n)

    def add(self, hashes: list[str], rows: np.ndarray, rowids: np.ndarray | None = None) -> None:
        """Append the float32 vectors ``rows [k, dim]`` of ``hashes`` (read from ``rowids``)."""
        codes, factors = vector_packs.encode(rows, self.dtype)
        ids = np.full(len(hashes), -1, np.int64) if rowids is None else rowids
        self.append_codes(vector_packs.hash_array(hashes), ids, codes, factors)

    def append_codes(self, hashes: np.ndarray, rowids: np.ndarray, codes: np.ndarray, scales: np.ndarray) -> None:
        """Append encoded rows (as :func:`store.vector_packs.encode` makes them)."""
        if len(self) and codes.shape[1] != self.dim:
            raise ValueError(f"vectors of dimension {codes.shape[1]} added to an index of dimension {self.dim}")
        with self._lock:
            n = self._state[4]
            self._grow(n + len(codes), codes.shape[1])
            matrix, factors, names, ids, _ = self._state
            end = n + len(codes)
            matrix[n:end], factors[n:end], names[n:end], ids[n:end] = codes, scales, hashes, rowids
            self._state = (matrix, factors, names, ids, end)

    def adopt(self, packed: vector_packs.Packed) -> None:
        """Take the arrays of a pack load as this (empty) index's rows, without a copy."""
        if len(self):
            raise ValueError("only an empty index adopts packs")
        with self._lock:
            self._state = (packed.codes, packed.scales, packed.hashes, packed.rowids, packed.rows)
            self.packed_upto = packed.packed_upto

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Cosine similarity of every row with the normalised float32 ``query`` ([n] float32)."""
        matrix, scales, _, _, n = self._state
        out = np.empty(n, dtype=np.float32)
        for start in range(0, n, SCORE_CHUNK):
            stop = min(n, start + SCORE_CHUNK)
            # einsum, not BLAS: a matrix-vector product is memory-bound, and a
            # multi-threaded BLAS on busy cores was 2-4x slower (bench/search.py).
            out[start:stop] = np.einsum("ij,j->i", matrix[start:stop].astype(np.float32, copy=False), query)
        scores: np.ndarray = out * scales[:n]
        return scores


@dataclass
class _Entry:
    epoch: int
    max_rowid: int
    index: VectorIndex


_cache: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
_cache_lock = threading.Lock()


def vector_index(conn: sqlite3.Connection, embed_model: str, input_version: int,
                 dtype: str = VECTOR_DTYPE) -> VectorIndex:
    """The cached in-memory index of one model's vectors, brought up to date:
    rows added since the last call are appended; after a delete or an in-place
    update (the epoch changed) it is rebuilt from the store. A new index starts
    from the store's packs (:mod:`store.vector_packs`) and reads only the rows
    packed after them."""
    key = (reader.database_file(conn), embed_model, input_version, dtype)
    with vectors.snapshot(conn), _cache_lock:
        epoch, top = vectors.stamp(conn)
        entry = _cache.get(key)
        if entry is None or entry.epoch != epoch:
            entry = _Entry(epoch, 0, _from_packs(conn, embed_model, input_version, dtype))
            entry.max_rowid = entry.index.packed_upto
        if top > entry.max_rowid:
            index = entry.index
            for hashes, rows, rowids in vectors.iter_embedding_rows(
                    conn, embed_model, input_version, after_rowid=entry.max_rowid, dim=len(index) and index.dim or None):
                index.add(hashes, rows, rowids)
            entry.max_rowid = top
        _cache[key] = entry
        _cache.move_to_end(key)
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
        return entry.index


def _from_packs(conn: sqlite3.Connection, embed_model: str, input_version: int, dtype: str) -> VectorIndex:
    """A new index holding the store's packs (int8 only), with room for the tail."""
    index = VectorIndex(dtype, (embed_model, input_version))
    if dtype == "int8" and vector_packs.has_packs(conn):
        after = vector_packs.packed_upto(conn, embed_model, input_version)
        packed = vector_packs.load(conn, embed_model, input_version,
                                   spare=vectors.count(conn, embed_model, input_version, after_rowid=after))
        if packed is not None and packed.rows:
            index.adopt(packed)
            return index
    dim = vectors.model_dim(conn, embed_model)
    if dim:
        index.reserve(vectors.count(conn, embed_model, input_version), dim)
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
    return vector_packs.normalised(vector)


def ranked(conn: sqlite3.Connection, index: VectorIndex, query: np.ndarray, filt: SpanFilter,
           depth: int) -> list[tuple[int, float]]:
    """Span ids best first by cosine, at most ``depth``: ``(span_id, cosine)``.

    Candidates are taken best-first from the matrix; stale rows (their vector
    was replaced or deleted since: see :class:`VectorIndex`) are dropped, and
    the rest mapped to current spans passing ``filt`` (vectors of code that is
    gone are skipped); the candidate pool grows eightfold until ``depth``
    spans are found or the matrix is exhausted.
    """
    scores = index.scores(query)
    pool, found = max(depth * 2, 64), []
    while len(scores):
        pool = min(pool, len(scores))
        top = np.argpartition(-scores, pool - 1)[:pool] if pool < len(scores) else np.arange(len(scores))
        by_hash = _current(conn, index, top, scores)
        rows = searchview.spans_of_hashes(conn, list(by_hash), filt)
        found = sorted(((by_hash[h], -width, span_id) for span_id, h, width in rows), reverse=True)
        if len(found) >= depth or pool >= len(scores):
            break
        pool *= 8
    return [(span_id, score) for score, _, span_id in found[:depth]]


def _current(conn: sqlite3.Connection, index: VectorIndex, rows: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """``span_hash -> cosine`` of the candidate ``rows`` that are not stale."""
    hashes = [index.hash_at(i) for i in rows]
    current = vectors.current_rowids(conn, *index.source, set(hashes)) if index.source else {}
    by_hash: dict[str, float] = {}
    for row, span_hash in zip(rows, hashes):
        rowid = index.rowid_at(row)
        if index.source and rowid >= 0 and current.get(span_hash) != rowid:
            continue
        by_hash[span_hash] = max(float(scores[row]), by_hash.get(span_hash, -2.0))
    return by_hash


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
