"""Never blocks, never loses: the team cache with its server stopped, restarted, absent or refusing."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from llmc_rag_service.store.db import Store
from llmc_rag_service.store.team_outbox import TeamOutbox
from llmc_rag_service.team.errors import TeamAuthFailed, TeamDatabaseMissing, TeamUnreachable
from llmc_rag_service.testing.postgres import free_port
from tests.pg_fixture import TEST_SETTINGS, ManualClock, enrichment, key


def test_a_stopped_server_fails_once_then_is_skipped_until_it_returns(pg, team_factory):
    """Server stopped: the first operation fails (bounded), later ones do not touch it; results wait in the
    outbox; when it is back, a probe recovers and drains the outbox."""
    clock = ManualClock()
    cache, reader = team_factory(pg.dsn, clock=clock), team_factory(pg.dsn)
    cache.publish([(key(1), enrichment(1))])
    pg.stop()
    assert cache.lookup([key(1)]) == {}
    status = cache.status()
    assert status["reachable"] is False and status["last_error"].startswith("team cache unreachable at ")
    sent = status["queries"]
    assert cache.lookup([key(1)]) == {}
    assert cache.claim([key(2)]) == {key(2)}            # works alone
    assert cache.publish([(key(2), enrichment(2))]) == 0
    assert cache.status()["queries"] == sent            # the breaker kept every call off the network
    assert cache.status()["outbox"] == 1

    pg.start()
    cache.maintain()
    assert cache.status()["reachable"] is False          # the next probe is not due yet
    clock.advance(60)
    cache.maintain()
    status = cache.status()
    assert status["reachable"] is True and status["outbox"] == 0 and status["published"] == 2
    assert reader.lookup([key(1), key(2)]) == {key(1): enrichment(1), key(2): enrichment(2)}


def test_a_flush_at_the_end_of_a_run_publishes_without_waiting_for_the_backoff(pg, team_factory):
    """enrich's last step: the server came back while the breaker's next probe is not due; flush probes at
    once, drains the outbox and says nothing waits; with the server still down it says what waits."""
    clock = ManualClock()
    cache, reader = team_factory(pg.dsn, clock=clock), team_factory(pg.dsn)
    pg.stop()
    assert cache.publish([(key(1), enrichment(1))]) == 0
    assert cache.flush() == 1                             # still down: it waits in the outbox
    pg.start()
    assert cache.flush() == 0                             # no clock.advance: the backoff is not waited out
    assert reader.lookup([key(1)]) == {key(1): enrichment(1)}
    assert cache.status()["published"] == 1


def test_a_running_daemon_recovers_by_itself_after_a_restart(pg, team_factory):
    """With its threads running, the cache notices the restart, recovers and publishes what waited."""
    cache = team_factory(pg.dsn, start=True)
    assert cache.check() >= 1
    pg.stop("immediate")
    cache.publish([(key(1), enrichment(1))])
    assert cache.status()["reachable"] is False and cache.status()["outbox"] == 1
    pg.start()
    assert cache.health.wait_until(True, timeout_s=30)
    drained = threading.Event()
    while not drained.is_set() and cache.status()["outbox"]:
        drained.wait(0.05)  # the maintenance thread drains right after its probe
    assert team_factory(pg.dsn).lookup([key(1)]) == {key(1): enrichment(1)}


def test_the_listener_resubscribes_after_a_restart(pg, team_factory):
    """After the server restarts, a waiter is still woken by a teammate's publication."""
    alice = team_factory(pg.dsn)
    bob = team_factory(pg.dsn, start=True)
    assert bob.listening.wait(10)
    pg.stop()
    pause = threading.Event()
    while bob.listening.is_set():
        pause.wait(0.05)  # bounded by the test timeout: the listener sees the server go
    pg.start()
    assert bob.listening.wait(30)
    assert bob.health.wait_until(True, timeout_s=30)  # if an operation met the outage, the next probe recovers
    result: dict = {}
    # An hour's deadline: within the test's timeout only the NOTIFY can end the wait.
    waiter = threading.Thread(target=lambda: result.update(bob.wait_for([key(1)], time.monotonic() + 3600)))
    waiter.start()
    alice.publish([(key(1), enrichment(1))])
    waiter.join(20)
    assert result == {key(1): enrichment(1)}


