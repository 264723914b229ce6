"""Embedding vectors of span contents (table ``embeddings``, created by migration 2).

Schema (the contract the embedding pipeline codes against)::

    embeddings(span_hash TEXT, embed_model TEXT, input_version INTEGER,
               dim INTEGER, vector BLOB, created_at REAL,
               PRIMARY KEY(span_hash, embed_model, input_version))

``vector`` is ``dim`` little-endian float32 values (``dim * 4`` bytes) as
returned by Ollama ``POST /api/embed`` ("embeddings", one list of floats per
input); ``created_at`` is Unix time in seconds. Vectors are keyed by content,
so moved or duplicated code shares one; a change of embedding model or of
what text is embedded (``input_version``) makes new rows that are never mixed
with the old ones in one ranking.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from llmc_rag_service.store import vector_packs

#: Rows read per step by :func:`iter_embeddings`.
READ_BATCH = 4096

EmbeddingRow = tuple[str, str, int, Any]  # (span_hash, embed_model, input_version, vector)


def _checked(row: EmbeddingRow, dims: dict[str, int]) -> tuple[str, str, int, int, bytes]:
    span_hash, model, version, vector = row
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow becomes inf, refused below
        array = np.asarray(vector, dtype="<f4")
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"embedding of span {span_hash} (model {model}) is not a non-empty list of numbers")
    if not np.isfinite(array).all():
        raise ValueError(f"embedding of span {span_hash} (model {model}) has NaN or infinite values")
    expected = dims.setdefault(model, array.size)
    if array.size != expected:
        raise ValueError(f"embedding of span {span_hash} has dimension {array.size}, "
                         f"but model {model} has dimension {expected}")
    return span_hash, model, int(version), array.size, array.tobytes()


def model_dim(conn: sqlite3.Connection, embed_model: str) -> int | None:
    """The dimension of the stored vectors of ``embed_model``, or None if it has none."""
    row = conn.execute("SELECT dim FROM embeddings WHERE embed_model = ? LIMIT 1", (embed_model,)).fetchone()
    return row[0] if row else None


def put_embeddings(store_or_conn: Any, rows: Sequence[EmbeddingRow]) -> int:
    """Insert or replace vectors, all or none.

    Args:
        store_or_conn: A ``Store`` (its own write transaction is used) or a
            connection (used as is when inside a transaction, else wrapped in one).
        rows: ``(span_hash, embed_model, input_version, vector)``; vector is
            anything ``np.asarray`` turns into a 1-D float32 array.

    Returns the number of rows written.

    Raises:
        ValueError: a vector is empty, has NaN or infinite values (also after
            the cast to float32), or its dimension differs from the model's
            stored vectors or from another row of the batch; nothing is written.
    """
    if hasattr(store_or_conn, "write"):
        with store_or_conn.write() as tx:
            return _put(tx, rows)
    conn: sqlite3.Connection = store_or_conn
    if conn.in_transaction:
        return _put(conn, rows)
    conn.execute("BEGIN IMMEDIATE")
    try:
        written = _put(conn, rows)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return written


def _put(tx: sqlite3.Connection, rows: Sequence[EmbeddingRow]) -> int:
    dims: dict[str, int] = {}
    for model in {row[1] for row in rows}:
        stored = model_dim(tx, model)
        if stored is not None:
            dims[model] = stored
    checked = [_checked(row, dims) for row in rows]
    now = time.time()
    # REPLACE gives the row a new, higher rowid: readers of newer rows see it (see stamp).
    tx.executemany(
        "INSERT OR REPLACE INTO embeddings(span_hash, embed_model, input_version, dim, vector, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)", [(*row, now) for row in checked])
    for model, version in {(row[1], row[2]) for row in checked}:
        vector_packs.refresh(tx, model, version)  # same transaction: packs never lag a reader's snapshot
    return len(checked)


def pack_all(store: Any, only: tuple[str, int] | None = None) -> int:
    """Pack the unpacked vectors (a store written before packs, or a writer that
    fell behind) of every model and version, or ``only`` one ``(model, version)``,
    one bounded write transaction at a time; returns how many."""
    total = 0
    for model, version, _ in stored_models(store.conn):
        if only is not None and (model, version) != only:
            continue
        while True:
            with store.write() as tx:
                packed = vector_packs.refresh(tx, model, version)
            total += packed
            if not packed:
                break
    return total


def current_rowids(conn: sqlite3.Connection, embed_model: str, input_version: int,
                   span_hashes: Iterable[str]) -> dict[str, int]:
    """``span_hash -> rowid`` of the current vector of each hash that has one
    (a packed vector whose rowid differs was replaced or deleted since)."""
    rows = conn.execute("SELECT span_hash, rowid FROM embeddings WHERE embed_model = ? AND input_version = ?"
                        " AND span_hash IN (SELECT value FROM json_each(?))",
                        (embed_model, input_version, json.dumps(list(span_hashes))))
    return {r[0]: r[1] for r in rows}


def stamp(conn: sqlite3.Connection) -> tuple[int, int]:
    """``(epoch, max rowid)`` of the whole table, in O(log n): rows are only
    ever appended with a new, higher rowid (REPLACE re-inserts), so a reader
    that has every row up to the max rowid only needs the newer ones; the
    epoch (bumped by triggers on DELETE and UPDATE) says it must start over."""
    row = conn.execute("SELECT (SELECT n FROM embeddings_epoch), (SELECT COALESCE(MAX(rowid), 0) FROM embeddings)"
                       ).fetchone()
    return row[0], row[1]


def count(conn: sqlite3.Connection, embed_model: str, input_version: int, after_rowid: int = 0) -> int:
    """How many vectors one model and input version has with rowid > ``after_rowid`` (scans their index entries)."""
    return conn.execute("SELECT COUNT(*) FROM embeddings WHERE embed_model = ? AND input_version = ? AND rowid > ?",
                        (embed_model, input_version, after_rowid)).fetchone()[0]


def has_vectors(conn: sqlite3.Connection, embed_model: str, input_version: int) -> bool:
    """Whether one model and input version has any vector (O(log n))."""
    return conn.execute("SELECT 1 FROM embeddings WHERE embed_model = ? AND input_version = ? LIMIT 1",
                        (embed_model, input_version)).fetchone() is not None


def latest_input_version(conn: sqlite3.Connection, embed_model: str) -> int | None:
    """The highest ``input_version`` stored for ``embed_model``, or None."""
    return conn.execute("SELECT MAX(input_version) FROM embeddings WHERE embed_model = ?",
                        (embed_model,)).fetchone()[0]


def stored_models(conn: sqlite3.Connection) -> list[tuple[str, int, int]]:
    """``(embed_model, input_version, count)`` of every set of vectors in the store."""
    return [tuple(r) for r in conn.execute(
        "SELECT embed_model, input_version, COUNT(*) FROM embeddings GROUP BY embed_model, input_version")]


def iter_embeddings(conn: sqlite3.Connection, embed_model: str, input_version: int, batch: int = READ_BATCH,
                    after_rowid: int = 0, dim: int | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
    """The vectors of one model and input version with rowid > ``after_rowid``
    in rowid order, ``batch`` rows at a time: ``(span_hashes, float32 [k, dim])``.
    Rows whose dim differs from ``dim`` (default: the first row's) are skipped
    (put_embeddings never writes such rows)."""
    for hashes, matrix, _ in iter_embedding_rows(conn, embed_model, input_version, batch, after_rowid, dim):
        yield hashes, matrix


def iter_embedding_rows(conn: sqlite3.Connection, embed_model: str, input_version: int, batch: int = READ_BATCH,
                        after_rowid: int = 0, dim: int | None = None
                        ) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """As :func:`iter_embeddings`, with the rowid of each vector: ``(span_hashes, float32 [k, dim], int64 [k])``."""
    cur = conn.execute("SELECT span_hash, dim, vector, rowid FROM embeddings WHERE embed_model = ?"
                       " AND input_version = ? AND rowid > ? ORDER BY rowid", (embed_model, input_version, after_rowid))
    while rows := cur.fetchmany(batch):
        dim = dim or rows[0][1]
        kept = [r for r in rows if r[1] == dim and len(r[2]) == dim * 4]
        if kept:
            matrix = np.frombuffer(b"".join(r[2] for r in kept), dtype="<f4").reshape(len(kept), dim)
            yield [r[0] for r in kept], matrix, np.array([r[3] for r in kept], np.int64)


def load_embeddings(conn: sqlite3.Connection, embed_model: str, input_version: int,
                    dtype: type = np.float32) -> tuple[list[str], np.ndarray]:
    """All vectors of one model and input version: ``(span_hashes, matrix [n, dim])``
    with ``matrix`` of ``dtype`` (float32 or float16), filled batch by batch so
    the peak is the matrix plus one batch. ``n == 0`` gives a ``[0, 0]`` matrix."""
    with snapshot(conn):  # the count and the rows from one state of the database
        total = count(conn, embed_model, input_version)
        hashes: list[str] = []
        matrix: np.ndarray = np.zeros((0, 0), dtype=dtype)
        for part_hashes, part in iter_embeddings(conn, embed_model, input_version):
            if matrix.size == 0:
                matrix = np.empty((total, part.shape[1]), dtype=dtype)
            matrix[len(hashes):len(hashes) + len(part_hashes)] = part
            hashes += part_hashes
    return hashes, matrix[:len(hashes)]


@contextlib.contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """A read transaction (unless one is open already): every read inside sees one state."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")
