"""SQLite state: schema, migrations, and the file/span records of each repo.

One file, ``<state_dir>/llmc-rag.db``, in WAL mode with a ``busy_timeout``, so
the daemon's worker threads, ``status`` and ``show`` can all use it at once.
The schema version lives in ``PRAGMA user_version``; :data:`MIGRATIONS` are
applied forward, each in its own transaction.

Tables::

    repos(id, path, secret_files)                     one row per watched repository; secret_files =
                                                      secret files by name the last full scan passed by
    files(id, repo_id, path, size, mtime_ns,          path is POSIX, relative to the repo;
          content_hash, language, skipped,            skipped = reason when not indexed;
          redacted)                                   redacted = secret values replaced in its spans
    spans(id, file_id, kind, name, start_line,        the spans currently in the tree
          end_line, span_hash)
    span_texts(span_hash, language, text)             content-addressed span text
    enrichments(span_hash, model, prompt_version,     keyed by content, so identical or
          summary, inputs, ..., usage, created_at)    moved code is enriched once
    jobs(id, kind, span_hash, model, prompt_version,  the persistent queue (kinds enrich, embed),
          state, ..., basis)                          see jobs.py and embed_jobs.py
    meta(key, value)                                  daemon status for ``status``; queue catch-up marks
    job_tallies(kind, model, prompt_version, state, n) jobs per key and state, kept by triggers
    span_fts, span_fts_vocab, span_fts_dirty          full-text index of spans, see fts.py
    embeddings(span_hash, embed_model, input_version, one vector per content hash, see vectors.py
          dim, vector, created_at), embeddings_epoch(n)
    team_outbox(...)                                  results waiting for the team database
                                                      (store/team_outbox.py)

Connections (one per thread), ``BEGIN IMMEDIATE`` transactions and store
faults are :class:`~llmc_rag_service.store.database.Database`'s; opening a
file that is no store of ours raises ``StoreCorrupt`` (:func:`verify_store`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from llmc_rag_service.models import Span
from llmc_rag_service.store import fts
from llmc_rag_service.store.database import BUSY_TIMEOUT_S, HEALTH_TIMEOUT_S, Database  # noqa: F401 (re-exported)
from llmc_rag_service.store.faults import StoreCorrupt

#: ``PRAGMA application_id`` stamped on a store this product creates ("LLMC").
APPLICATION_ID = 0x4C4C4D43
#: Tables every migrated store has: a file with a schema version but without
#: them belongs to another application.
CORE_TABLES = frozenset({"repos", "files", "spans", "jobs", "meta"})

MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
    CREATE TABLE repos(id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, added_at REAL NOT NULL);
    CREATE TABLE files(
        id INTEGER PRIMARY KEY,
        repo_id INTEGER NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
        path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
        content_hash TEXT NOT NULL, language TEXT, skipped TEXT,
        updated_at REAL NOT NULL, UNIQUE(repo_id, path));
    CREATE TABLE spans(
        id INTEGER PRIMARY KEY,
        file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
        kind TEXT NOT NULL, name TEXT NOT NULL,
        start_line INTEGER NOT NULL, end_line INTEGER NOT NULL, span_hash TEXT NOT NULL);
    CREATE INDEX spans_file ON spans(file_id, start_line);
    CREATE INDEX spans_hash ON spans(span_hash);
    CREATE TABLE span_texts(span_hash TEXT PRIMARY KEY, language TEXT NOT NULL, text TEXT NOT NULL);
    CREATE TABLE enrichments(
        span_hash TEXT NOT NULL, model TEXT NOT NULL, prompt_version INTEGER NOT NULL,
        summary TEXT NOT NULL, inputs TEXT NOT NULL, outputs TEXT NOT NULL,
        side_effects TEXT NOT NULL, pitfalls TEXT NOT NULL, usage TEXT NOT NULL,
        created_at REAL NOT NULL, duration_s REAL,
        PRIMARY KEY(span_hash, model, prompt_version));
    CREATE TABLE jobs(
        id INTEGER PRIMARY KEY,
        span_hash TEXT NOT NULL, model TEXT NOT NULL, prompt_version INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
        priority INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0, last_error TEXT,
        claimed_by INTEGER, claimed_at REAL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL,
        UNIQUE(span_hash, model, prompt_version));
    CREATE INDEX jobs_ready ON jobs(state, priority, next_attempt_at);
    CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
    """,
    # 2: search. span_fts holds one document per span row (rowid = spans.id);
    # its text needs identifier splitting (Python), so triggers only mark rows
    # dirty and Store.write() re-indexes them before each commit (store/fts.py).
    # Existing spans are marked dirty here: the first write backfills them.
    """
    CREATE VIRTUAL TABLE span_fts USING fts5(
        name, path, summary, inputs, outputs, side_effects, pitfalls, usage, code,
        tokenize = 'porter unicode61 remove_diacritics 2');
    CREATE VIRTUAL TABLE span_fts_vocab USING fts5vocab(span_fts, 'row');
    CREATE TABLE span_fts_dirty(span_id INTEGER PRIMARY KEY);
    CREATE TRIGGER span_fts_span_added AFTER INSERT ON spans BEGIN
        INSERT OR IGNORE INTO span_fts_dirty(span_id) VALUES (new.id); END;
    CREATE TRIGGER span_fts_span_changed AFTER UPDATE ON spans BEGIN
        INSERT OR IGNORE INTO span_fts_dirty(span_id) VALUES (new.id); END;
    CREATE TRIGGER span_fts_span_gone AFTER DELETE ON spans BEGIN
        DELETE FROM span_fts WHERE rowid = old.id;
        DELETE FROM span_fts_dirty WHERE span_id = old.id; END;
    CREATE TRIGGER span_fts_enriched AFTER INSERT ON enrichments BEGIN
        INSERT OR IGNORE INTO span_fts_dirty(span_id) SELECT id FROM spans WHERE span_hash = new.span_hash; END;
    CREATE TRIGGER span_fts_enrichment_changed AFTER UPDATE ON enrichments BEGIN
        INSERT OR IGNORE INTO span_fts_dirty(span_id) SELECT id FROM spans WHERE span_hash = new.span_hash; END;
    CREATE TRIGGER span_fts_enrichment_gone AFTER DELETE ON enrichments BEGIN
        INSERT OR IGNORE INTO span_fts_dirty(span_id) SELECT id FROM spans WHERE span_hash = old.span_hash; END;
    INSERT INTO span_fts_dirty(span_id) SELECT id FROM spans;
    CREATE TABLE embeddings(
        span_hash TEXT NOT NULL, embed_model TEXT NOT NULL, input_version INTEGER NOT NULL,
        dim INTEGER NOT NULL, vector BLOB NOT NULL, created_at REAL NOT NULL,
        PRIMARY KEY(span_hash, embed_model, input_version));
    CREATE INDEX embeddings_model ON embeddings(embed_model, input_version);
    CREATE TABLE embeddings_epoch(n INTEGER NOT NULL);
    INSERT INTO embeddings_epoch(n) VALUES (0);
    CREATE TRIGGER embeddings_deleted AFTER DELETE ON embeddings BEGIN UPDATE embeddings_epoch SET n = n + 1; END;
    CREATE TRIGGER embeddings_updated AFTER UPDATE ON embeddings BEGIN UPDATE embeddings_epoch SET n = n + 1; END;
    """,
    # 3: job kinds. Embedding jobs share the queue (kind 'embed'; model and
    # prompt_version hold the embedding model and input version), so the key
    # gains the kind; basis = what an embedding job's text was made from.
    # SQLite cannot change a UNIQUE constraint in place: the table is rebuilt.
    """
    CREATE TABLE jobs_v3(
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL DEFAULT 'enrich' CHECK (kind IN ('enrich', 'embed')),
        span_hash TEXT NOT NULL, model TEXT NOT NULL, prompt_version INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
        priority INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0, last_error TEXT,
        claimed_by INTEGER, claimed_at REAL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL, basis TEXT,
        UNIQUE(kind, span_hash, model, prompt_version));
    INSERT INTO jobs_v3(id, span_hash, model, prompt_version, state, priority, attempts, next_attempt_at,
                        last_error, claimed_by, claimed_at, created_at, updated_at)
        SELECT id, span_hash, model, prompt_version, state, priority, attempts, next_attempt_at,
               last_error, claimed_by, claimed_at, created_at, updated_at FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_v3 RENAME TO jobs;
    CREATE INDEX jobs_ready ON jobs(kind, state, priority, next_attempt_at);
    """,
    # 4: team mode's outbox (store/team_outbox.py): results waiting for the team database
    """
    CREATE TABLE team_outbox(
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('enrichment', 'embedding')),
        span_hash TEXT NOT NULL, model TEXT NOT NULL, version INTEGER NOT NULL,
        payload BLOB NOT NULL, dim INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
        UNIQUE(kind, span_hash, model, version));
    """,
    # 5: secrets (index/redact.py), counted for status --json. Span text stored
    # before redaction existed may hold secret values: every file is re-read and
    # re-cut by the next scan (its hash forgotten), which replaces its spans and
    # drops the text (and for a file with secrets the answers) of the old ones.
    """
    ALTER TABLE files ADD COLUMN redacted INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE repos ADD COLUMN secret_files INTEGER NOT NULL DEFAULT 0;
    UPDATE files SET content_hash = '';
    """,
    # 6: claims walk the pending jobs of one kind and model in claim order
    # (priority, id) and stop at the LIMIT, instead of sorting every pending job
    # on each claim (0.22 s per claim with 14k pending, bench/scale.py).
    """
    CREATE INDEX jobs_claim ON jobs(kind, state, model, prompt_version, priority, id);
    """,
    # 7: packed vectors (store/vector_packs.py): each model's vectors also as a few
    # large int8 blobs, so a new search process loads 100k vectors in tens of
    # milliseconds instead of reading 100k rows (1.3-1.9 s). Filled by the writer.
    """
    CREATE TABLE vector_packs(
        embed_model TEXT NOT NULL, input_version INTEGER NOT NULL, seq INTEGER NOT NULL,
        dim INTEGER NOT NULL, rows INTEGER NOT NULL,
        hashes BLOB NOT NULL, rowids BLOB NOT NULL, codes BLOB NOT NULL, scales BLOB NOT NULL,
        PRIMARY KEY(embed_model, input_version, seq));
    CREATE TABLE vector_pack_state(
        embed_model TEXT NOT NULL, input_version INTEGER NOT NULL,
        packed_upto INTEGER NOT NULL, rows INTEGER NOT NULL,
        PRIMARY KEY(embed_model, input_version));
    """,
    # 8: running job counts per key and state (store/jobs.py JobQueue.counts): kept by
    # triggers in the transaction of every change, so they survive a crash exactly as
    # the jobs do; STATUS reads them instead of counting every done job twice a second.
    """
    CREATE TABLE job_tallies(
        kind TEXT NOT NULL, model TEXT NOT NULL, prompt_version INTEGER NOT NULL, state TEXT NOT NULL,
        n INTEGER NOT NULL, PRIMARY KEY(kind, model, prompt_version, state)) WITHOUT ROWID;
    INSERT INTO job_tallies(kind, model, prompt_version, state, n)
        SELECT kind, model, prompt_version, state, COUNT(*) FROM jobs GROUP BY kind, model, prompt_version, state;
    CREATE TRIGGER job_tallies_added AFTER INSERT ON jobs BEGIN
        INSERT INTO job_tallies(kind, model, prompt_version, state, n)
            VALUES (new.kind, new.model, new.prompt_version, new.state, 1)
            ON CONFLICT DO UPDATE SET n = n + 1; END;
    CREATE TRIGGER job_tallies_gone AFTER DELETE ON jobs BEGIN
        UPDATE job_tallies SET n = n - 1 WHERE kind = old.kind AND model = old.model
            AND prompt_version = old.prompt_version AND state = old.state; END;
    CREATE TRIGGER job_tallies_moved AFTER UPDATE OF state ON jobs WHEN old.state IS NOT new.state BEGIN
        UPDATE job_tallies SET n = n - 1 WHERE kind = old.kind AND model = old.model
            AND prompt_version = old.prompt_version AND state = old.state;
        INSERT INTO job_tallies(kind, model, prompt_version, state, n)
            VALUES (new.kind, new.model, new.prompt_version, new.state, 1)
            ON CONFLICT DO UPDATE SET n = n + 1; END;
    """,
    # 9: no pending job without a span, so the tallies' pending count is the work
    # left and STATUS reads no job row (a walk of every pending job took seconds
    # at 800k jobs, on the loop that hands saves to the indexer). A scan cancels
    # the pending jobs of the spans it removes (JobQueue.cancel_orphans); these
    # triggers drop a job that becomes pending after its span went (a worker's job
    # released or retried, a dead process's job recovered, a re-embedding).
    """
    DELETE FROM jobs WHERE state = 'pending' AND NOT EXISTS (SELECT 1 FROM spans s WHERE s.span_hash = jobs.span_hash);
    CREATE TRIGGER jobs_pending_without_span AFTER UPDATE OF state ON jobs
        WHEN new.state = 'pending' AND NOT EXISTS (SELECT 1 FROM spans s WHERE s.span_hash = new.span_hash)
        BEGIN DELETE FROM jobs WHERE id = new.id; END;
    CREATE TRIGGER jobs_queued_without_span AFTER INSERT ON jobs
        WHEN new.state = 'pending' AND NOT EXISTS (SELECT 1 FROM spans s WHERE s.span_hash = new.span_hash)
        BEGIN DELETE FROM jobs WHERE id = new.id; END;
    """,
)


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of a migration script (a trigger body's ``;`` does not end its statement)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""
    if pending.strip(" \n;"):
        raise ValueError(f"incomplete SQL statement in a migration: {pending.strip()[:80]!r}")
_FILE_COLUMNS = "SELECT id, repo_id, path, size, mtime_ns, content_hash, skipped FROM files"


class FileRecord(NamedTuple):
    """A stored file: ``mtime_ns`` in nanoseconds, ``size`` in bytes,
    ``content_hash`` sha256 hex of the raw bytes (``secret`` for a secret file
    by content, empty for a file to read again), ``skipped`` the reason it is not indexed
    (binary, too_large, decode_error, secret) or None. A tuple, not a frozen
    dataclass: a catch-up scan makes one per stored file (100k), and a frozen
    dataclass's init cost a tenth of that scan."""

    id: int
    repo_id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str
    skipped: str | None


def verify_store(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version (``PRAGMA user_version``) of the store open on
    ``conn``, after checking that the file is one of ours (or still empty).

    Raises:
        StoreCorrupt: another application's database: a foreign
            ``application_id``, tables without a schema version, or a schema
            version without :data:`CORE_TABLES`.
        sqlite3.DatabaseError: not a database, or malformed (reading the
            schema parses the first page).
    """
    # One statement, so one snapshot: read apart, a daemon creating the store between the
    # reads showed its new tables with the old version 0, as if the file were foreign.
    app_id, version, names = conn.execute(
        "SELECT (SELECT application_id FROM pragma_application_id()),"
        " (SELECT user_version FROM pragma_user_version()),"
        " (SELECT json_group_array(name) FROM sqlite_master WHERE type = 'table')").fetchone()
    tables = set(json.loads(names))
    if app_id not in (0, APPLICATION_ID):
        raise StoreCorrupt(path, f"application_id {app_id:#x} is another application's")
    if (version == 0 and tables) or (version > 0 and not CORE_TABLES <= tables):
        names = ", ".join(sorted(tables)[:5]) or "none"
        raise StoreCorrupt(path, f"another application's database: schema version {version}, tables {names}")
    return version


class Store(Database):
    """The state database: schema, migrations, meta, repos, files and spans;
    connections, transactions and faults come from
    :class:`~llmc_rag_service.store.database.Database`. Safe to share between threads.

    Args:
        path: The database file; its directory is created (mode 0700).

    Raises:
        StoreUnusable: the file cannot be opened or migrated: ``StoreCorrupt``
            (not a database, malformed, another application's),
            ``StoreReadOnly``, ``StoreFull``, ``StoreIOError``.
        sqlite3.OperationalError: locked by another process past
            :data:`~llmc_rag_service.store.database.BUSY_TIMEOUT_S`.
    """

    def __init__(self, path: Path | str):
        self._search_index = False  # set once the migration that creates span_fts has run
        super().__init__(path)
        with self.opening():
            self.migrate()

    def verify(self, conn: sqlite3.Connection) -> None:
        """Refuse a file that is no store of ours (see :func:`verify_store`)."""
        verify_store(conn, self.path)

    def before_commit(self, conn: sqlite3.Connection) -> None:
        """Spans or enrichments changed: re-index them in the same transaction (see fts.py)."""
        if self._search_index:
            fts.flush(conn)

    def migrate(self) -> int:
        """Apply pending :data:`MIGRATIONS`; returns the resulting schema version."""
        conn = self.conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.write() as tx:
                # Another process may have migrated while this one waited for the lock.
                if tx.execute("PRAGMA user_version").fetchone()[0] >= number:
                    continue
                if number == 1:
                    tx.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                for statement in _statements(script):
                    tx.execute(statement)
                tx.execute(f"PRAGMA user_version = {number}")
        self._search_index = fts.has_index(conn)
        if self._search_index and fts.dirty(conn):
            with self.write():
                pass  # the commit re-indexes rows marked dirty (the backfill of an older store)
        return conn.execute("PRAGMA user_version").fetchone()[0]

    # -- meta ----------------------------------------------------------
    def set_meta(self, busy_timeout_s: float | None = None, **values: str | None) -> None:
        """Set key/value pairs in ``meta`` (None deletes); see :meth:`write`
        for ``busy_timeout_s``."""
        with self.write(busy_timeout_s) as tx:
            for key, value in values.items():
                if value is None:
                    tx.execute("DELETE FROM meta WHERE key = ?", (key,))
                else:
                    tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # -- repos and files -----------------------------------------------
    def repo_id(self, path: Path | str, busy_timeout_s: float | None = None) -> int:
        """The id of the repo at absolute ``path``, created on first use
        (waiting at most ``busy_timeout_s`` for the write lock, see :meth:`write`)."""
        path = str(path)
        row = self.conn.execute("SELECT id FROM repos WHERE path = ?", (path,)).fetchone()
        if row:
            return row[0]
        with self.write(busy_timeout_s) as tx:
            tx.execute("INSERT OR IGNORE INTO repos(path, added_at) VALUES (?, ?)", (path, time.time()))
        return self.conn.execute("SELECT id FROM repos WHERE path = ?", (path,)).fetchone()[0]

    def drop_repos_inside(self, configured: Sequence[Path], busy_timeout_s: float | None = None) -> list[Path]:
        """Delete each stored repo that is not one of ``configured`` (absolute
        paths) but lies inside one of them, with its files and spans (cascade):
        a nested repo dropped from the config, whose files the outer repo now
        indexes (else each is stored, searched and counted twice). Enrichments
        stay (keyed by content: the outer repo's copies hold the same hashes).
        Waits at most ``busy_timeout_s`` for the write lock. Returns the paths."""
        kept = set(configured)
        stored = [Path(r[0]) for r in self.conn.execute("SELECT path FROM repos")]
        inside = [p for p in stored if p not in kept and any(k in p.parents for k in kept)]
        if inside:
            with self.write(busy_timeout_s) as tx:
                tx.executemany("DELETE FROM repos WHERE path = ?", [(str(p),) for p in inside])
        return inside

    def files(self, repo_id: int, under: str | None = None) -> dict[str, FileRecord]:
        """Stored files of a repo by relative path; ``under`` limits to that path and
        its subtree. A subtree is a range of the ``UNIQUE(repo_id, path)`` index
        (``under/`` up to ``under0``, ``'0'`` being the character after ``'/'``), so
        its cost grows with the rows returned, never with the size of the repo."""
        if not under:
            return {r["path"]: FileRecord(*r) for r in self.conn.execute(f"{_FILE_COLUMNS} WHERE repo_id = ?",
                                                                         (repo_id,))}
        rows = self.conn.execute(
            f"{_FILE_COLUMNS} WHERE repo_id = ? AND path = ? UNION ALL "
            f"{_FILE_COLUMNS} WHERE repo_id = ? AND path >= ? AND path < ?",
            (repo_id, under, repo_id, under + "/", under + "0"))
        return {r["path"]: FileRecord(*r) for r in rows}

    def stored_paths(self, repo_id: int, paths: Sequence[str]) -> set[str]:
        """Which of ``paths`` (relative) the store holds as files of the repo: one
        query, a probe of the ``UNIQUE(repo_id, path)`` index per path."""
        rows = self.conn.execute("SELECT path FROM files WHERE repo_id = ? AND path IN (SELECT value FROM json_each(?))",
                                 (repo_id, json.dumps(list(paths))))
        return {r[0] for r in rows}

    def file_spans(self, file_id: int) -> list[sqlite3.Row]:
        """Span rows of one file in line order."""
        return self.conn.execute(
            "SELECT * FROM spans WHERE file_id = ? ORDER BY start_line, id", (file_id,)
        ).fetchall()

    def put_file(
        self, tx: sqlite3.Connection, repo_id: int, path: str, *, size: int, mtime_ns: int,
        content_hash: str, language: str | None, skipped: str | None, spans: Sequence[Span] | None,
        redacted: int = 0,
    ) -> int:
        """Insert or update a file inside ``tx``; ``spans`` (if not None) replace its spans;
        ``redacted`` is how many secret values were replaced in its text.

        Returns the file id.
        """
        cur = tx.execute(
            """INSERT INTO files(repo_id, path, size, mtime_ns, content_hash, language, skipped, redacted, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(repo_id, path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
               content_hash = excluded.content_hash, language = excluded.language,
               skipped = excluded.skipped, redacted = excluded.redacted, updated_at = excluded.updated_at
               RETURNING id, (SELECT COUNT(*) FROM spans WHERE file_id = files.id)""",
            (repo_id, path, size, mtime_ns, content_hash, language, skipped, redacted, time.time()),
        )
        file_id, held = cur.fetchone()
        if spans is not None:
            if held:  # a new file (most of a cold scan) has none to delete
                tx.execute("DELETE FROM spans WHERE file_id = ?", (file_id,))
            tx.executemany(
                "INSERT INTO spans(file_id, kind, name, start_line, end_line, span_hash) VALUES (?, ?, ?, ?, ?, ?)",
                [(file_id, s.kind, s.name, s.start_line, s.end_line, s.span_hash) for s in spans],
            )
            tx.executemany(
                "INSERT OR IGNORE INTO span_texts(span_hash, language, text) VALUES (?, ?, ?)",
                [(s.span_hash, s.language, s.text) for s in spans],
            )
        return file_id

    def drop_unheld(self, tx: sqlite3.Connection, span_hashes: Sequence[str], answers_of: Sequence[str] = ()) -> int:
        """Inside ``tx``, delete the stored text of each of ``span_hashes`` that no
        span holds any more (cut again from its file if the code comes back), and
        for those also in ``answers_of`` their enrichments and embeddings (made
        from text that held secret values). Returns how many texts were deleted."""
        gone = {h for h in set(span_hashes)
                if tx.execute("SELECT 1 FROM spans WHERE span_hash = ? LIMIT 1", (h,)).fetchone() is None}
        tx.executemany("DELETE FROM span_texts WHERE span_hash = ?", [(h,) for h in gone])
        answers = [(h,) for h in gone.intersection(answers_of)]
        tx.executemany("DELETE FROM enrichments WHERE span_hash = ?", answers)
        tx.executemany("DELETE FROM embeddings WHERE span_hash = ?", answers)
        return len(gone)

    def touch_file(self, file_id: int, size: int, mtime_ns: int) -> None:
        """Record a new size (bytes) and mtime (nanoseconds) for a file whose
        content is unchanged (same hash): no span or job changes."""
        with self.write() as tx:
            tx.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, file_id))

    def delete_files(self, tx: sqlite3.Connection, repo_id: int, paths: Sequence[str]) -> None:
        """Drop files (their spans cascade) inside ``tx``. Enrichments stay: they
        are keyed by content, so the same code coming back costs no request."""
        tx.executemany("DELETE FROM files WHERE repo_id = ? AND path = ?", [(repo_id, p) for p in paths])

    def span_hashes_of(self, tx: sqlite3.Connection, repo_id: int, paths: Sequence[str]) -> list[str]:
        """Inside ``tx``, the span hashes the given files hold now."""
        hashes: list[str] = []
        for path in paths:
            hashes += [r[0] for r in tx.execute(
                "SELECT s.span_hash FROM spans s JOIN files f ON f.id = s.file_id WHERE f.repo_id = ? AND f.path = ?",
                (repo_id, path))]
        return hashes

    def span_texts(self, span_hashes: Sequence[str]) -> dict[str, sqlite3.Row]:
        """:meth:`span_text` of many hashes in one query: hash -> row (hashes no
        file holds any more are absent)."""
        rows = self.conn.execute(
            """SELECT h.value AS span_hash, t.language, t.text, r.path AS repo, f.path, s.kind, s.name,
                      s.start_line, s.end_line
               FROM json_each(?) h JOIN spans s ON s.id = (SELECT id FROM spans WHERE span_hash = h.value LIMIT 1)
               JOIN files f ON f.id = s.file_id JOIN repos r ON r.id = f.repo_id
               JOIN span_texts t ON t.span_hash = s.span_hash""",
            (json.dumps(list(span_hashes)),))
        return {row["span_hash"]: row for row in rows}

    def span_text(self, span_hash: str) -> sqlite3.Row | None:
        """``language`` and ``text`` of a span hash plus one current location
        (``repo``, ``path``, ``kind``, ``name``, ``start_line``, ``end_line``),
        or None if no file holds it any more."""
        return self.conn.execute(
            """SELECT t.language, t.text, r.path AS repo, f.path, s.kind, s.name, s.start_line, s.end_line
               FROM spans s JOIN files f ON f.id = s.file_id JOIN repos r ON r.id = f.repo_id
               JOIN span_texts t ON t.span_hash = s.span_hash
               WHERE s.span_hash = ? LIMIT 1""",
            (span_hash,),
        ).fetchone()
