"""Packed vectors: the embeddings of one model as a few large int8 blobs, so a new process loads them fast.

Why (measured in bench/RESULTS-search.md): a fresh ``llmc-rag search`` used
to read every row of ``embeddings`` (100k rows of 3 KB float32) and quantise
it, 1.3-1.9 s before the first semantic ranking; SQLite reads a few large
blobs at memory speed but pays per row. So the writer keeps a second,
derived copy of each model's vectors in ``vector_packs`` (migration 7)::

    vector_packs(embed_model, input_version, seq, dim, rows,
                 hashes BLOB,   -- rows x 64 bytes: span hashes, ASCII, NUL-padded
                 rowids BLOB,   -- rows x int64: the embeddings rowid each vector was packed from
                 codes BLOB,    -- rows x dim int8: the L2-normalised vector / scale, rounded
                 scales BLOB,   -- rows x float32: the scale (max |value| / 127) of each row
                 PRIMARY KEY(embed_model, input_version, seq))
    vector_pack_state(embed_model, input_version, packed_upto, rows)

Every row of ``embeddings`` of that model and version with rowid <=
``packed_upto`` was packed; newer rows (the *tail*, fewer than
:data:`PACK_ROWS` once the writer caught up) are read from ``embeddings``.
Packs are written in the same transaction as the vectors they copy, so a
reader's snapshot always sees a consistent pair.

Packs are append-only, so a pack row may be *stale*: its hash was embedded
again (REPLACE gives the new vector a new rowid) or deleted. A reader checks
only its best candidates: a candidate counts when its packed rowid is still
the hash's rowid in ``embeddings`` (:func:`store.vectors.current_rowids`).
Whenever it writes a pack, the writer compacts if stale rows exceed a
quarter of the packed ones (a vector written again reaches the tail and so
a new pack; deletes alone, rare, wait for the next pack).
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from typing import Iterator

import numpy as np

#: Vectors per pack (768 dims: 768 KB of codes). The tail a reader converts row by row is
#: smaller than this, so smaller packs make a new process faster (1,700 tail rows cost ~25 ms).
PACK_ROWS = 1024
#: Packs written by one call of :func:`refresh` (bounds the time a write transaction holds the lock).
MAX_PACKS_PER_CALL = 8
#: Bytes of the database file SQLite may map while packs are read.
MMAP_BYTES = 1 << 30
#: Bytes of one span hash in a pack (sha256 hex).
HASH_BYTES = 64
#: numpy dtype of a packed span hash.
HASH_DTYPE = f"S{HASH_BYTES}"


def normalised(rows: np.ndarray) -> np.ndarray:
    """``rows`` (float32 [..., dim]) scaled to unit length (all-zero rows stay zero)."""
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    unit: np.ndarray = rows / np.where(norms == 0, 1, norms)
    return unit


def encode(rows: np.ndarray, dtype: str = "int8") -> tuple[np.ndarray, np.ndarray]:
    """``(codes, scales)`` of float vectors ``rows [k, dim]``: normalised, then as
    ``dtype``; for int8 each row is divided by its scale (max |value| / 127) and
    rounded, so ``codes * scales[:, None]`` is the unit vector within ~1e-3."""
    unit = normalised(rows.astype(np.float32))
    if dtype != "int8":
        return unit.astype(dtype), np.ones(len(unit), dtype=np.float32)
    peak = np.abs(unit).max(axis=1) if unit.size else np.zeros(len(unit), np.float32)
    scale = np.where(peak == 0, 1, peak / 127).astype(np.float32)
    return np.round(unit / scale[:, None]).astype(np.int8), scale


def hash_array(hashes: list[str]) -> np.ndarray:
    """Span hashes as a fixed-width byte array (ValueError for one longer than :data:`HASH_BYTES`)."""
    if any(len(h) > HASH_BYTES for h in hashes):
        raise ValueError(f"a span hash is longer than {HASH_BYTES} characters")
    return np.array([h.encode("ascii") for h in hashes], dtype=HASH_DTYPE)


@dataclass(frozen=True)
class Packed:
    """The packed vectors of one model and version, concatenated in pack order.

    The first ``rows`` of ``hashes`` (bytes, :data:`HASH_BYTES` wide), ``rowids``
    (int64), ``codes`` ([., dim] int8) and ``scales`` (float32) are filled (the
    arrays may be longer: spare room); ``packed_upto`` is the rowid after
    which :func:`store.vectors.iter_embeddings` has the rest (the tail)."""

    packed_upto: int
    rows: int
    hashes: np.ndarray
    rowids: np.ndarray
    codes: np.ndarray
    scales: np.ndarray


def has_packs(conn: sqlite3.Connection) -> bool:
    """Whether the store has the pack tables (migration 7 ran)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'vector_pack_state'").fetchone() is not None


