"""Read views for search and export: span filters, hit details, streaming export rows.

Every function takes a connection (a read-only one from :mod:`store.reader`
works) and only reads. A span's ``state`` is computed as in ``status``:
``enriched`` when its content hash has an enrichment for the given chat model
and :data:`~llmc_rag_service.models.PROMPT_VERSION`, ``failed`` when that job
is dead-lettered, else ``pending``.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from llmc_rag_service.models import PROMPT_VERSION


@dataclass(frozen=True)
class SpanFilter:
    """Which spans a search or export may return (None = any).

    Attributes:
        repo: Absolute repository path, as configured.
        path_glob: SQLite GLOB on the repo-relative POSIX path (``*`` also
            matches ``/``; case-sensitive).
        language: Language id of the span (``python``, ``cpp``, ...).
        kind: Span kind (``function``, ``method``, ``class``, ...).
    """

    repo: str | None = None
    path_glob: str | None = None
    language: str | None = None
    kind: str | None = None


def _cursor(conn: sqlite3.Connection) -> sqlite3.Cursor:
    cur = conn.cursor()
    cur.row_factory = sqlite3.Row  # rows by name, whatever the connection's own factory
    return cur


def filter_sql(filt: SpanFilter) -> tuple[str, str, list[Any]]:
    """``(joins, " AND ..." conditions, args)`` restricting spans (alias ``s``)
    to ``filt``; only the tables a condition needs are joined (``f`` files,
    ``r`` repos, ``t`` span_texts), each join costing a lookup per candidate row."""
    joins, clauses, args = [], [], []
    if filt.repo is not None or filt.path_glob is not None:
        joins.append("JOIN files f ON f.id = s.file_id")
    if filt.repo is not None:
        joins.append("JOIN repos r ON r.id = f.repo_id")
        clauses.append(" AND r.path = ?")
        args.append(filt.repo)
    if filt.path_glob is not None:
        clauses.append(" AND f.path GLOB ?")
        args.append(filt.path_glob)
    if filt.language is not None:
        joins.append("JOIN span_texts t ON t.span_hash = s.span_hash")
        clauses.append(" AND t.language = ?")
        args.append(filt.language)
    if filt.kind is not None:
        clauses.append(" AND s.kind = ?")
        args.append(filt.kind)
    return " ".join(joins), "".join(clauses), args


def spans_of_hashes(conn: sqlite3.Connection, hashes: Sequence[str], filt: SpanFilter) -> list[tuple[int, str, int]]:
    """Current span rows holding any of ``hashes`` and passing ``filt``:
    ``(span_id, span_hash, width)`` with width = end_line - start_line."""
    joins, where, args = filter_sql(filt)
    rows = conn.execute(
        f"""SELECT s.id, s.span_hash, s.end_line - s.start_line FROM spans s {joins}
            WHERE s.span_hash IN (SELECT value FROM json_each(?)) {where}""",
        (json.dumps(list(hashes)), *args),
    )
    return [tuple(r) for r in rows]


_HIT_SQL = """
SELECT s.id AS span_id, r.path AS repo, f.path, s.start_line, s.end_line, s.kind, s.name, t.language,
       s.span_hash, f.size, f.mtime_ns, e.summary, e.pitfalls, j.state AS job_state
FROM spans s JOIN files f ON f.id = s.file_id JOIN repos r ON r.id = f.repo_id
JOIN span_texts t ON t.span_hash = s.span_hash
LEFT JOIN enrichments e ON e.span_hash = s.span_hash AND e.model = :model AND e.prompt_version = :pv
LEFT JOIN jobs j ON j.span_hash = s.span_hash AND j.model = :model AND j.prompt_version = :pv AND j.kind = 'enrich'
WHERE s.id IN (SELECT value FROM json_each(:ids))
"""


def span_names(conn: sqlite3.Connection, span_ids: Sequence[int]) -> dict[int, str]:
    """The (qualified) name of each span row by id; ids no longer present are absent."""
    rows = _cursor(conn).execute("SELECT id, name FROM spans WHERE id IN (SELECT value FROM json_each(?))",
                                 (json.dumps(list(span_ids)),))
    return {r[0]: r[1] for r in rows}


def span_details(conn: sqlite3.Connection, span_ids: Sequence[int], chat_model: str) -> dict[int, sqlite3.Row]:
    """Details of span rows by id: ``repo``, ``path``, lines, ``kind``, ``name``,
    ``language``, ``span_hash``, the file's stored ``size`` (bytes) and
    ``mtime_ns`` (ns), ``summary`` and ``pitfalls`` (JSON text) of the
    ``chat_model`` enrichment or None, and ``state``. Ids no longer present are absent."""
    rows = _cursor(conn).execute(_HIT_SQL, {"model": chat_model, "pv": PROMPT_VERSION,
                                           "ids": json.dumps(list(span_ids))})
    return {r["span_id"]: r for r in rows}


def state_of(summary: str | None, job_state: str | None) -> str:
    """``enriched``, ``failed`` or ``pending`` (see the module docstring)."""
    if summary is not None:
        return "enriched"
    return "failed" if job_state == "failed" else "pending"


# CROSS JOIN keeps files the outer loop: files by (repo_id, path), then each
# file's spans by (file_id, start_line) -- index order, so no sort of all rows.
_EXPORT_SQL = """
SELECT r.path AS repo, f.path, f.size, f.mtime_ns, s.start_line, s.end_line, s.kind, s.name, t.language,
       s.span_hash, t.text, e.summary, e.inputs, e.outputs, e.side_effects, e.pitfalls, e.usage, e.created_at
FROM files f CROSS JOIN spans s ON s.file_id = f.id JOIN repos r ON r.id = f.repo_id
JOIN span_texts t ON t.span_hash = s.span_hash
LEFT JOIN enrichments e ON e.span_hash = s.span_hash AND e.model = :model AND e.prompt_version = :pv
WHERE (:repo IS NULL OR r.path = :repo)
ORDER BY f.repo_id, f.path, s.start_line, s.id
"""


def export_rows(conn: sqlite3.Connection, chat_model: str, repo: str | None = None) -> Iterator[sqlite3.Row]:
    """Every current span with its text and ``chat_model`` enrichment (columns
    as in :data:`_EXPORT_SQL`: the file's stored ``size`` in bytes and
    ``mtime_ns`` in ns for freshness; JSON list fields as text), ordered by repo
    (in the order they were added), path and line. Walks the files and spans
    indexes in that order, so rows stream from the cursor with no sort:
    constant memory on any store."""
    cur = _cursor(conn).execute(_EXPORT_SQL, {"model": chat_model, "pv": PROMPT_VERSION, "repo": repo})
    try:
        yield from cur
    finally:
        cur.close()


def repo_paths(conn: sqlite3.Connection) -> list[str]:
    """Paths of every repository the store knows."""
    return [r[0] for r in conn.execute("SELECT path FROM repos ORDER BY path")]
