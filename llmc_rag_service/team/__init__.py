"""Team mode: daemons of a team share one enrichment and embedding cache and work queue on PostgreSQL.

Optional extra ``[postgres]`` (psycopg 3 + psycopg-pool); configured by
``team.postgres`` (a DSN, or null for none). Importing this package imports
no psycopg: :class:`~llmc_rag_service.team.cache.TeamCache` does, when made.

Modules, one job each::

    settings   TeamSettings (timeouts, lease), redact_dsn, check_dsn  (no psycopg)
    errors     the error taxonomy and the one mapping from psycopg errors
    keys       EnrichmentKey / EmbeddingKey, value encodings
    client     TeamDB: the connection pool, bounded timeouts, schema probe
    health     circuit breaker: reachable or not, when to probe again
    listener   the LISTEN thread (teammates' publications)
    wakeups    waiters on span hashes
    outbox     the Outbox interface and an in-memory one
    cache      TeamCache: the facade the daemon calls

Every SQL statement is in ``store/team_pg.py`` (PostgreSQL) and
``store/team_outbox.py`` (the local outbox table).

Setting up the team database (once, as a PostgreSQL superuser)::

    CREATE ROLE llmc LOGIN PASSWORD '...';      -- no SUPERUSER, CREATEDB, CREATEROLE
    CREATE DATABASE llmc OWNER llmc;

That is all the privilege team mode needs: owning its database lets the role
create its tables in ``public`` (PostgreSQL 15+ grants CREATE there to the
database owner only) and read and write them; it can touch no other
database. The first daemon to connect creates the tables (``llmc_team_schema``,
``llmc_enrichments``, ``llmc_embeddings``, ``llmc_claims``); later versions
migrate them forward, one daemon at a time (advisory lock). Each daemon then
uses ``team.postgres: postgresql://llmc@db.internal/llmc`` with the password
in ``PGPASSWORD`` or a ``PGPASSFILE`` (mode 0600) and, across a network,
``?sslmode=verify-full``. Shared: span hashes, hashes of embedded texts,
enrichment fields, vectors, the producer (host name). Never shared: paths,
names, span text.
"""

from llmc_rag_service.team.errors import TeamError
from llmc_rag_service.team.keys import EmbeddingKey, EnrichmentKey
from llmc_rag_service.team.settings import TeamSettings, check_dsn, redact_dsn

__all__ = ["EmbeddingKey", "EnrichmentKey", "TeamError", "TeamSettings", "check_dsn", "redact_dsn"]
