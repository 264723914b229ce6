"""Read-only access to the store for the reading commands (``status``, ``show``).

Opened with ``mode=ro``, so a reader never takes the write lock, never
creates the database and works while ``serve`` writes (WAL readers do not
block the writer), and also in a read-only state dir. Every statement the
reading commands need is here, behind methods named for what they return;
``service/status.py`` shapes the JSON.

A file that is no store of ours, or whose pages turn out corrupt while a
reader is used inside ``with``, raises ``StoreUnusable`` (``store/faults.py``),
so every reading command says it in one line (``cli.py`` exits 74).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmc_rag_service.store.db import verify_store
from llmc_rag_service.store.faults import StoreCorrupt, StoreUnusable, classify

#: Seconds a reader waits for a writer's checkpoint before "database is locked".
READ_BUSY_TIMEOUT_S = 10.0

# {kind}: the job-kind filter (schema 3 on); {embedded}: the embedded test
# (schema 2 on). An older store read before the daemon migrates it has neither.
_COUNTS_SQL = """
SELECT COUNT(DISTINCT f.id) AS files, COUNT(s.id) AS spans,
       COALESCE(SUM(e.span_hash IS NOT NULL), 0) AS enriched,
       COALESCE(SUM(e.span_hash IS NULL AND j.state = 'failed'), 0) AS failed,
       COALESCE(SUM({embedded}), 0) AS embedded,
       COALESCE(SUM({embed_failed}), 0) AS embed_failed
FROM files f
LEFT JOIN spans s ON s.file_id = f.id
LEFT JOIN enrichments e ON e.span_hash = s.span_hash AND e.model = :model AND e.prompt_version = :pv
LEFT JOIN jobs j ON j.span_hash = s.span_hash AND j.model = :model AND j.prompt_version = :pv {kind}
WHERE f.repo_id = (SELECT id FROM repos WHERE path = :repo) AND f.skipped IS NULL
"""
_EMBEDDED = ("EXISTS (SELECT 1 FROM embeddings v WHERE v.span_hash = s.span_hash AND v.embed_model = :em"
             " AND v.input_version = :iv)")
_ENRICH_JOBS = "AND j.kind = 'enrich'"
# A span without a vector whose embedding job is dead-lettered (schema 3 on: job kinds).
_EMBED_FAILED = ("NOT " + _EMBEDDED + " AND EXISTS (SELECT 1 FROM jobs x WHERE x.kind = 'embed'"
                 " AND x.span_hash = s.span_hash AND x.model = :em AND x.prompt_version = :iv AND x.state = 'failed')")

_SECRETS_SQL = """
SELECT COALESCE((SELECT SUM(f.redacted) FROM files f WHERE f.repo_id = r.id AND f.skipped IS NULL), 0) AS redacted,
       r.secret_files + (SELECT COUNT(*) FROM files f WHERE f.repo_id = r.id AND f.skipped = 'secret') AS skipped
FROM repos r WHERE r.path = ?
"""

_FILE_SPANS_SQL = """
SELECT s.*, e.summary, e.inputs, e.outputs, e.side_effects, e.pitfalls, e.usage, e.created_at,
       j.state AS job_state, j.last_error
