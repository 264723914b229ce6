"""Read-only questions about the store that ``show`` and ``doctor`` ask.

Each takes an open connection (``service.status.open_readonly``), never
writes, and answers one question by name, so no SQL lives outside the store
package.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StoredFile:
    """What the store knows of one file: ``skipped`` is the reason it was not
    split into spans (``binary``, ``too_large``, ``decode_error``, ...) or
    None; ``spans`` how many spans it has; ``last_line`` the last line any
    span covers (0 without spans)."""

    skipped: str | None
    spans: int
    last_line: int


def stored_file(conn: sqlite3.Connection, repo: Path, relpath: str) -> StoredFile | None:
    """The record of ``relpath`` (POSIX, relative to ``repo``), or None if the
    store has never indexed it. ``relpath`` must be valid UTF-8 text (SQLite
    cannot bind a lone surrogate; callers check first)."""
    row = conn.execute(
        """SELECT f.skipped, COUNT(s.id), COALESCE(MAX(s.end_line), 0)
           FROM files f JOIN repos r ON r.id = f.repo_id LEFT JOIN spans s ON s.file_id = f.id
           WHERE r.path = ? AND f.path = ? GROUP BY f.id""",
        (str(repo), relpath),
    ).fetchone()
    return None if row is None else StoredFile(skipped=row[0], spans=row[1], last_line=row[2])


def quick_check(conn: sqlite3.Connection) -> list[str]:
    """SQLite's ``PRAGMA quick_check`` (https://sqlite.org/pragma.html#pragma_quick_check):
    an empty list when the database is intact, else its problem lines (at most 10).
    Raises sqlite3.DatabaseError when the file is not a database at all."""
    rows = [r[0] for r in conn.execute("PRAGMA quick_check(10)").fetchall()]
    return [] if rows == ["ok"] else rows
