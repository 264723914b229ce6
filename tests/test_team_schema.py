"""Team database schema: forward-only migrations, safe when daemons start together; least privileges."""

from __future__ import annotations

import threading

import pytest

from llmc_rag_service.store import team_pg
from llmc_rag_service.team.client import TeamDB
from llmc_rag_service.team.errors import TeamPermissionDenied, TeamSchemaTooNew
from tests.pg_fixture import TEST_SETTINGS, enrichment, key


def test_migrating_twice_changes_nothing(pg):
    """A second probe finds the schema current and applies nothing."""
    db = TeamDB(pg.dsn, TEST_SETTINGS)
    try:
        assert db.probe() == len(team_pg.MIGRATIONS)
        assert db.probe() == len(team_pg.MIGRATIONS)
    finally:
        db.close()
    assert pg.sql("SELECT version FROM llmc_team_schema ORDER BY version") == [
        (n,) for n in range(1, len(team_pg.MIGRATIONS) + 1)]


def test_daemons_starting_together_migrate_once(pg):
    """Six daemons (own connections) migrating a new database at the same moment all succeed; each migration ran once."""
    dbs = [TeamDB(pg.dsn, TEST_SETTINGS) for _ in range(6)]
    barrier = threading.Barrier(len(dbs))
    outcomes: list = [None] * len(dbs)

    def run(i: int) -> None:
        barrier.wait(10)
        try:
            outcomes[i] = dbs[i].probe()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(dbs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for db in dbs:
        db.close()
    assert outcomes == [len(team_pg.MIGRATIONS)] * len(dbs)
    assert pg.sql("SELECT count(*) FROM llmc_team_schema") == [(len(team_pg.MIGRATIONS),)]


def test_a_schema_newer_than_this_version_is_refused(pg, team_factory):
    """A team database migrated by a newer llmc-rag is not used; the message says to upgrade."""
    team_factory(pg.dsn).check()
    pg.sql("INSERT INTO llmc_team_schema(version) VALUES (99)")
    cache = team_factory(pg.dsn)
    with pytest.raises(TeamSchemaTooNew, match="version 99.*upgrade llmc-rag"):
        cache.check()
    assert cache.lookup([key(1)]) == {}
    assert cache.claim([key(1)]) == {key(1)}  # works alone
    status = cache.status()
    assert status["reachable"] is False and "schema too new" in status["last_error"]


def test_a_role_owning_only_its_database_is_enough(pg, team_factory):
    """The least privileges documented (a login role that owns its database, nothing else) migrate and use the cache."""
    dsn = pg.create_role(f"llmc_{pg.dbname}", "s3cret", own_database=f"{pg.dbname}_team")
    cache = team_factory(dsn)
    assert cache.check() == len(team_pg.MIGRATIONS)
    cache.publish([(key(1), enrichment(1))])
    assert cache.claim([key(2)]) == {key(2)}
    assert cache.lookup([key(1)]) == {key(1): enrichment(1)}
    cache.close()
    pg.sql(f'DROP DATABASE "{pg.dbname}_team" WITH (FORCE)', dbname="postgres")
    pg.sql(f'DROP ROLE "llmc_{pg.dbname}"', dbname="postgres")


def test_a_role_that_may_not_create_tables_gets_a_clear_error(pg, team_factory):
    """A role without CREATE on the schema is told what to grant, in one line."""
    dsn = pg.create_role(f"weak_{pg.dbname}", "s3cret")
    cache = team_factory(dsn)
    try:
        with pytest.raises(TeamPermissionDenied) as info:
            cache.check()
        message = str(info.value)
        assert "permission denied" in message and "\n" not in message and "s3cret" not in message
        assert "README" in message
    finally:
        cache.close()
        pg.sql(f'DROP OWNED BY "weak_{pg.dbname}"')
        pg.sql(f'DROP ROLE "weak_{pg.dbname}"', dbname="postgres")