def packed_upto(conn: sqlite3.Connection, model: str, version: int) -> int:
    """The rowid up to which ``model``/``version`` is packed (0: nothing packed)."""
    return _state(conn, model, version)[0]


def _state(conn: sqlite3.Connection, model: str, version: int) -> tuple[int, int]:
    row = conn.execute("SELECT packed_upto, rows FROM vector_pack_state WHERE embed_model = ? AND input_version = ?",
                       (model, version)).fetchone()
    return (row[0], row[1]) if row else (0, 0)


def load(conn: sqlite3.Connection, model: str, version: int, spare: int = 0) -> Packed | None:
    """Every pack of ``model``/``version`` (call inside a read snapshot, with the tail
    read in the same one); None when the store has no pack tables (an older schema).
    The arrays have room for ``spare`` more rows after the ``rows`` packed ones
    (so the tail is appended without copying the matrix again)."""
    if not has_packs(conn):
        return None
    packed_upto, total = _state(conn, model, version)
    dims = conn.execute("SELECT dim FROM vector_packs WHERE embed_model = ? AND input_version = ? LIMIT 1",
                        (model, version)).fetchone()
    size = total + spare
    hashes, rowids = np.empty(size, HASH_DTYPE), np.empty(size, np.int64)
    codes, scales = np.empty((size, dims[0] if dims else 0), np.int8), np.empty(size, np.float32)
    at = 0
    with _mapped(conn):
        cur = conn.execute("SELECT rows, hashes, rowids, codes, scales FROM vector_packs"
                           " WHERE embed_model = ? AND input_version = ? ORDER BY seq", (model, version))
        for n, h, r, c, s in cur:  # one pack in memory at a time, copied straight into place
            hashes[at:at + n] = np.frombuffer(h, HASH_DTYPE)
            rowids[at:at + n] = np.frombuffer(r, "<i8")
            codes[at:at + n] = np.frombuffer(c, np.int8).reshape(n, -1)
            scales[at:at + n] = np.frombuffer(s, "<f4")
            at += n
    return Packed(packed_upto, at, hashes, rowids, codes, scales)


@contextlib.contextmanager
def _mapped(conn: sqlite3.Connection) -> Iterator[None]:
    """SQLite memory-maps the database file meanwhile (``PRAGMA mmap_size``), so
    the packs' pages are copied from the page cache instead of read by a system
    call each (about twice as fast for 70 MB). Only for this read: a mapped file
    that shrinks under a reader (VACUUM, which llmc-rag never runs by itself)
    would fault it."""
    before = conn.execute("PRAGMA mmap_size").fetchone()[0]
    conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA mmap_size = {int(before)}")


