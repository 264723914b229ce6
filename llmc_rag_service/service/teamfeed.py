"""Team mode's feeder thread, and the ledger it shares with the gate.

The ``team-feeder`` thread (:class:`TeamFeeder`) is the team gate's
(``service/teamgate.py``) background half. Each turn it:

* looks up the jobs queued since the last turn, one statement per
  ``settings.batch`` keys, and stores the hits (``team_hit``);
* looks up the deferred keys a teammate published (heard by the listener,
  batched for at most :data:`HEARD_WAIT_S`), or every deferred key after the
  listener reconnected, and stores them;
* gives up claims taken ahead and unused for a lease, and claims of jobs that
  left ``running`` without a word;
* while the team database is unreachable, makes every deferred job due at
  once (``team_deferral_ended``): no publication can come, the daemon works alone.

:class:`Ledger` is what the gate and the feeder know of this daemon's keys;
every field is read and written under its ``lock``.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from llmc_rag_service.models import Enrichment
from llmc_rag_service.team.keys import EnrichmentKey

if TYPE_CHECKING:
    from llmc_rag_service.service.teamgate import TeamGate

log = structlog.get_logger(__name__)

#: Longest the feeder sleeps between looks at the queue, seconds (jobs queued by this process wake it).
FEED_TICK_S = 1.0
#: Publications of deferred keys heard are looked up once this many have gathered ...
HEARD_BATCH = 100
#: ... or this many seconds after the first of them was heard.
HEARD_WAIT_S = 0.25


@dataclass
class Ledger:
    """This daemon's keys as the gate and the feeder see them (times are the gate's clock, seconds).

    Attributes:
        granted: keys claimed ahead, not yet admitted -> when claimed.
        sending: keys admitted and being sent -> job id.
        deferred: span hashes left to a teammate -> deadline.
        watching: span hashes admits are claiming and looking up right now (a count per hash).
        early: teammates' results for jobs a worker was putting back when they came.
        heard: deferred or watched hashes a teammate published, not yet looked up; ``heard_at`` the first.
        resync: the listener reconnected: look every deferred key up again.
        hits: jobs completed with a teammate's result.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    granted: dict[EnrichmentKey, float] = field(default_factory=dict)
    sending: dict[EnrichmentKey, int] = field(default_factory=dict)
    deferred: dict[str, float] = field(default_factory=dict)
    watching: Counter[str] = field(default_factory=Counter)
    early: dict[str, Enrichment] = field(default_factory=dict)
    heard: set[str] = field(default_factory=set)
    heard_at: float | None = None
    resync: bool = False
    hits: int = 0


