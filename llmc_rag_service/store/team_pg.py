"""Every SQL statement of the team database (PostgreSQL), behind functions named for what they mean.

Used by ``llmc_rag_service.team`` on psycopg 3 connections in autocommit mode
(each function is one statement, hence one round trip, unless it says
otherwise). Nothing here imports psycopg: the connection is passed in.

Tables (migration 1)::

    llmc_team_schema(version, applied_at)              applied migrations, forward only
    llmc_enrichments(span_hash, model, prompt_version, the team cache: keyed exactly like the
        fields jsonb, producer, created_at)            local enrichments table
    llmc_embeddings(span_hash, embed_model,            vectors as float32 little-endian bytes;
        input_version, vector bytea, dim, producer,    ``span_hash`` here is the sha256 of the exact
        created_at)                                    text embedded (``enrich.embed_text.input_hash``)
    llmc_claims(span_hash, model, prompt_version,      who is enriching (or embedding) a key now,
        holder, expires_at)                            until expires_at (server clock)

Keys are content hashes (a CHECK admits 64 hex digits only) and values are
enrichment fields and vectors: no path, name or span text can be stored.
Leases use the server's clock (``now()``), so daemons' clocks may disagree.

Statements that take several keys take them as parallel arrays
(``unnest``), sorted by the caller, so two daemons writing overlapping batches
lock rows in the same order and cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: LISTEN/NOTIFY channel; payload ``e:<span_hash>`` for each newly published enrichment.
CHANNEL = "llmc_team"
#: ``pg_advisory_xact_lock`` key serialising migrations between daemons ("llmcteam" in ASCII).
MIGRATION_LOCK = 0x6C6C6D637465616D
#: Statement timeout inside a migration (seconds): it may wait for another daemon's migration.
MIGRATION_TIMEOUT_S = 60

_HASH_CHECK = "CHECK (span_hash ~ '^[0-9a-f]{64}$')"

MIGRATIONS: tuple[str, ...] = (
    # 1: the cache, embeddings and claims
    f"""
    CREATE TABLE llmc_enrichments(
        span_hash text NOT NULL {_HASH_CHECK}, model text NOT NULL, prompt_version integer NOT NULL,
        fields jsonb NOT NULL, producer text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (span_hash, model, prompt_version));
    CREATE TABLE llmc_embeddings(
        span_hash text NOT NULL {_HASH_CHECK}, embed_model text NOT NULL, input_version integer NOT NULL,
        vector bytea NOT NULL, dim integer NOT NULL CHECK (dim > 0 AND octet_length(vector) = 4 * dim),
        producer text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (span_hash, embed_model, input_version));
    CREATE TABLE llmc_claims(
        span_hash text NOT NULL, model text NOT NULL, prompt_version integer NOT NULL,
        holder text NOT NULL, expires_at timestamptz NOT NULL,
        PRIMARY KEY (span_hash, model, prompt_version));
    CREATE INDEX llmc_claims_holder ON llmc_claims(holder);
    """,
)

#: A key as stored: (span_hash, model or embed_model, prompt_version or input_version).
Key = tuple[str, str, int]


class SchemaTooNew(Exception):
    """The team database has migrations this version does not know.

    Attributes:
        found: The database's schema version. known: ``len(MIGRATIONS)``.
    """

    def __init__(self, found: int, known: int):
        self.found, self.known = found, known
        super().__init__(f"team schema version {found} > known {known}")


def _columns(keys: Sequence[Key]) -> dict[str, list[Any]]:
    return {"h": [k[0] for k in keys], "m": [k[1] for k in keys], "v": [k[2] for k in keys]}


# -- schema ------------------------------------------------------------------
def schema_version(conn: Any) -> int | None:
    """The applied schema version, or None before the first migration (two round trips)."""
    if conn.execute("SELECT to_regclass('llmc_team_schema')").fetchone()[0] is None:
        return None
    return conn.execute("SELECT coalesce(max(version), 0) FROM llmc_team_schema").fetchone()[0]


def migrate(conn: Any) -> int:
    """Apply pending :data:`MIGRATIONS`; returns the schema version.

    Cheap when up to date (no lock taken). Otherwise one transaction under a
    transaction-level advisory lock, so daemons starting together migrate
    once: the others wait, then find nothing left to do.

    Raises:
        SchemaTooNew: the database is ahead of this version (nothing changed).
        psycopg.Error: anything the server refuses (e.g. no CREATE privilege).
    """
    known = len(MIGRATIONS)
    version = schema_version(conn)
    if version is not None and version >= known:
        if version > known:
            raise SchemaTooNew(version, known)
        return version
    with conn.transaction():
        conn.execute(f"SET LOCAL statement_timeout = '{MIGRATION_TIMEOUT_S}s'")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS llmc_team_schema("
                     "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        version = conn.execute("SELECT coalesce(max(version), 0) FROM llmc_team_schema").fetchone()[0]
        if version > known:
            raise SchemaTooNew(version, known)
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute(script)
            conn.execute("INSERT INTO llmc_team_schema(version) VALUES (%s)", (number,))
    return known


# -- enrichments ---------------------------------------------------------------
def lookup_enrichments(conn: Any, keys: Sequence[Key]) -> list[tuple[str, str, int, Any, str]]:
    """Rows ``(span_hash, model, prompt_version, fields, producer)`` present for
    ``keys``; ``fields`` is the decoded JSON, not yet validated."""
    return conn.execute(
        """SELECT e.span_hash, e.model, e.prompt_version, e.fields, e.producer
           FROM unnest(%(h)s::text[], %(m)s::text[], %(v)s::integer[]) AS k(h, m, v)
           JOIN llmc_enrichments e ON e.span_hash = k.h AND e.model = k.m AND e.prompt_version = k.v""",
        _columns(keys)).fetchall()


def publish_enrichments(conn: Any, rows: Sequence[tuple[Key, str]], producer: str) -> int:
    """Insert ``(key, fields_json)`` rows (``ON CONFLICT DO NOTHING``: the
    first publisher wins) and NOTIFY :data:`CHANNEL` once per new row — one
    statement. Returns the rows inserted.

    The publisher's claims are left to expire, not deleted: a teammate's
    :func:`claim` whose snapshot predates this commit would find neither the
    result nor a claim row, and take the key again."""
    params = {**_columns([key for key, _ in rows]), "f": [fields for _, fields in rows],
              "producer": producer, "channel": CHANNEL}
    return conn.execute(
        """WITH ins AS (
               INSERT INTO llmc_enrichments(span_hash, model, prompt_version, fields, producer)
               SELECT h, m, v, f::jsonb, %(producer)s
               FROM unnest(%(h)s::text[], %(m)s::text[], %(v)s::integer[], %(f)s::text[]) AS k(h, m, v, f)
               ORDER BY h, m, v
               ON CONFLICT DO NOTHING RETURNING span_hash)
           SELECT count(pg_notify(%(channel)s, 'e:' || span_hash)) FROM ins""",
        params).fetchone()[0]


# -- embeddings ------------------------------------------------------------------
def lookup_embeddings(conn: Any, keys: Sequence[Key]) -> list[tuple[str, str, int, bytes, int, str]]:
    """Rows ``(span_hash, embed_model, input_version, vector, dim, producer)``
    present for ``keys``; ``vector`` is not yet validated."""
    return conn.execute(
        """SELECT e.span_hash, e.embed_model, e.input_version, e.vector, e.dim, e.producer
           FROM unnest(%(h)s::text[], %(m)s::text[], %(v)s::integer[]) AS k(h, m, v)
           JOIN llmc_embeddings e ON e.span_hash = k.h AND e.embed_model = k.m AND e.input_version = k.v""",
        _columns(keys)).fetchall()


def publish_embeddings(conn: Any, rows: Sequence[tuple[Key, bytes, int]], producer: str) -> int:
    """Insert ``(key, vector, dim)`` rows, first publisher wins. Returns the rows inserted."""
    params = {**_columns([key for key, _, _ in rows]), "vec": [r[1] for r in rows], "dim": [r[2] for r in rows],
              "producer": producer}
    return conn.execute(
        """INSERT INTO llmc_embeddings(span_hash, embed_model, input_version, vector, dim, producer)
           SELECT h, m, v, vec, dim, %(producer)s
           FROM unnest(%(h)s::text[], %(m)s::text[], %(v)s::integer[], %(vec)s::bytea[], %(dim)s::integer[])
                AS k(h, m, v, vec, dim)
           ORDER BY h, m, v
           ON CONFLICT DO NOTHING""",
        params).rowcount


# -- claims --------------------------------------------------------------------
#: What a claim's key may already be published as: kind -> (table, model column, version column).
RESULTS = {"enrichment": ("llmc_enrichments", "model", "prompt_version"),
           "embedding": ("llmc_embeddings", "embed_model", "input_version")}


def claim(conn: Any, keys: Sequence[Key], holder: str, lease_s: float, kind: str = "enrichment") -> list[Key]:
    """Take the keys that nobody holds (or whose lease expired, or that
    ``holder`` already holds) and that are not published yet as ``kind``
    (:data:`RESULTS`), for ``lease_s`` seconds. ``keys`` must be distinct and
    sorted. Returns the keys taken. (An embedding key is a text hash, so it
    never meets an enrichment key in ``llmc_claims``.)"""
    table, model, version = RESULTS[kind]
    rows = conn.execute(
        f"""INSERT INTO llmc_claims AS c (span_hash, model, prompt_version, holder, expires_at)
           SELECT k.h, k.m, k.v, %(holder)s, now() + make_interval(secs => %(lease)s)
           FROM unnest(%(h)s::text[], %(m)s::text[], %(v)s::integer[]) AS k(h, m, v)
           WHERE NOT EXISTS (SELECT 1 FROM {table} e
                             WHERE e.span_hash = k.h AND e.{model} = k.m AND e.{version} = k.v)
           ORDER BY k.h, k.m, k.v
           ON CONFLICT (span_hash, model, prompt_version) DO UPDATE
               SET holder = excluded.holder, expires_at = excluded.expires_at
               WHERE c.expires_at < now() OR c.holder = excluded.holder
           RETURNING c.span_hash, c.model, c.prompt_version""",
        {**_columns(keys), "holder": holder, "lease": float(lease_s)}).fetchall()
    return [tuple(r) for r in rows]


def claim_or_fetch(conn: Any, keys: Sequence[Key], holder: str,
                   lease_s: float) -> tuple[list[Key], list[tuple[str, str, int, Any, str]]]:
    """:func:`claim` and :func:`lookup_enrichments` in one statement (one
    round trip, one snapshot): ``(claimed keys, published rows)``. Of each
    key, either it is claimed, or its published row is returned, or neither
    (a teammate holds it). ``keys`` must be distinct and sorted."""
    rows = conn.execute(
        """WITH k AS (SELECT * FROM unnest(%(h)s::text[], %(m)s::text[], %(v)s::integer[]) AS k(h, m, v)),
           pub AS (SELECT e.span_hash, e.model, e.prompt_version, e.fields, e.producer FROM k
                   JOIN llmc_enrichments e ON e.span_hash = k.h AND e.model = k.m AND e.prompt_version = k.v),
           ins AS (INSERT INTO llmc_claims AS c (span_hash, model, prompt_version, holder, expires_at)
                   SELECT k.h, k.m, k.v, %(holder)s, now() + make_interval(secs => %(lease)s) FROM k
                   WHERE NOT EXISTS (SELECT 1 FROM pub
                                     WHERE pub.span_hash = k.h AND pub.model = k.m AND pub.prompt_version = k.v)
                   ORDER BY k.h, k.m, k.v
                   ON CONFLICT (span_hash, model, prompt_version) DO UPDATE
                       SET holder = excluded.holder, expires_at = excluded.expires_at
                       WHERE c.expires_at < now() OR c.holder = excluded.holder
                   RETURNING c.span_hash, c.model, c.prompt_version)
           SELECT true, span_hash, model, prompt_version, NULL::jsonb, NULL::text FROM ins
           UNION ALL SELECT false, span_hash, model, prompt_version, fields, producer FROM pub""",
        {**_columns(keys), "holder": holder, "lease": float(lease_s)}).fetchall()
    return [(r[1], r[2], r[3]) for r in rows if r[0]], [tuple(r[1:]) for r in rows if not r[0]]


def renew_claims(conn: Any, keys: Sequence[Key], holder: str, lease_s: float) -> list[Key]:
    """Extend ``holder``'s unexpired claims on ``keys`` by ``lease_s`` seconds
    from now; returns the keys it still holds (a lapsed lease may have been
    taken over)."""
    rows = conn.execute(
        """UPDATE llmc_claims c SET expires_at = now() + make_interval(secs => %(lease)s)
           FROM unnest(%(h)s::text[], %(m)s::text[], %(v)s::integer[]) AS k(h, m, v)
           WHERE c.span_hash = k.h AND c.model = k.m AND c.prompt_version = k.v
             AND c.holder = %(holder)s AND c.expires_at >= now()
           RETURNING c.span_hash, c.model, c.prompt_version""",
        {**_columns(keys), "holder": holder, "lease": float(lease_s)}).fetchall()
    return [tuple(r) for r in rows]


def release_claims(conn: Any, keys: Sequence[Key], holder: str) -> int:
    """Drop ``holder``'s claims on ``keys`` (work given up); returns how many."""
    return conn.execute(
        """DELETE FROM llmc_claims c USING unnest(%(h)s::text[], %(m)s::text[], %(v)s::integer[]) AS k(h, m, v)
           WHERE c.span_hash = k.h AND c.model = k.m AND c.prompt_version = k.v AND c.holder = %(holder)s""",
        {**_columns(keys), "holder": holder}).rowcount


def purge_expired_claims(conn: Any, older_than_s: float) -> int:
    """Delete claims expired more than ``older_than_s`` seconds ago (holders
    that died on keys nobody wanted since); returns how many."""
    return conn.execute("DELETE FROM llmc_claims WHERE expires_at < now() - make_interval(secs => %s)",
                        (float(older_than_s),)).rowcount


# -- notifications ---------------------------------------------------------------
def listen(conn: Any) -> None:
    """Subscribe ``conn`` to :data:`CHANNEL` (payloads ``e:<span_hash>``)."""
    conn.execute(f"LISTEN {CHANNEL}")
