"""``team.postgres``: the DSN forms accepted, how they are shown, and the settings around them.

The value is handed to libpq unchanged, so every libpq form works (PostgreSQL
docs, "Connection Strings"):

* a URL: ``postgresql://llmc@db.internal:5432/llmc?sslmode=verify-full``;
* key/value: ``host=db.internal dbname=llmc user=llmc sslmode=require``.

The password is best kept out of the config: libpq reads ``PGPASSWORD``, then
the file named by ``PGPASSFILE`` (default ``~/.pgpass``, mode 0600); a
password inside the DSN works too. TLS is libpq's ``sslmode``/``sslrootcert``.
Whatever the form, :func:`redact_dsn` is what logs, STATUS and ``status
--json`` show: the DSN without any password.

Nothing here imports psycopg, so config checks and ``status`` work without the
``[postgres]`` extra.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_URL_SCHEMES = ("postgresql://", "postgres://")
# key = value pairs of a libpq key/value string; values may be 'quoted' with \' escapes.
_KV_PAIR = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


@dataclass(frozen=True)
class TeamSettings:
    """How the team cache talks to PostgreSQL (all durations in seconds).

    Attributes:
        connect_timeout_s: libpq ``connect_timeout`` (libpq counts whole
            seconds, at least 2) and the wait for a pooled connection.
        statement_timeout_s: server-side ``statement_timeout`` of every statement.
        lease_s: how long a claim holds a key without renewal; a holder that
            died blocks nobody longer than this. Renewed every ``lease_s / 3``.
        defer_s: longest a deferred key waits for a teammate's result before
            the caller claims it itself (default: one lease).
        embed_wait_s: how long an embedding job waits when a teammate is
            embedding its text right now, before its text is looked up again.
        batch: keys per statement in lookups and publishes.
        pool_size: most connections this daemon opens (plus one listener).
        probe_max_s: longest pause between reconnection attempts while unreachable.
    """

    connect_timeout_s: float = 3.0
    statement_timeout_s: float = 3.0
    lease_s: float = 120.0
    defer_s: float | None = None
    embed_wait_s: float = 1.0
    batch: int = 500
    pool_size: int = 4
    probe_max_s: float = 30.0

    @property
    def defer_deadline_s(self) -> float:
        """``defer_s``, or ``lease_s`` when unset."""
        return self.lease_s if self.defer_s is None else self.defer_s


def redact_dsn(dsn: str) -> str:
    """``dsn`` without its password, for display.

    ``postgresql://llmc:secret@db/llmc?password=x&sslmode=require`` becomes
    ``postgresql://llmc@db/llmc?sslmode=require``; ``host=db password='s e'
    user=llmc`` becomes ``host=db user=llmc``.
    """
    dsn = dsn.strip()
    if dsn.startswith(_URL_SCHEMES):
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, hosts = netloc.rsplit("@", 1)
            netloc = f"{userinfo.split(':', 1)[0]}@{hosts}" if userinfo.split(":", 1)[0] else hosts
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return " ".join(f"{k}={v}" for k, v in _KV_PAIR.findall(dsn) if k != "password")


def check_dsn(dsn: object) -> str | None:
    """None if ``dsn`` is an acceptable ``team.postgres`` value (a non-empty
    string in URL or key/value form), else a one-line reason for a ConfigError."""
    if not isinstance(dsn, str) or not dsn.strip():
        return f"must be a PostgreSQL DSN (postgresql://user@host/db) or null, got {dsn!r}"
    text = dsn.strip()
    if "://" in text:
        if not text.startswith(_URL_SCHEMES):
            return f"URL must start with postgresql:// or postgres://, got {text.split('://')[0]!r}://..."
        if not urlsplit(text).netloc and "host=" not in text:
            return f"URL names no host: {redact_dsn(text)!r}"
        return None
    if not _KV_PAIR.search(text):
        return f"not a DSN (want postgresql://user@host/db or 'host=... dbname=...'): {redact_dsn(text)!r}"
    return None
