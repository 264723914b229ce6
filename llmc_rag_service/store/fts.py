"""The full-text index of spans (SQLite FTS5): its upkeep and its ranked query.

``span_fts`` (created by migration 2 in db.py) holds one document per row of
``spans`` (``rowid = spans.id``) with the columns :data:`COLUMNS`: the span's
name, its file path, the fields of the span hash's newest enrichment and the
code. The tokenizer is ``porter unicode61`` (case-folded, stemmed; ``_`` and
punctuation separate tokens, so ``parse_json_body`` is three tokens).

Identifier splitting: every column also gets the parts of its camelCase
identifiers appended (``parseJsonBody`` -> ``parse json body``, kept adjacent so
a phrase matches), so ``parseJsonBody`` and ``parse_json_body`` both match the
query "parse json"; the raw identifier stays indexed as well.

Upkeep: splitting needs Python, so triggers only mark span rows dirty in
``span_fts_dirty`` (a span added or changed, an enrichment of its hash added,
changed or removed), a deleted span's document is removed by trigger, and
:func:`flush` -- called by ``Store.write()`` before every commit -- re-indexes
the dirty rows inside the same transaction. A write path that bypasses
``Store.write()`` leaves rows dirty until the next write transaction.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from typing import Any, Iterable, Sequence

#: The tokenizer of ``span_fts`` (as in its CREATE statement in db.py).
TOKENIZE = "porter unicode61 remove_diacritics 2"
#: Columns of ``span_fts``, in order.
COLUMNS = ("name", "path", "summary", "inputs", "outputs", "side_effects", "pitfalls", "usage", "code")
#: BM25 weight of each column (same order): a name match counts ten times a
#: mention in the code, so a definition ranks above the places that call it.
WEIGHTS = (10.0, 3.0, 4.0, 1.5, 1.5, 1.0, 1.0, 1.0, 1.0)
_LIST_FIELDS = ("inputs", "outputs", "side_effects", "pitfalls")
_FLUSH_BATCH = 500

# Runs of letters/digits (``_`` separates, as in the tokenizer); camelCase
# boundaries inside a run: lower->Upper, and ACRONYMWord -> ACRONYM Word.
_RUN = re.compile(r"[^\W_]+")
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z0-9]+|[A-Z0-9]+(?![a-z])|[^\W_]+")


def _parts(run: str) -> list[str]:
    # camelCase is an ASCII convention; other scripts' words stay whole.
    return _PART.findall(run) if run.isascii() else [run]


def identifier_parts(word: str) -> list[str]:
    """Lower-cased parts of an identifier: ``parseJSONBody`` -> ``[parse, json, body]``,
    ``parse_json_body`` -> the same, ``utf8`` -> ``[utf8]`` (digits stay with their letters)."""
    return [p.lower() for run in _RUN.findall(word) for p in _parts(run)]


# A run that can split into more than one part: an ASCII run splits only at an
# upper-case letter after its first character (``fooBar``, ``HTTPServer``, ``x1Y``);
# a run of another script stays whole (see _parts). Finding only these keeps the
# Python work of a cold scan's search index on the few identifiers that split.
_SPLITTABLE = re.compile(r"(?<![^\W_])[^\W_]+?[A-Z][^\W_]*")


def split_terms(text: str) -> str:
    """The extra terms indexed after ``text``: the parts of each distinct
    camelCase identifier in it, space-separated (empty if there are none)."""
    extra: list[str] = []
    for run in dict.fromkeys(_SPLITTABLE.findall(text)):
        parts = _parts(run)
        if len(parts) > 1:
            extra.extend(p.lower() for p in parts)
    return " ".join(extra)


def _with_terms(text: str | None) -> str:
    if not text:
        return ""
    terms = split_terms(text)
    return f"{text}\n{terms}" if terms else text


def _list_text(value: str | None) -> str:
    """An enrichment list field (a JSON array of strings) as lines of text."""
    if not value:
        return ""
    try:
        items = json.loads(value)
    except ValueError:
        return value
    return "\n".join(map(str, items)) if isinstance(items, list) else str(items)


def has_index(conn: sqlite3.Connection) -> bool:
    """Whether the store has the search index (migration 2 ran)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'span_fts_dirty'").fetchone() is not None


def dirty(conn: sqlite3.Connection) -> int:
    """How many span rows wait to be (re-)indexed."""
    return conn.execute("SELECT COUNT(*) FROM span_fts_dirty").fetchone()[0]


# The newest enrichment of the span's content hash, whatever its model: the
# index is shared by every configured model, and a newer answer is better text.
_DOCS_SQL = f"""
SELECT s.id, s.name, f.path, t.text, e.summary, e.inputs, e.outputs, e.side_effects, e.pitfalls, e.usage
FROM spans s JOIN files f ON f.id = s.file_id
LEFT JOIN span_texts t ON t.span_hash = s.span_hash
LEFT JOIN enrichments e ON e.rowid = (
    SELECT rowid FROM enrichments WHERE span_hash = s.span_hash ORDER BY created_at DESC LIMIT 1)
WHERE s.id IN (SELECT value FROM json_each(?))
"""
_INSERT_SQL = f"INSERT INTO span_fts(rowid, {', '.join(COLUMNS)}) VALUES (?{', ?' * len(COLUMNS)})"


