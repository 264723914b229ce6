"""``export``: every span with its text and enrichment as JSON Lines (DESIGN.md "Contract: JSON shapes").

One object per line, ``"schema": 1`` first; spans ordered by repo, path and
line; ``enrichment`` is null or the configured chat model's answer in the
shape of ``show --json``. Each record says whether its file is as it was
indexed (``fresh``, the meaning of ``show``/``search``) and whether it was
deleted since (``deleted``: then ``fresh`` is false too). Export dumps the
store as it is, so spans of a file deleted on disk but not yet dropped by a
scan are written, flagged, never passed off as current. Rows stream from one
SQLite cursor to the output, so memory stays constant however large the
store is (freshness is checked once per file, the rows of a file being
consecutive).
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from llmc_rag_service.store import searchview
from llmc_rag_service.store.views import file_freshness

#: Version of the export line format; bumped on any incompatible change
#: (``fresh`` and ``deleted`` were added compatibly, within version 1).
EXPORT_SCHEMA = 1
_LIST_FIELDS = ("inputs", "outputs", "side_effects", "pitfalls")


@dataclass
class ExportCounts:
    """What one export wrote: ``lines`` (one per span); of those, ``changed``
    records of files changed since they were indexed and ``deleted`` records
    of files deleted since (in ``deleted_files`` distinct files);
    ``missing_repos``: repo roots of such records that are no directory now
    (unmounted, moved: the daemon keeps their index until they are back)."""

    lines: int = 0
    changed: int = 0
    deleted: int = 0
    deleted_files: int = 0
    missing_repos: set[str] = field(default_factory=set)


def export_record(row: sqlite3.Row, chat_model: str, freshness: bool | None) -> dict[str, Any]:
    """One export object from a :func:`store.searchview.export_rows` row;
    ``freshness`` is :func:`store.views.file_freshness` of its file (None: deleted)."""
    enrichment = None
    if row["summary"] is not None:
        enrichment = {"summary": row["summary"], **{k: json.loads(row[k]) for k in _LIST_FIELDS},
                      "usage": row["usage"], "model": chat_model, "created_at": row["created_at"]}
    return {"schema": EXPORT_SCHEMA, "repo": row["repo"], "path": row["path"], "start_line": row["start_line"],
            "end_line": row["end_line"], "kind": row["kind"], "name": row["name"], "language": row["language"],
            "span_hash": row["span_hash"], "fresh": freshness is True, "deleted": freshness is None,
            "text": row["text"], "enrichment": enrichment}


def export_jsonl(conn: sqlite3.Connection, out: TextIO, chat_model: str, repo: str | None = None) -> ExportCounts:
    """Write every span of the store (or of the repo at absolute path ``repo``)
    to ``out``, one JSON object per line. Returns what was written.

    Raises sqlite3.Error if the store cannot be read, OSError (e.g.
    BrokenPipeError) if ``out`` cannot be written.
    """
    counts = ExportCounts()
    last_file: tuple[str, str] | None = None
    freshness: bool | None = True
    for row in searchview.export_rows(conn, chat_model, repo):
        if (row["repo"], row["path"]) != last_file:
            last_file = (row["repo"], row["path"])
            freshness = file_freshness(Path(row["repo"]) / row["path"], row["size"], row["mtime_ns"])
            counts.deleted_files += freshness is None
            if freshness is None and not os.path.isdir(row["repo"]):
                counts.missing_repos.add(row["repo"])
        out.write(json.dumps(export_record(row, chat_model, freshness), ensure_ascii=False) + "\n")
        counts.lines += 1
        counts.changed += freshness is False
        counts.deleted += freshness is None
    return counts