FROM spans s
LEFT JOIN enrichments e ON e.span_hash = s.span_hash AND e.model = :m AND e.prompt_version = :pv
LEFT JOIN jobs j ON j.span_hash = s.span_hash AND j.model = :m AND j.prompt_version = :pv {kind}
WHERE s.file_id = :f ORDER BY s.start_line, s.id
"""


@dataclass(frozen=True)
class StoredFile:
    """What the store knows of one file (for ``show``'s explanations):
    ``skipped`` is the reason it was not split into spans (``binary``,
    ``too_large``, ``decode_error``, ``secret``) or None; ``spans`` how many spans it has;
    ``last_line`` the last line a span covers (0 without spans)."""

    skipped: str | None
    spans: int
    last_line: int


def file_freshness(path: Path, size: int, mtime_ns: int) -> bool | None:
    """Whether the file at ``path`` still has the ``size`` (bytes) and
    ``mtime_ns`` (nanoseconds) its stored record was indexed with: True,
    False when it changed (or cannot be checked), None when it is gone. A
    changed file's stored line numbers may be off until it is indexed again.
    Not followed, as the scanner follows no symlink: a symlink, directory or
    FIFO now at ``path`` is gone too (the next scan drops the file), even a
    symlink to the renamed file itself (``mv a.py b.py; ln -s b.py a.py``)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return None
    return bool(st.st_size == size and st.st_mtime_ns == mtime_ns)


class StoreReader:
    """A read-only connection to the state database.

    Use :meth:`open`; close it with :meth:`close` or as a context manager.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn, self.path = conn, path
        self.version = conn.execute("PRAGMA user_version").fetchone()[0]
        self._kind = _ENRICH_JOBS if self.version >= 3 else ""

    @classmethod
    def open(cls, db_path: Path) -> StoreReader | None:
        """A reader, or None if the database does not exist yet or was never
        migrated (``status`` must work before the daemon ever ran, and create nothing).

        Raises:
            StoreUnusable: the file exists but is no readable store of ours
                (``StoreCorrupt``: not a database, malformed, another
                application's; ``StoreReadOnly``/``StoreIOError``: cannot be opened).
        """
        if not db_path.exists():
            return None
        try:
            conn, version = _open_verified(db_path)
        except StoreUnusable:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise (classify(exc, db_path) or StoreCorrupt(db_path, str(exc))) from exc
        if version == 0:  # created a moment ago, not migrated yet: as if absent
            conn.close()
            return None
        return cls(conn, db_path)

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        """Close; an error inside the block that is a store fault (a corrupt
        page met by a query, an I/O error) is raised as its ``StoreUnusable``."""
        self.close()
        if isinstance(exc, sqlite3.Error):
            fault = classify(exc, self.path)
            if fault is not None:
                raise fault from exc

    def close(self) -> None:
        self.conn.close()

    def meta(self) -> dict[str, str]:
        """The daemon facts in ``meta`` (``daemon_status``, ``ollama_last_error``…)."""
        return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    def repo_paths(self) -> list[Path]:
        """Every repo root the store holds files of, sorted: the configured ones,
        and any indexed by ``enrich PATH`` or dropped from the config since."""
        return [Path(r[0]) for r in self.conn.execute(
            "SELECT r.path FROM repos r WHERE EXISTS (SELECT 1 FROM files f WHERE f.repo_id = r.id) ORDER BY r.path")]

    def repo_counts(self, repo: Path, model: str, prompt_version: int, embed_model: str | None = None,
                    input_version: int = 1) -> dict[str, int]:
        """``{files, spans, enriched, pending, failed, embedded, embed_failed}`` for
        one repo's indexed files; ``enriched + pending + failed == spans``;
        ``embedded``: spans with a vector of ``embed_model`` and ``input_version``
        (0 when None); ``embed_failed``: spans without one whose embedding job
        was dead-lettered (``enrich --retry-failed`` retries them)."""
        embedded = _EMBEDDED if embed_model and self.version >= 2 else "0"
        embed_failed = _EMBED_FAILED if embed_model and self.version >= 3 else "0"
        sql = _COUNTS_SQL.format(kind=self._kind, embedded=embedded, embed_failed=embed_failed)
        row = self.conn.execute(sql, {"model": model, "pv": prompt_version, "repo": str(repo), "em": embed_model,
                                      "iv": input_version}).fetchone()
        counts = dict(files=row["files"], spans=row["spans"], enriched=row["enriched"], failed=row["failed"])
        counts["pending"] = counts["spans"] - counts["enriched"] - counts["failed"]
        counts["embedded"], counts["embed_failed"] = row["embedded"], row["embed_failed"]
        return counts

    def repo_secrets(self, repo: Path) -> dict[str, int]:
        """``{redacted, secret_files_skipped}`` of one repo: secret values replaced in
        its indexed files, and secret files not indexed (by name as the last full
        scan counted them, plus those judged by content). Zeros for a store written
        before secrets were counted (the daemon migrates it when it starts)."""
        columns = {r[1] for r in self.conn.execute("PRAGMA table_info(files)")}
        row = self.conn.execute(_SECRETS_SQL, (str(repo),)).fetchone() if "redacted" in columns else None
        return empty_secrets() if row is None else {"redacted": row["redacted"], "secret_files_skipped": row["skipped"]}

    def answers_redacted(self) -> int:
        """Secret values redacted from model answers before they were stored, since the store was made."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'answers_redacted'").fetchone()
        return int(row[0]) if row else 0

    def file_record(self, repo: Path, relpath: str) -> sqlite3.Row | None:
        """A stored file (``relpath`` POSIX, relative to ``repo``): ``id``, ``size`` (bytes),
        ``mtime_ns``, ``language``, ``skipped`` (reason, or None); None if unknown."""
        return self.conn.execute(
            "SELECT f.id, f.size, f.mtime_ns, f.language, f.skipped FROM files f JOIN repos r ON r.id = f.repo_id "
            "WHERE r.path = ? AND f.path = ?", (str(repo), relpath)).fetchone()

    def span_text(self, span_hash: str) -> str | None:
        """The stored text of a span (content-addressed), or None."""
        row = self.conn.execute("SELECT text FROM span_texts WHERE span_hash = ?", (span_hash,)).fetchone()
        return row["text"] if row else None

    def file_spans(self, file_id: int, model: str, prompt_version: int) -> list[sqlite3.Row]:
        """The file's spans in line order, each with its enrichment columns
        (None when not enriched) and its job's ``job_state``/``last_error``."""
        return self.conn.execute(_FILE_SPANS_SQL.format(kind=self._kind),
                                 {"m": model, "pv": prompt_version, "f": file_id}).fetchall()

    def stored_file(self, repo: Path, relpath: str) -> StoredFile | None:
        """The record of ``relpath`` (valid UTF-8 text: SQLite cannot bind a
        lone surrogate), or None if the store never indexed it."""
        row = self.conn.execute(
            """SELECT f.skipped, COUNT(s.id), COALESCE(MAX(s.end_line), 0)
               FROM files f JOIN repos r ON r.id = f.repo_id LEFT JOIN spans s ON s.file_id = f.id
               WHERE r.path = ? AND f.path = ? GROUP BY f.id""",
            (str(repo), relpath)).fetchone()
        return None if row is None else StoredFile(skipped=row[0], spans=row[1], last_line=row[2])

    def team_outbox_count(self) -> int:
        """Results waiting in the team outbox (``store/team_outbox.py``) for
        the team database; 0 in a store from before that table (migration 3)."""
        try:
            return self.conn.execute("SELECT count(*) FROM team_outbox").fetchone()[0]
        except sqlite3.OperationalError:  # no such table: not migrated yet
            return 0

    def quick_check(self) -> list[str]:
        """SQLite's ``PRAGMA quick_check`` (https://sqlite.org/pragma.html#pragma_quick_check):
        an empty list when the database is intact, else its problem lines (at most 10)."""
        rows = [r[0] for r in self.conn.execute("PRAGMA quick_check(10)").fetchall()]
        return [] if rows == ["ok"] else rows


def _connect(uri: str) -> sqlite3.Connection:
    # check_same_thread=False: search's query-embedding thread and a server's
    # worker threads may hand the connection on (one user at a time).
    conn = sqlite3.connect(uri, uri=True, timeout=READ_BUSY_TIMEOUT_S, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(READ_BUSY_TIMEOUT_S * 1000)}")
    return conn


def _open_verified(db_path: Path) -> tuple[sqlite3.Connection, int]:
    """A read-only connection and the schema version, after :func:`verify_store`."""
    uri = f"file:{urllib.parse.quote(str(db_path))}"  # a '?' or '#' in the path is not a URI part
    try:
        return _verified(_connect(f"{uri}?mode=ro"), db_path)
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY):
            raise
    # A WAL database in a directory we cannot write (no -shm file and no
    # right to make one: "unable to open", or "readonly" on a read-only
    # mount) opens only as immutable; no daemon can be writing it then.
    return _verified(_connect(f"{uri}?mode=ro&immutable=1"), db_path)


def _verified(conn: sqlite3.Connection, db_path: Path) -> tuple[sqlite3.Connection, int]:
    """``conn`` and its schema version after :func:`verify_store`; closes ``conn`` if that raises."""
    try:
        return conn, verify_store(conn, db_path)
    except BaseException:
        conn.close()
        raise


def empty_counts() -> dict[str, Any]:
    """The counts of a repo before any store exists."""
    return dict(files=0, spans=0, enriched=0, pending=0, failed=0, embedded=0, embed_failed=0)


def empty_secrets() -> dict[str, int]:
    """The secrets audit of a repo before any store exists."""
    return {"redacted": 0, "secret_files_skipped": 0}