def refresh(tx: sqlite3.Connection, model: str, version: int, max_packs: int = MAX_PACKS_PER_CALL) -> int:
    """Inside the writer's transaction: pack full :data:`PACK_ROWS` batches of the
    tail (at most ``max_packs``), then compact if stale rows exceed a quarter.
    Returns the vectors packed. A no-op on a store without the pack tables."""
    if not has_packs(tx):
        return 0
    packed_upto, total = _state(tx, model, version)
    tail = tx.execute("SELECT COUNT(*) FROM embeddings WHERE embed_model = ? AND input_version = ? AND rowid > ?",
                      (model, version, packed_upto)).fetchone()[0]
    batches = min(max_packs, tail // PACK_ROWS)
    if batches:
        rows = tx.execute("SELECT rowid, span_hash, dim, vector FROM embeddings WHERE embed_model = ?"
                          " AND input_version = ? AND rowid > ? ORDER BY rowid LIMIT ?",
                          (model, version, packed_upto, batches * PACK_ROWS)).fetchall()
        for start in range(0, len(rows), PACK_ROWS):
            _append(tx, model, version, rows[start:start + PACK_ROWS])
        packed_upto, total = rows[-1][0], total + len(rows)
        _set_state(tx, model, version, packed_upto, total)
        # Only after packing (a count walks every packed row's index entry): stale rows come
        # from vectors written again, which reach the tail and so a new pack first.
        live = tx.execute("SELECT COUNT(*) FROM embeddings WHERE embed_model = ? AND input_version = ?"
                          " AND rowid <= ?", (model, version, packed_upto)).fetchone()[0]
        if total - live > max(PACK_ROWS, total // 4):
            compact(tx, model, version)
    return batches * PACK_ROWS


def _append(tx: sqlite3.Connection, model: str, version: int, rows: list[tuple[int, str, int, bytes]]) -> None:
    dim = rows[0][2]
    matrix = np.frombuffer(b"".join(r[3] for r in rows), "<f4").reshape(len(rows), dim)
    codes, scales = encode(matrix)
    rowids = np.array([r[0] for r in rows], "<i8")
    _insert(tx, model, version, hash_array([r[1] for r in rows]), rowids, codes, scales)


def _insert(tx: sqlite3.Connection, model: str, version: int, hashes: np.ndarray, rowids: np.ndarray,
            codes: np.ndarray, scales: np.ndarray) -> None:
    seq = tx.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM vector_packs WHERE embed_model = ? AND input_version = ?",
                     (model, version)).fetchone()[0]
    tx.execute("INSERT INTO vector_packs(embed_model, input_version, seq, dim, rows, hashes, rowids, codes, scales)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (model, version, seq, codes.shape[1], len(codes), hashes.astype(HASH_DTYPE).tobytes(),
                rowids.astype("<i8").tobytes(), codes.tobytes(), scales.astype("<f4").tobytes()))


def _set_state(tx: sqlite3.Connection, model: str, version: int, packed_upto: int, total: int) -> None:
    tx.execute("INSERT OR REPLACE INTO vector_pack_state(embed_model, input_version, packed_upto, rows)"
               " VALUES (?, ?, ?, ?)", (model, version, packed_upto, total))


def compact(tx: sqlite3.Connection, model: str, version: int) -> int:
    """Inside the writer's transaction: rewrite the packs of ``model``/``version``
    without their stale rows (no vector is re-encoded). Returns the rows kept."""
    packed = load(tx, model, version)
    if packed is None:
        return 0
    live = np.array([r[0] for r in tx.execute(
        "SELECT rowid FROM embeddings WHERE embed_model = ? AND input_version = ? AND rowid <= ?",
        (model, version, packed.packed_upto))], np.int64)
    tx.execute("DELETE FROM vector_packs WHERE embed_model = ? AND input_version = ?", (model, version))
    keep = np.isin(packed.rowids[:packed.rows], live)
    kept = [a[:packed.rows][keep] for a in (packed.hashes, packed.rowids, packed.codes, packed.scales)]
    for start in range(0, len(kept[0]), PACK_ROWS):
        _insert(tx, model, version, *(a[start:start + PACK_ROWS] for a in kept))
    _set_state(tx, model, version, packed.packed_upto, int(keep.sum()))
    return int(keep.sum())