def _document(row: sqlite3.Row | tuple[Any, ...]) -> tuple[Any, ...]:
    span_id, name, path, text, summary, *rest = row
    lists = [_list_text(v) for v in rest[:4]]
    return (span_id, _with_terms(name), _with_terms(path), _with_terms(summary),
            *map(_with_terms, lists), _with_terms(rest[4]), _with_terms(text))


def flush(conn: sqlite3.Connection) -> int:
    """Inside the caller's write transaction, re-index every dirty span row.

    Returns the number of rows indexed. Raises sqlite3.Error as the store does.
    """
    ids = [r[0] for r in conn.execute("SELECT span_id FROM span_fts_dirty")]
    for start in range(0, len(ids), _FLUSH_BATCH):
        batch = ids[start:start + _FLUSH_BATCH]
        docs = [_document(tuple(r)) for r in conn.execute(_DOCS_SQL, (json.dumps(batch),))]
        conn.executemany("DELETE FROM span_fts WHERE rowid = ?", [(i,) for i in batch])
        conn.executemany(_INSERT_SQL, docs)
        conn.execute("DELETE FROM span_fts_dirty WHERE span_id IN (SELECT value FROM json_each(?))",
                     (json.dumps(batch),))
    return len(ids)


def indexed_ids(conn: sqlite3.Connection, span_ids: Iterable[int]) -> set[int]:
    """Which of ``span_ids`` have a document in the index (for checks and tests)."""
    rows = conn.execute("SELECT rowid FROM span_fts WHERE rowid IN (SELECT value FROM json_each(?))",
                        (json.dumps(list(span_ids)),))
    return {r[0] for r in rows}


def matching_ids(conn: sqlite3.Connection, match: str, span_ids: Iterable[int]) -> set[int]:
    """Which of ``span_ids`` match the FTS5 expression ``match``."""
    rows = conn.execute("SELECT rowid FROM span_fts WHERE span_fts MATCH ? AND rowid IN (SELECT value FROM json_each(?))",
                        (match, json.dumps(list(span_ids))))
    return {r[0] for r in rows}


def ranked(conn: sqlite3.Connection, match: str, filter_sql: tuple[str, str, Sequence[Any]], depth: int,
           weights: Sequence[float] = WEIGHTS) -> list[tuple[int, float]]:
    """Span ids matching the FTS5 expression ``match``, best first, at most ``depth``.

    ``filter_sql`` is ``(joins, conditions, args)`` on alias ``s`` (spans) from
    :func:`store.searchview.filter_sql`. Returns ``(span_id, score)`` with
    score = -BM25 (higher is better); ties go to the narrower span. Without a
    filter only the best ``2 * depth`` documents are joined to their spans (a
    join costs ~3 us per row, as much as ranking it). Raises
    sqlite3.OperationalError on an invalid ``match`` (search.query never makes one).
    """
    joins, where, args = filter_sql
    bm25 = f"bm25(span_fts, {', '.join(str(float(w)) for w in weights)})"
    order = "ORDER BY score, s.end_line - s.start_line, s.id LIMIT ?"
    if not where:
        sql = f"""SELECT s.id, m.score FROM (SELECT rowid AS id, {bm25} AS score FROM span_fts
                  WHERE span_fts MATCH ? ORDER BY score LIMIT ?) m JOIN spans s ON s.id = m.id {order}"""
        params: tuple[Any, ...] = (match, 2 * depth, depth)
    else:
        sql = f"""SELECT s.id, {bm25} AS score FROM span_fts JOIN spans s ON s.id = span_fts.rowid {joins}
                  WHERE span_fts MATCH ? {where} {order}"""
        params = (match, *args, depth)
    return [(r[0], -r[1]) for r in conn.execute(sql, params)]


_local = threading.local()


def _tokenizer() -> sqlite3.Connection:
    """This thread's in-memory FTS5 table with the index's tokenizer (a reader may not create tables)."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(":memory:")
        conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize = '{TOKENIZE}')")
        conn.execute("CREATE VIRTUAL TABLE tv USING fts5vocab(t, 'instance')")
        _local.conn = conn
    return conn


def index_tokens(texts: Sequence[str]) -> list[list[str]]:
    """The tokens the index holds for each text (case-folded, stemmed: ``Parsing`` -> ``pars``)."""
    conn = _tokenizer()
    conn.executemany("INSERT INTO t(rowid, x) VALUES (?, ?)", list(enumerate(texts, start=1)))
    out: list[list[str]] = [[] for _ in texts]
    for doc, term in conn.execute("SELECT doc, term FROM tv ORDER BY doc, offset"):
        out[doc - 1].append(term)
    conn.execute("DELETE FROM t")
    return out


def document_frequency(conn: sqlite3.Connection, token: str) -> int:
    """How many span documents hold ``token`` (an index token; costs a read of its posting list)."""
    row = conn.execute("SELECT doc FROM span_fts_vocab WHERE term = ?", (token,)).fetchone()
    return row[0] if row else 0
