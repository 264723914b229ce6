"""One team, one piece of work: claims, leases, deferral and wake-ups on a real PostgreSQL server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from tests.pg_fixture import TEST_SETTINGS, ManualClock, enrichment, key


def _claim_when_free(cache, k, deadline_s: float = 20.0) -> float:
    """Retry ``cache.claim([k])`` until it succeeds; returns the monotonic time
    it did. Bounded by ``deadline_s`` (a lease that never ends fails the test)."""
    pause, end = threading.Event(), time.monotonic() + deadline_s
    while time.monotonic() < end:
        if cache.claim([k]) == {k}:
            return time.monotonic()
        pause.wait(0.05)
    raise AssertionError(f"{k} still claimed by someone else after {deadline_s} s")


def test_a_claimed_key_is_not_given_to_a_teammate(pg, team_factory):
    """Two daemons (separate connections) claiming one key: exactly one gets it; the other counts it deferred."""
    alice, bob = team_factory(pg.dsn), team_factory(pg.dsn)
    assert alice.claim([key(1), key(2)]) == {key(1), key(2)}
    assert bob.claim([key(1), key(2), key(3)]) == {key(3)}
    assert bob.status()["deferred"] == 2 and alice.status()["held"] == 2


def test_concurrent_claims_on_overlapping_keys_never_share_a_key(pg, team_factory):
    """Four daemons claiming the same 200 keys at once, in different orders, split them without overlap or deadlock."""
    caches = [team_factory(pg.dsn) for _ in range(4)]
    keys = [key(i) for i in range(200)]
    results: list[set] = [set() for _ in caches]
    barrier = threading.Barrier(len(caches))

    def run(i: int) -> None:
        barrier.wait(10)
        order = keys[i::2] + keys[::-1] if i % 2 else keys
        results[i] = caches[i].claim(order)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(caches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(len(r) for r in results) == 200
    assert set().union(*results) == set(keys)
    assert all(c.status()["reachable"] for c in caches)


def test_a_published_key_cannot_be_claimed(pg, team_factory):
    """Once a result is published, claiming its key gives nothing: the caller looks it up instead."""
    alice, bob = team_factory(pg.dsn), team_factory(pg.dsn)
    alice.claim([key(1)])
    alice.publish([(key(1), enrichment(1))])
    assert bob.claim([key(1)]) == set()
    assert bob.lookup([key(1)]) == {key(1): enrichment(1)}
    assert bob.status()["deferred"] == 0 and alice.status()["held"] == 0


def test_publishing_leaves_the_claim_to_expire(pg, team_factory):
    """A publisher's claim row stays until its lease ends and is no longer renewed, so a teammate whose
    claim statement began before the publication committed still meets the claim instead of a free key."""
    alice = team_factory(pg.dsn)
    alice.claim([key(1)])
    alice.publish([(key(1), enrichment(1))])
    assert pg.sql("SELECT holder FROM llmc_claims") == [(alice.holder,)]
    assert alice.renew() == set() and alice.status()["held"] == 0


def test_a_released_key_can_be_claimed_at_once(pg, team_factory):
    """A daemon that gives up a job releases its claim; a teammate takes it without waiting for the lease."""
    alice, bob = team_factory(pg.dsn), team_factory(pg.dsn)
    alice.claim([key(1)])
    alice.release([key(1)])
    assert bob.claim([key(1)]) == {key(1)}


def test_an_expired_lease_lets_a_teammate_take_over(pg, team_factory):
    """A holder that stops renewing loses the key when its lease ends, not before."""
    lease_s = 0.5
    alice = team_factory(pg.dsn, settings=replace(TEST_SETTINGS, lease_s=lease_s))
    bob = team_factory(pg.dsn)
    claimed_at = time.monotonic()
    assert alice.claim([key(1)]) == {key(1)}
    taken_at = _claim_when_free(bob, key(1))
    assert taken_at - claimed_at >= lease_s
    assert alice.renew() == set() and alice.status()["held"] == 0  # alice learns she lost it


def test_renewing_keeps_a_claim(pg, team_factory):
    """Renewal extends every held claim; a teammate still cannot take them."""
    alice, bob = team_factory(pg.dsn), team_factory(pg.dsn)
    alice.claim([key(1), key(2)])
    assert alice.renew() == {key(1), key(2)}
    assert bob.claim([key(1), key(2)]) == set()


def test_a_killed_holder_blocks_nobody_beyond_its_lease(pg, team_factory, tmp_path):
    """A daemon killed with SIGKILL while holding a claim: a teammate takes the key once the lease runs out."""
    script = (
        "import sys\n"
        "from tests.pg_fixture import TEST_SETTINGS, key, validate_enrichment\n"
        "from dataclasses import replace\n"
        "from llmc_rag_service.team.cache import TeamCache\n"
        "c = TeamCache(sys.argv[1], validate=validate_enrichment, settings=replace(TEST_SETTINGS, lease_s=1.0))\n"
        "assert c.claim([key(1)]) == {key(1)}\n"
        "print('claimed', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, pg.dsn], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[1], text=True)
    try:
        while (line := proc.stdout.readline()) and line.strip() != "claimed":
            pass  # structlog's default output shares stdout
        assert line.strip() == "claimed"
        bob = team_factory(pg.dsn)
        assert bob.claim([key(1)]) == set()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        _claim_when_free(bob, key(1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdin.close()
        proc.stdout.close()


def test_notify_wakes_a_deferred_waiter(pg, team_factory):
    """A daemon waiting for a teammate's key is woken by the publication (NOTIFY), not by its deadline."""
    heard: list[str | None] = []
    got_it = threading.Event()

    def on_published(span_hash):
        heard.append(span_hash)
        if span_hash == key(1).span_hash:
            got_it.set()

    alice = team_factory(pg.dsn, start=True)
    bob = team_factory(pg.dsn, start=True, on_published=on_published)
    assert bob.listening.wait(10)
    assert alice.claim([key(1)]) == {key(1)} and bob.claim([key(1)]) == set()
    result: dict = {}
    # An hour's deadline: within the test's timeout only the NOTIFY can end the wait.
    waiter = threading.Thread(target=lambda: result.update(bob.wait_for([key(1)], time.monotonic() + 3600)))
    waiter.start()
    alice.publish([(key(1), enrichment(1))])
    waiter.join(20)
    assert not waiter.is_alive()
    assert result == {key(1): enrichment(1)}
    assert got_it.wait(10)
    assert bob.status()["deferred"] == 0