def test_a_server_absent_from_the_start_costs_nothing_but_the_first_timeout(team_factory):
    """Nothing listens at the DSN's port: check says unreachable; the cache works alone and keeps results."""
    cache = team_factory(f"postgresql://llmc:pw@127.0.0.1:{free_port()}/llmc")
    with pytest.raises(TeamUnreachable, match=r"^team cache unreachable at postgresql://llmc@127\.0\.0\.1:\d+/llmc"):
        cache.check()
    assert cache.lookup([key(1)]) == {}
    assert cache.claim([key(1)]) == {key(1)}
    cache.publish([(key(1), enrichment(1))])
    assert cache.status()["outbox"] == 1 and cache.status()["queries"] == 0


def test_a_wrong_password_is_said_clearly_without_the_password(pg, team_factory):
    """A wrong password: auth_failed, one line naming the fix; the password never appears."""
    cache = team_factory(pg.cluster.dsn(pg.dbname, password="not-the-password"))
    with pytest.raises(TeamAuthFailed) as info:
        cache.check()
    message = str(info.value)
    assert "password authentication failed" in message and "PGPASSFILE" in message
    assert "not-the-password" not in message and "\n" not in message
    assert cache.status()["last_error"] == message


def test_a_missing_database_is_said_clearly(pg, team_factory):
    """A DSN naming a database that does not exist: database_missing, and the daemon still works alone."""
    cache = team_factory(pg.cluster.dsn("no_such_db"))
    with pytest.raises(TeamDatabaseMissing, match='database "no_such_db" does not exist'):
        cache.check()
    assert cache.claim([key(1)]) == {key(1)}


def test_the_sqlite_outbox_keeps_results_across_a_restart(pg, team_factory, tmp_path):
    """Results kept while the server is down survive the daemon's restart and are published by the next one."""
    store = Store(tmp_path / "llmc-rag.db")
    cache = team_factory(pg.dsn, outbox=TeamOutbox(store))
    pg.stop()
    cache.publish([(key(1), enrichment(1)), (key(2), enrichment(2))])
    cache.publish([(key(1), enrichment(99))])  # kept once: the first result wins, as in the team database
    cache.close()
    store.close()
    pg.start()

    reopened = Store(tmp_path / "llmc-rag.db")
    assert TeamOutbox(reopened).count() == 2
    successor = team_factory(pg.dsn, outbox=TeamOutbox(reopened))
    successor.maintain()
    assert successor.status()["outbox"] == 0
    assert successor.lookup([key(1), key(2)]) == {key(1): enrichment(1), key(2): enrichment(2)}
    reopened.close()


def test_a_statement_stuck_on_a_lock_gives_up_at_its_timeout(pg, team_factory):
    """A claim that waits on a row another session holds returns after lock_timeout, granting the key (work
    alone) and naming the timeout; the caller is not blocked indefinitely."""
    import psycopg

    cache = team_factory(pg.dsn, settings=replace(TEST_SETTINGS, statement_timeout_s=0.5))  # the wait under test
    cache.check()
    team_factory(pg.dsn).claim([key(1)])
    with psycopg.connect(pg.dsn) as blocker:  # an open transaction holding key(1)'s claim row
        blocker.execute("SELECT * FROM llmc_claims FOR UPDATE")
        assert cache.claim([key(1)]) == {key(1)}
    assert "statement timeout" in cache.status()["last_error"]


def test_the_password_may_come_from_pgpassword_or_a_pgpass_file(pg, tmp_path, monkeypatch):
    """A DSN without password works with PGPASSWORD, or with PGPASSFILE naming a 0600 file (libpq's own lookup)."""
    from llmc_rag_service.team.client import probe_once

    dsn = f"postgresql://postgres@127.0.0.1:{pg.cluster.port}/{pg.dbname}"
    monkeypatch.setenv("PGPASSWORD", pg.cluster.password)
    assert probe_once(dsn) >= 1
    monkeypatch.delenv("PGPASSWORD")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg.cluster.port}:{pg.dbname}:postgres:{pg.cluster.password}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    assert probe_once(dsn) >= 1
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "missing"))
    with pytest.raises(TeamAuthFailed):
        probe_once(dsn)