class TeamFeeder:
    """The ``team-feeder`` thread of one :class:`~llmc_rag_service.service.teamgate.TeamGate`."""

    def __init__(self, gate: TeamGate, ledger: Ledger):
        self.gate, self.ledger = gate, ledger
        self._watermark = 0  # highest job id looked up as queued
        self.wake, self._stop = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, name="team-feeder", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout_s: float) -> None:
        """End the thread after its current turn (waiting at most ``timeout_s``)."""
        self._stop.set()
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout_s)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def on_published(self, span_hash: str | None) -> None:
        """The listener heard a publication (None: it reconnected). Only records and wakes."""
        ledger = self.ledger
        with ledger.lock:
            if span_hash is None:
                ledger.resync = True
            elif span_hash in ledger.deferred or ledger.watching[span_hash] > 0:
                ledger.heard.add(span_hash)
                ledger.heard_at = ledger.heard_at or self.gate.clock()
            else:
                return
        self.wake.set()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.feed()
                except Exception as exc:  # noqa: BLE001 - e.g. the store locked: try again next turn
                    log.error("team_feed_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
                    self._stop.wait(FEED_TICK_S)
                self.gate.clock.wait(self.wake, self._next_wait_s())
                self.wake.clear()
        finally:
            self.gate.store.release_thread()

    def _next_wait_s(self) -> float:
        ledger = self.ledger
        with ledger.lock:
            if ledger.resync or (ledger.heard_at is not None and len(ledger.heard) >= HEARD_BATCH):
                return 0.0
            if ledger.heard_at is not None:
                return max(0.0, min(FEED_TICK_S, ledger.heard_at + HEARD_WAIT_S - self.gate.clock()))
            return HEARD_WAIT_S if ledger.early else FEED_TICK_S

    def feed(self) -> int:
        """One turn (see the module docstring). Returns the jobs completed from the cache."""
        with self.ledger.lock:
            early, self.ledger.early = self.ledger.early, {}
        stored = self._store_or_keep(early) + self._look_up_queued() + self._look_up_heard()
        self._sweep()
        if self.gate.cache.health.reachable is False:
            self._undefer_all()
        if stored:
            self.gate.on_change()
        return stored

    def _look_up_queued(self) -> int:
        gate, stored = self.gate, 0
        while not self._stop.is_set():
            rows = gate.queue.pending_after(self._watermark, gate.settings.batch)
            if not rows:
                break
            self._watermark = rows[-1][0]
            hits = gate.cache.lookup(gate.key(h) for _, h in rows)
            stored += len(gate.store_hits({k.span_hash: e for k, e in hits.items()}))
            if len(rows) < gate.settings.batch:
                break
        return stored

    def _look_up_heard(self) -> int:
        ledger, now = self.ledger, self.gate.clock()
        with ledger.lock:
            due = ledger.resync or (ledger.heard_at is not None and (
                len(ledger.heard) >= HEARD_BATCH or now >= ledger.heard_at + HEARD_WAIT_S))
            if not due:
                return 0
            # After a reconnection: every key deferred or being deferred right now
            # (a publication may have come while nobody listened).
            wanted = set(ledger.deferred) | set(ledger.watching) if ledger.resync else set(ledger.heard)
            ledger.heard, ledger.heard_at, ledger.resync = set(), None, False
        found = self.gate.cache.lookup(self.gate.key(h) for h in wanted)
        hits = {k.span_hash: e for k, e in found.items()}
        with ledger.lock:
            for span_hash in hits:
                ledger.deferred.pop(span_hash, None)
        return self._store_or_keep(hits)

    def _store_or_keep(self, results: dict[str, Enrichment]) -> int:
        """Store ``results`` for pending jobs; keep those of jobs a worker is
        holding but not sending (it is deferring them right now, and may have
        put them back since the store was asked) for the next turn or the
        job's next admit, instead of letting them wait for their deadline.
        Returns the jobs completed."""
        stored = self.gate.store_hits(results)
        states = self.gate.queue.states(h for h in results if h not in stored)
        with self.ledger.lock:
            sending = {k.span_hash for k in self.ledger.sending}
            self.ledger.early.update((h, results[h]) for h, state in states.items()
                                     if state in ("running", "pending") and h not in sending)
        return len(stored)

    def _undefer_all(self) -> None:
        """The team database is gone: no publication will come, so every job
        waiting for a teammate is due now (the daemon works alone)."""
        ledger = self.ledger
        with ledger.lock:
            hashes, ledger.deferred, ledger.heard, ledger.heard_at = list(ledger.deferred), {}, set(), None
        if hashes:
            self.gate.queue.defer(hashes, 0.0)
            log.info("team_deferral_ended", jobs=len(hashes), reason="team cache unreachable")
            self.gate.on_work()

    def _sweep(self) -> None:
        """Release claims taken ahead but unused for a lease, and claims of jobs
        that left ``running`` without a word (an unexpected error); forget
        deferrals of jobs no longer waiting (done another way, or dropped)."""
        ledger, now, lease_s = self.ledger, self.gate.clock(), self.gate.settings.lease_s
        with ledger.lock:
            stale = [k for k, at in ledger.granted.items() if now - at > lease_s]
            sending, deferred = list(ledger.sending), list(ledger.deferred)
        states = self.gate.queue.states([k.span_hash for k in stale + sending] + deferred)
        gone = [k for k in sending if states.get(k.span_hash) not in ("running", "done")]
        unused = [k for k in stale if states.get(k.span_hash) not in ("running", "done")]
        with ledger.lock:
            for h in deferred:
                if states.get(h) not in ("pending", "running"):
                    ledger.deferred.pop(h, None)
            for k in stale:
                ledger.granted.pop(k, None)
            for k in gone:
                ledger.sending.pop(k, None)
        if gone or unused:
            self.gate.cache.release(gone + unused)