def test_wait_for_returns_at_its_deadline_with_what_was_published(pg, team_factory):
    """A waiter whose deadline has passed returns what is there (here nothing), without blocking."""
    clock = ManualClock()
    bob = team_factory(pg.dsn, clock=clock)
    assert bob.wait_for([key(1)], clock() - 1) == {}
    assert bob.status()["deferred"] == 1
    bob.forget([key(1)])
    assert bob.status()["deferred"] == 0


def test_closing_releases_held_claims(pg, team_factory):
    """A daemon that stops cleanly hands its claims back at once."""
    alice, bob = team_factory(pg.dsn), team_factory(pg.dsn)
    alice.claim([key(1)])
    alice.close()
    assert bob.claim([key(1)]) == {key(1)}


def test_claim_or_lookup_claims_the_free_keys_and_returns_the_published_ones_in_one_statement(pg, team_factory):
    """One statement: a published key comes back with its result, a free key is claimed, a key a teammate holds
    is neither (deferred), and a published row that fails validation is reported as rejected."""
    import json

    alice, bob = team_factory(pg.dsn), team_factory(pg.dsn)
    alice.publish([(key(1), enrichment(1))])
    assert alice.claim([key(2)]) == {key(2)}
    pg.sql("INSERT INTO llmc_enrichments(span_hash, model, prompt_version, fields, producer) VALUES (%s, %s, %s, %s, 'x')",
           (key(4).span_hash, key(4).model, key(4).prompt_version, json.dumps({"summary": 1})))
    bob.check()
    sent = bob.status()["queries"]
    rejected: set = set()
    claimed, found = bob.claim_or_lookup([key(1), key(2), key(3), key(4)], rejected=rejected)
    assert bob.status()["queries"] == sent + 1
    assert claimed == {key(3)} and found == {key(1): enrichment(1)} and rejected == {key(4)}
    assert bob.status()["hits"] == 1 and bob.status()["held"] == 1 and bob.status()["deferred"] == 2
