"""Connections to the team database: a psycopg 3 pool with bounded waits, errors mapped once.

Every wait is bounded (:class:`~llmc_rag_service.team.settings.TeamSettings`):

* connecting: libpq ``connect_timeout`` (whole seconds, at least 2), and
  the wait for a pooled connection;
* each statement: the server's ``statement_timeout`` and ``lock_timeout``;
* a dead host or network: TCP keepalives (idle 2 s, 2 probes 1 s apart) and
  ``tcp_user_timeout`` end the connection within seconds (libpq docs,
  "Parameter Key Words").

A server frozen with its host alive (e.g. SIGSTOP) is not detected: its
kernel keeps the connection up. psycopg is imported here, and only here,
when a :class:`TeamDB` is made; without the ``[postgres]`` extra that raises
:class:`~llmc_rag_service.team.errors.TeamNotInstalled`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from llmc_rag_service.store import team_pg
from llmc_rag_service.team.errors import TeamClosed, TeamError, map_error, not_installed, schema_too_new
from llmc_rag_service.team.settings import TeamSettings, redact_dsn

T = TypeVar("T")
#: ``application_name`` shown in ``pg_stat_activity``.
APPLICATION_NAME = "llmc-rag"


def _psycopg() -> tuple[Any, Any]:
    """(psycopg, psycopg_pool), or :class:`TeamNotInstalled`."""
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise not_installed() from exc
    return psycopg, psycopg_pool


def conninfo_for(dsn: str, settings: TeamSettings) -> str:
    """``dsn`` plus the timeouts and keepalives above; ``options`` already in
    the DSN are kept (ours are appended)."""
    psycopg, _ = _psycopg()
    given = psycopg.conninfo.conninfo_to_dict(dsn)
    statement_ms = int(settings.statement_timeout_s * 1000)
    options = f"{given.get('options') or ''} -c statement_timeout={statement_ms} -c lock_timeout={statement_ms}"
    conninfo: str = psycopg.conninfo.make_conninfo(
        dsn, connect_timeout=max(2, math.ceil(settings.connect_timeout_s)), options=options.strip(),
        application_name=given.get("application_name") or APPLICATION_NAME,
        keepalives=1, keepalives_idle=2, keepalives_interval=1, keepalives_count=2,
        tcp_user_timeout=int((settings.connect_timeout_s + settings.statement_timeout_s) * 1000))
    return conninfo


class TeamDB:
    """The team database for one daemon: a pool of up to ``settings.pool_size``
    autocommit connections, opened lazily (nothing connects in ``__init__``).

    Args:
        dsn: ``team.postgres`` as configured (may hold a password).

    Attributes:
        url: the DSN without password (:func:`redact_dsn`).
        queries: statements sent so far (for ``status`` and the benchmark).

    Raises:
        TeamNotInstalled: psycopg is missing. ConfigError-worthy DSNs raise
            :class:`TeamError` on first use, not here.
    """

    def __init__(self, dsn: str, settings: TeamSettings | None = None):
        self.settings = settings or TeamSettings()
        self.url = redact_dsn(dsn)
        self._psycopg, pool_mod = _psycopg()
        try:
            self.conninfo = conninfo_for(dsn, self.settings)
        except self._psycopg.ProgrammingError as exc:  # unparsable DSN
            raise TeamError(f"team.postgres is not a valid DSN ({self.url}): {exc}") from exc
        self._pool_timeout = pool_mod.PoolTimeout
        self.pool = pool_mod.ConnectionPool(
            self.conninfo, min_size=0, max_size=self.settings.pool_size, open=False, name="llmc-team",
            timeout=self.settings.connect_timeout_s, num_workers=1,
            reconnect_timeout=2 * self.settings.connect_timeout_s, kwargs={"autocommit": True})
        self.queries = 0
        self.closed = False
        self._opened = False
        self._lock = threading.Lock()

    def open(self) -> None:
        """Start the pool's worker (returns at once; connections are made on
        demand). Called by the first statement if not before."""
        with self._lock:
            if not self._opened:
                self.pool.open(wait=False)
                self._opened = True

    def close(self) -> None:
        """Close every pooled connection (waits at most a few seconds); later
        statements raise :class:`TeamError` ``closed``."""
        self.closed = True
        if self._opened:
            self.pool.close(timeout=self.settings.connect_timeout_s)

    def _count(self, n: int = 1) -> None:
        with self._lock:
            self.queries += n

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` on a pooled connection (one statement of
        ``store.team_pg``). A connection found dead (server restarted since
        it was pooled) is replaced and ``fn`` retried once — every statement
        there is idempotent — unless a direct connection fails too, whose
        error is raised at once.

        Raises:
            TeamError: the mapped failure (see ``errors``).
        """
        if self.closed:
            raise TeamClosed(f"team cache at {self.url} is closed")
        self.open()
        for attempt in (1, 2):
            try:
                with self.pool.connection(timeout=self.settings.connect_timeout_s) as conn:
                    self._count()
                    return fn(conn, *args)
            except self._pool_timeout as exc:
                raise map_error(exc, self.url) from exc
            except self._psycopg.Error as exc:
                if attempt == 1 and _connection_lost(exc):
                    # Is the server there at all? A direct connect says at once (and
                    # why not), where the pool would wait out its timeout.
                    self.connect().close()
                    self.pool.check()  # after a restart every idle connection is dead, not just this one
                    continue
                raise map_error(exc, self.url) from exc
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def connect(self) -> Any:
        """A new autocommit connection outside the pool (the listener's, a probe's).

        Raises:
            TeamError: mapped from libpq's failure (auth, missing database, refused...).
        """
        try:
            conn = self._psycopg.connect(self.conninfo, autocommit=True)
        except self._psycopg.Error as exc:
            raise map_error(exc, self.url) from exc
        self._count()
        return conn

    def probe(self) -> int:
        """Connect, migrate the schema if needed (``store.team_pg.migrate``)
        and return its version; then drop pooled connections that died.

        Raises:
            TeamError: unreachable, auth_failed, database_missing,
                permission_denied (no CREATE), schema_too_new.
        """
        conn = self.connect()
        try:
            version = team_pg.migrate(conn)
            self._count(3)
        except team_pg.SchemaTooNew as exc:
            raise schema_too_new(self.url, exc.found, exc.known) from exc
        except self._psycopg.Error as exc:
            raise map_error(exc, self.url) from exc
        finally:
            conn.close()
        self.open()
        self.pool.check()
        return version


def _connection_lost(exc: BaseException) -> bool:
    """True for a failure of the connection itself (not of the statement):
    no SQLSTATE, class 08, or the server shutting down (57P01/57P02)."""
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in ("57P01", "57P02")


def probe_once(dsn: str, settings: TeamSettings | None = None) -> int:
    """Connect, migrate if needed, disconnect: for ``doctor`` and the start-up check.

    Returns the schema version. Raises :class:`TeamError` (its ``str`` is the
    one-line message to show; ``kind`` the stable code).
    """
    db = TeamDB(dsn, settings)
    try:
        return db.probe()
    finally:
        db.close()
