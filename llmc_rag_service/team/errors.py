"""The team cache's error taxonomy, and the one place psycopg errors are mapped to it.

::

    TeamError (kind)               what the daemon does
    ├── TeamUnreachable            "unreachable": refused, timed out, cut off, restarting, statement timeout
    ├── TeamAuthFailed             "auth_failed": wrong password, unknown role, no pg_hba.conf entry
    ├── TeamDatabaseMissing        "database_missing": the DSN's database does not exist
    ├── TeamSchemaTooNew           "schema_too_new": a newer llmc-rag migrated the team database
    ├── TeamPermissionDenied       "permission_denied": the role may not create or use the tables
    ├── TeamNotInstalled           "not_installed": team.postgres is set but the [postgres] extra is not
    └── TeamClosed                 "closed": used after close() (shutting down); never logged

Every kind means the same thing to the daemon: keep enriching alone, keep
results in the outbox, try again later. ``str(error)`` is one line that says
what is wrong and how to fix it, never a password.

PostgreSQL reports connection failures without a SQLSTATE (libpq has no API
for it), so :func:`map_error` reads those from libpq's message; errors on an
open connection are mapped by SQLSTATE (PostgreSQL docs, Appendix A).
"""

from __future__ import annotations

import re

#: SQLSTATE classes/codes (PostgreSQL Appendix A) by taxonomy kind.
_SQLSTATE_KINDS = {
    "08": "unreachable",        # connection exception
    "57P01": "unreachable",     # admin_shutdown (server stopping)
    "57P02": "unreachable",     # crash_shutdown
    "57P03": "unreachable",     # cannot_connect_now (starting up)
    "57014": "unreachable",     # query_canceled (our statement_timeout)
    "55P03": "unreachable",     # lock_not_available (lock_timeout)
    "53": "unreachable",        # insufficient resources (too many connections, disk full)
    "28": "auth_failed",        # invalid authorization specification
    "3D000": "database_missing",
    "42501": "permission_denied",
}
# libpq connection-failure messages (English; the server's own lc_messages
# may translate the FATAL part, which then falls back to "unreachable").
_MESSAGE_KINDS = (
    (re.compile(r"password authentication failed|authentication failed|no pg_hba\.conf entry|"
                r"role \S+ does not exist|password is required|no password supplied"), "auth_failed"),
    (re.compile(r"database \S+ does not exist"), "database_missing"),
    (re.compile(r"permission denied"), "permission_denied"),
)
_FIXES = {
    "unreachable": "working alone; results wait in the outbox",
    "auth_failed": "check the role and password (DSN, PGPASSWORD or PGPASSFILE)",
    "database_missing": "create it (see README, team mode) or fix the DSN",
    "permission_denied": "grant the role ownership of its database (see README, team mode)",
}


class TeamError(Exception):
    """A team-cache operation failed. ``kind`` is the stable code used in logs
    and ``status --json``; ``str()`` is a one-line message naming the fix."""

    kind = "error"


class TeamUnreachable(TeamError):
    kind = "unreachable"


class TeamAuthFailed(TeamError):
    kind = "auth_failed"


class TeamDatabaseMissing(TeamError):
    kind = "database_missing"


class TeamSchemaTooNew(TeamError):
    kind = "schema_too_new"


class TeamPermissionDenied(TeamError):
    kind = "permission_denied"


class TeamNotInstalled(TeamError):
    kind = "not_installed"


class TeamClosed(TeamError):
    """The cache was closed (daemon stopping); nothing is sent any more."""

    kind = "closed"


_CLASSES = {cls.kind: cls for cls in (TeamUnreachable, TeamAuthFailed, TeamDatabaseMissing,
                                      TeamPermissionDenied, TeamSchemaTooNew, TeamNotInstalled)}


def one_line(text: str) -> str:
    """``text`` with libpq's line breaks and ``connection failed:`` prefixes folded into one line."""
    text = re.sub(r"\s*\n\s*", "; ", str(text).strip())
    return re.sub(r"\s{2,}", " ", text)


def kind_of(exc: BaseException) -> str:
    """The taxonomy kind of a psycopg / psycopg_pool exception (``unreachable``
    for anything connection-shaped that is not recognised)."""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        for key in (sqlstate, sqlstate[:2]):
            if key in _SQLSTATE_KINDS:
                return _SQLSTATE_KINDS[key]
        return "error"
    message = str(exc)
    for pattern, kind in _MESSAGE_KINDS:
        if pattern.search(message):
            return kind
    return "unreachable"


def map_error(exc: BaseException, where: str) -> TeamError:
    """The :class:`TeamError` for ``exc`` (a psycopg.Error or psycopg_pool
    error); ``where`` is the redacted DSN. Chain it: ``raise map_error(e, url) from e``."""
    kind = kind_of(exc)
    detail = one_line(str(exc)).removeprefix("connection failed: ")
    if type(exc).__name__ == "PoolTimeout":
        detail = f"no connection within the connect timeout ({detail})"
    fix = _FIXES.get(kind)
    message = f"team cache {kind.replace('_', ' ')} at {where}: {detail}" + (f" — {fix}" if fix else "")
    return _CLASSES.get(kind, TeamError)(message)


def schema_too_new(where: str, found: int, known: int) -> TeamSchemaTooNew:
    """The error for a team database migrated beyond what this version knows."""
    return TeamSchemaTooNew(f"team cache schema too new at {where}: version {found}, this llmc-rag knows up to "
                            f"{known} — upgrade llmc-rag on this machine")


def not_installed() -> TeamNotInstalled:
    """The error for ``team.postgres`` set without the ``[postgres]`` extra."""
    return TeamNotInstalled("team.postgres is set but psycopg is not installed — "
                            "pip install 'llmc-rag-service[postgres]'")
