"""``export``: every span with its text and enrichment as JSON Lines (DESIGN.md "Contract: JSON shapes").

One object per line, ``"schema": 1`` first; spans ordered by repo, path and
line; ``enrichment`` is null or the configured chat model's answer in the
shape of ``show --json``. Rows stream from one SQLite cursor to the output, so
memory stays constant however large the store is.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, TextIO

from llmc_rag_service.store import searchview

#: Version of the export line format; bumped on any incompatible change.
EXPORT_SCHEMA = 1
_LIST_FIELDS = ("inputs", "outputs", "side_effects", "pitfalls")


def export_record(row: sqlite3.Row, chat_model: str) -> dict[str, Any]:
    """One export object from a :func:`store.searchview.export_rows` row."""
    enrichment = None
    if row["summary"] is not None:
        enrichment = {"summary": row["summary"], **{k: json.loads(row[k]) for k in _LIST_FIELDS},
                      "usage": row["usage"], "model": chat_model, "created_at": row["created_at"]}
    return {"schema": EXPORT_SCHEMA, "repo": row["repo"], "path": row["path"], "start_line": row["start_line"],
            "end_line": row["end_line"], "kind": row["kind"], "name": row["name"], "language": row["language"],
            "span_hash": row["span_hash"], "text": row["text"], "enrichment": enrichment}


def export_jsonl(conn: sqlite3.Connection, out: TextIO, chat_model: str, repo: str | None = None) -> int:
    """Write every span of the store (or of the repo at absolute path ``repo``)
    to ``out``, one JSON object per line. Returns the number of lines.

    Raises sqlite3.Error if the store cannot be read, OSError (e.g.
    BrokenPipeError) if ``out`` cannot be written.
    """
    count = 0
    for row in searchview.export_rows(conn, chat_model, repo):
        out.write(json.dumps(export_record(row, chat_model), ensure_ascii=False) + "\n")
        count += 1
    return count
