"""team.postgres values: how a DSN is shown, which values are accepted, how failures are named."""

from __future__ import annotations

import psycopg
import pytest

from llmc_rag_service.team.errors import kind_of, map_error
from llmc_rag_service.team.settings import TeamSettings, check_dsn, redact_dsn


@pytest.mark.parametrize(("dsn", "shown"), [
    ("postgresql://llmc:s3cret@db.internal:5432/llmc", "postgresql://llmc@db.internal:5432/llmc"),
    ("postgresql://llmc@db.internal/llmc?sslmode=verify-full", "postgresql://llmc@db.internal/llmc?sslmode=verify-full"),
    ("postgres://:s3cret@db/llmc", "postgres://db/llmc"),
    ("postgresql://llmc@db/llmc?password=s3cret&sslmode=require", "postgresql://llmc@db/llmc?sslmode=require"),
    ("host=db dbname=llmc user=llmc password=s3cret sslmode=require", "host=db dbname=llmc user=llmc sslmode=require"),
    ("host=db password='s3 cr\\'et' user=llmc", "host=db user=llmc"),
])
def test_a_dsn_is_shown_without_its_password(dsn, shown):
    """Every DSN form loses its password, and only its password, for display."""
    assert redact_dsn(dsn) == shown
    assert "s3" not in redact_dsn(dsn)


@pytest.mark.parametrize("dsn", ["postgresql://llmc@db/llmc", "host=db dbname=llmc", "postgres://db"])
def test_valid_dsns_pass_the_config_check(dsn):
    assert check_dsn(dsn) is None


@pytest.mark.parametrize(("value", "reason"), [
    ("", "must be a PostgreSQL DSN"),
    (5, "must be a PostgreSQL DSN"),
    ("mysql://db/llmc", "must start with postgresql://"),
    ("just some words", "not a DSN"),
])
def test_invalid_dsns_are_named(value, reason):
    """A value that is no DSN gets a one-line reason for the config error."""
    assert reason in check_dsn(value)


def test_the_defer_deadline_defaults_to_one_lease():
    assert TeamSettings(lease_s=90).defer_deadline_s == 90
    assert TeamSettings(lease_s=90, defer_s=5).defer_deadline_s == 5


@pytest.mark.parametrize(("error", "kind"), [
    (psycopg.OperationalError('connection failed: connection to server at "127.0.0.1", port 1 failed: '
                              'Connection refused\n\tIs the server running on that host?'), "unreachable"),
    (psycopg.OperationalError('connection failed: FATAL:  password authentication failed for user "llmc"'),
     "auth_failed"),
    (psycopg.OperationalError('connection failed: FATAL:  no pg_hba.conf entry for host "10.0.0.1"'), "auth_failed"),
    (psycopg.OperationalError('connection failed: FATAL:  database "llmc" does not exist'), "database_missing"),
    (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), "unreachable"),
    (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), "unreachable"),
    (psycopg.errors.InsufficientPrivilege("permission denied for schema public"), "permission_denied"),
    (psycopg.errors.InvalidPassword("password authentication failed"), "auth_failed"),
    (psycopg.errors.InvalidCatalogName('database "x" does not exist'), "database_missing"),
    (psycopg.errors.UniqueViolation("duplicate key"), "error"),
])
def test_each_failure_maps_to_one_kind(error, kind):
    """The taxonomy: each psycopg failure becomes the most specific kind, with a one-line message."""
    assert kind_of(error) == kind
    mapped = map_error(error, "postgresql://llmc@db/llmc")
    assert mapped.kind == kind
    assert "\n" not in str(mapped) and str(mapped).startswith(f"team cache {kind.replace('_', ' ')} at ")


def test_the_base_install_imports_team_mode_without_psycopg():
    """Importing the team package and its facade loads no psycopg (the [postgres] extra is optional)."""
    import subprocess
    import sys

    code = ("import sys\nimport llmc_rag_service.team, llmc_rag_service.team.cache\n"
            "assert not [m for m in sys.modules if m.startswith('psycopg')], 'psycopg imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_the_extra_the_error_says_what_to_install(monkeypatch):
    """team.postgres set but psycopg missing: not_installed, naming the pip command."""
    from llmc_rag_service.team.cache import TeamCache
    from llmc_rag_service.team.errors import TeamNotInstalled

    monkeypatch.setitem(__import__("sys").modules, "psycopg", None)  # makes `import psycopg` raise ImportError
    with pytest.raises(TeamNotInstalled, match=r"pip install 'llmc-rag-service\[postgres\]'"):
        TeamCache("postgresql://llmc@db/llmc", validate=lambda fields: None)
