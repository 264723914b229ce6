"""Team mode in the pipeline: the gate the workers ask before sending, and the thread that asks the team cache.

The flow (``team/cache.py`` describes the cache's side), for the enrichment
key ``(span_hash, model, prompt_version)`` of each job:

1. **As jobs are queued** the ``team-feeder`` thread looks the new pending
   jobs up, one statement per ``settings.batch`` keys; each hit is stored as
   the job's enrichment (``team_hit``) and costs no request.
2. **Before a worker sends a job** it asks :meth:`TeamGate.admit`. A key this
   daemon claimed ahead is sent at once; otherwise the gate claims the job's
   key together with the next :data:`CLAIM_AHEAD` ready jobs' keys in one
   statement. A key a teammate published is stored (``team_hit``), unless
   its row fails validation (``team_row_invalid``: ignored, and the span
   enriched here); a key a teammate holds is deferred (``team_deferred``): its job waits in the
   queue for up to ``settings.defer_deadline_s`` (one lease), then is
   claimed again, so a teammate that died holds nobody up beyond its lease.
3. **Woken by NOTIFY**: when a teammate publishes a key this daemon deferred,
   the feeder looks it up (batched for at most :data:`HEARD_WAIT_S`) and
   stores it; after the listener reconnects every deferred key is looked up.
   While the team database is unreachable no publication can come: deferred
   jobs are made due at once (``team_deferral_ended``).
4. **After an answer** the worker stores it and :meth:`TeamGate.succeeded`
   publishes it (or keeps it in the store's outbox while the team database
   is unreachable; the cache drains the outbox when it returns). A job that
   fails or goes back gives its claim up (:meth:`TeamGate.abandoned`).

Never blocks: while the team database is unreachable the cache grants every
claim and finds nothing, so the daemon enriches alone at full speed; each
outage costs at most one bounded timeout. Nothing but hashes, model names and
validated enrichments is sent: no path, no name, no span text.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from llmc_rag_service.clock import SYSTEM, Clock
from llmc_rag_service.enrich.gate import SEND, Admission
from llmc_rag_service.enrich.prompt import InvalidAnswer, validate_fields
from llmc_rag_service.models import Enrichment, Job
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.jobs import JobQueue
from llmc_rag_service.store.team_outbox import TeamOutbox
from llmc_rag_service.team.cache import TeamCache
from llmc_rag_service.team.keys import EnrichmentKey
from llmc_rag_service.team.settings import TeamSettings

log = structlog.get_logger(__name__)

#: Keys of upcoming jobs claimed together with the job being admitted (8 keys per claim statement).
CLAIM_AHEAD = 7
#: Longest the feeder sleeps between looks at the queue, seconds (jobs queued by this process wake it).
FEED_TICK_S = 1.0
#: Publications of deferred keys heard are looked up once this many have gathered ...
HEARD_BATCH = 100
#: ... or this many seconds after the first of them was heard.
HEARD_WAIT_S = 0.25


def validate_enrichment(fields: Any) -> Enrichment | None:
    """A team row's decoded fields as an :class:`Enrichment`, or None if they
    fail the enrichment schema (``enrich.prompt.validate_fields``)."""
    try:
        return validate_fields(fields)
    except InvalidAnswer:
        return None


class TeamGate:
    """The :class:`~llmc_rag_service.enrich.gate.JobGate` of team mode, and its feeder thread.

    Args:
        dsn: ``team.postgres``. store: the local store (its outbox table).
        queue: the job queue (replaced on reload: assign :attr:`queue`).
        settings: team cache timeouts and lease.
        on_change: called after jobs were completed from the cache (STATUS may change).
        on_work: called when deferred jobs were made due again (wakes idle workers).
        clock: time of deferral deadlines and of the feeder's waits (the team
            cache's own threads keep real time: their waits are on the network).

    Raises:
        TeamNotInstalled: the ``[postgres]`` extra is missing.
    """

    def __init__(self, dsn: str, store: Store, queue: JobQueue, settings: TeamSettings,
                 on_change: Callable[[], None] = lambda: None, on_work: Callable[[], None] = lambda: None,
                 clock: Clock = SYSTEM):
        self.store, self.queue, self.settings, self.on_change = store, queue, settings, on_change
        self.on_work, self.clock = on_work, clock
        self.cache = TeamCache(dsn, validate=validate_enrichment, outbox=TeamOutbox(store), settings=settings,
                               on_published=self._on_published)
        self._lock = threading.Lock()
        self._granted: dict[EnrichmentKey, float] = {}  # claimed ahead, not yet admitted -> monotonic time
        self._sending: dict[EnrichmentKey, int] = {}  # admitted -> job id
        self._deferred: dict[str, float] = {}  # span hash -> monotonic deadline
        self._watching: Counter[str] = Counter()  # hashes admits are claiming and looking up right now
        self._early: dict[str, Enrichment] = {}  # teammates' results for jobs a worker was putting back
        self._heard: set[str] = set()  # deferred hashes a teammate published, not yet looked up
        self._heard_at: float | None = None
        self._resync = False
        self._watermark = 0  # highest job id looked up as queued
        self.hits = 0  # jobs completed with a teammate's result
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="team-feeder", daemon=True)

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        """Start the cache's threads and the feeder (returns at once; idempotent)."""
        if not self._thread.is_alive() and not self._stop.is_set():
            self.cache.start()
            self._thread.start()

    def close(self) -> None:
        """Stop the feeder, publish what waits in the outbox if the database
        is reachable, release unused claims and close; bounded by the timeouts."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(self.settings.connect_timeout_s + 2 * self.settings.statement_timeout_s)
        if self.cache.health.reachable and self.cache.outbox.count():
            self.cache.link.drain()
        self.cache.close()

    def notify_queued(self) -> None:
        """Jobs were queued: look them up now."""
        self._wake.set()

    def health(self) -> str | None:
        """Watchdog check: None while the feeder thread runs (or before start)."""
        started = self._thread.ident is not None
        return "team feeder thread died" if started and not self._stop.is_set() and not self._thread.is_alive() \
            else None

    def status(self) -> dict[str, Any]:
        """``{url, reachable, hits, published, outbox, deferred, last_error, queries}`` (``status --json``'s
        ``team``): ``hits`` = jobs completed with a teammate's result, ``deferred`` = jobs waiting for a
        teammate, ``queries`` = statements sent to the team database since start (its load)."""
        cache = self.cache.status()
        now = self.clock()
        with self._lock:
            deferred = sum(1 for deadline in self._deferred.values() if deadline > now)
        return {"url": cache["url"], "reachable": cache["reachable"], "hits": self.hits,
                "published": cache["published"], "outbox": cache["outbox"], "deferred": deferred,
                "last_error": cache["last_error"], "queries": cache["queries"]}

    # -- the gate (worker threads) ---------------------------------------------
    def admit(self, job: Job) -> Admission:
        """Send, store a teammate's result, or defer (see the module docstring)."""
        key = self._key(job.span_hash)
        with self._lock:
            self._deferred.pop(job.span_hash, None)
            if self._granted.pop(key, None) is not None:
                self._sending[key] = job.id
                return SEND
            early = self._early.pop(job.span_hash, None)
        if early is not None:
            self._count_hits(1)
            return Admission("hit", early)
        keys = [key, *self._ahead(job.span_hash)]
        with self._lock:  # before the claim: a publication heard from now on is kept for the feeder
            self._watching.update(k.span_hash for k in keys)
        try:
            return self._claim_or_defer(job, key, keys)
        finally:
            with self._lock:
                self._watching.subtract(k.span_hash for k in keys)
                self._watching += Counter()  # drop the zeros

    def _claim_or_defer(self, job: Job, key: EnrichmentKey, keys: list[EnrichmentKey]) -> Admission:
        claimed = self.cache.claim(keys)
        refused = [k for k in keys if k not in claimed]
        poisoned: set[EnrichmentKey] = set()
        hits = self.cache.lookup(refused, rejected=poisoned) if refused else {}
        # A published row that fails validation blocks every claim on its
        # key: this daemon ignores the row and enriches the span itself.
        claimed |= poisoned
        refused = [k for k in refused if k not in poisoned]
        now = self.clock()
        with self._lock:
            self._granted.update((k, now) for k in claimed if k != key and k not in self._sending)
            if key in claimed:
                self._sending[key] = job.id
        self._settle_ahead([k for k in refused if k != key], hits)
        if key in claimed:
            return SEND
        if key in hits:
            self._count_hits(1)
            return Admission("hit", hits[key])
        self._defer_keys([key.span_hash])
        return Admission("defer", delay_s=self.settings.defer_deadline_s)

    def succeeded(self, job: Job, enrichment: Enrichment) -> None:
        """Publish ``job``'s result (to the outbox if the database cannot take it now)."""
        key = self._key(job.span_hash)
        with self._lock:
            self._sending.pop(key, None)
        self.cache.publish([(key, enrichment)])

    def abandoned(self, job: Job) -> None:
        """Give ``job``'s claim up, so a teammate may take the key now."""
        key = self._key(job.span_hash)
        with self._lock:
            self._sending.pop(key, None)
        self.cache.release([key])

    def _key(self, span_hash: str) -> EnrichmentKey:
        return EnrichmentKey(span_hash, self.queue.model, self.queue.prompt_version)

    def _ahead(self, span_hash: str) -> list[EnrichmentKey]:
        """Keys of the next ready jobs, not yet claimed, sent or deferred by this daemon."""
        upcoming = [self._key(h) for h in self.queue.upcoming(2 * CLAIM_AHEAD + 1) if h != span_hash]
        with self._lock:
            # Keys another worker is claiming right now are left to it.
            fresh = [k for k in upcoming if k not in self._granted and k not in self._sending
                     and k.span_hash not in self._deferred and self._watching[k.span_hash] == 0]
        return fresh[:CLAIM_AHEAD]

    def _settle_ahead(self, refused: list[EnrichmentKey], hits: dict[EnrichmentKey, Enrichment]) -> None:
        """Store the published keys among those claimed ahead; defer the jobs of the others."""
        self._store({k.span_hash: e for k, e in hits.items() if k in refused})
        waiting = [k.span_hash for k in refused if k not in hits]
        if waiting:
            self._defer_keys(waiting)
            self.queue.defer(waiting, self.settings.defer_deadline_s)
            for span_hash in waiting:
                log.info("team_deferred", span_hash=span_hash, wait_s=round(self.settings.defer_deadline_s, 1))

    def _defer_keys(self, hashes: Iterable[str]) -> None:
        deadline = self.clock() + self.settings.defer_deadline_s
        with self._lock:
            self._deferred.update((h, deadline) for h in hashes)

    # -- the feeder thread ----------------------------------------------------------
    def _on_published(self, span_hash: str | None) -> None:
        """The listener heard a publication (None: it reconnected). Only records and wakes."""
        with self._lock:
            if span_hash is None:
                self._resync = True
            elif span_hash in self._deferred or self._watching[span_hash] > 0:
                self._heard.add(span_hash)
                self._heard_at = self._heard_at or self.clock()
            else:
                return
        self._wake.set()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.feed()
                except Exception as exc:  # noqa: BLE001 - e.g. the store locked: try again next turn
                    log.error("team_feed_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
                    self._stop.wait(FEED_TICK_S)
                self.clock.wait(self._wake, self._next_wait_s())
                self._wake.clear()
        finally:
            self.store.release_thread()

    def _next_wait_s(self) -> float:
        with self._lock:
            if self._resync or (self._heard_at is not None and len(self._heard) >= HEARD_BATCH):
                return 0.0
            if self._heard_at is not None:
                return max(0.0, min(FEED_TICK_S, self._heard_at + HEARD_WAIT_S - self.clock()))
            return HEARD_WAIT_S if self._early else FEED_TICK_S

    def feed(self) -> int:
        """One turn of the feeder: look up the jobs queued since the last
        turn and the deferred keys teammates published; give up claims
        nobody used. Returns the jobs completed from the cache."""
        with self._lock:
            early, self._early = self._early, {}
        stored = self._store_or_keep(early) + self._look_up_queued() + self._look_up_heard()
        self._sweep()
        if self.cache.health.reachable is False:
            self._undefer_all()
        if stored:
            self.on_change()
        return stored

    def _look_up_queued(self) -> int:
        stored = 0
        while not self._stop.is_set():
            rows = self.queue.pending_after(self._watermark, self.settings.batch)
            if not rows:
                break
            self._watermark = rows[-1][0]
            hits = self.cache.lookup(self._key(h) for _, h in rows)
            stored += len(self._store({k.span_hash: e for k, e in hits.items()}))
            if len(rows) < self.settings.batch:
                break
        return stored

    def _look_up_heard(self) -> int:
        now = self.clock()
        with self._lock:
            due = self._resync or (self._heard_at is not None and (
                len(self._heard) >= HEARD_BATCH or now >= self._heard_at + HEARD_WAIT_S))
            if not due:
                return 0
            # After a reconnection: every key deferred or being deferred right now
            # (a publication may have come while nobody listened).
            wanted = set(self._deferred) | set(self._watching) if self._resync else set(self._heard)
            self._heard, self._heard_at, self._resync = set(), None, False
        hits = {k.span_hash: e for k, e in self.cache.lookup(self._key(h) for h in wanted).items()}
        with self._lock:
            for span_hash in hits:
                self._deferred.pop(span_hash, None)
        return self._store_or_keep(hits)

    def _store_or_keep(self, results: dict[str, Enrichment]) -> int:
        """Store ``results`` for pending jobs; keep those of jobs a worker is
        holding but not sending (it is deferring them right now, and may have
        put them back since the store was asked) for the next turn or the
        job's next admit, instead of letting them wait for their deadline.
        Returns the jobs completed."""
        stored = self._store(results)
        states = self.queue.states(h for h in results if h not in stored)
        with self._lock:
            sending = {k.span_hash for k in self._sending}
            self._early.update((h, results[h]) for h, state in states.items()
                               if state in ("running", "pending") and h not in sending)
        return len(stored)

    def _store(self, results: dict[str, Enrichment]) -> set[str]:
        """Complete the pending jobs of ``results`` locally; returns their span hashes."""
        if not results:
            return set()
        done = self.queue.complete_pending(results)
        with self._lock:
            self.hits += len(done)
            for _, span_hash in done:
                self._deferred.pop(span_hash, None)
        for job_id, span_hash in done:
            log.info("team_hit", job=job_id, span_hash=span_hash)
        return {span_hash for _, span_hash in done}

    def _count_hits(self, n: int) -> None:
        with self._lock:
            self.hits += n

    def _undefer_all(self) -> None:
        """The team database is gone: no publication will come, so every job
        waiting for a teammate is due now (the daemon works alone)."""
        with self._lock:
            hashes, self._deferred, self._heard, self._heard_at = list(self._deferred), {}, set(), None
        if hashes:
            self.queue.defer(hashes, 0.0)
            log.info("team_deferral_ended", jobs=len(hashes), reason="team cache unreachable")
            self.on_work()

    def _sweep(self) -> None:
        """Release claims taken ahead but unused for a lease, and claims of jobs
        that left ``running`` without a word (an unexpected error); forget
        deferrals of jobs no longer pending (done another way, or dropped)."""
        now = self.clock()
        with self._lock:
            stale = [k for k, at in self._granted.items() if now - at > self.settings.lease_s]
            sending = list(self._sending)
            deferred = list(self._deferred)
        states = self.queue.states([k.span_hash for k in stale + sending] + deferred)
        with self._lock:  # a job completed or dropped meanwhile waits for nothing
            for h in deferred:
                if states.get(h) not in ("pending", "running") and h in self._deferred:
                    del self._deferred[h]
        gone = [k for k in sending if states.get(k.span_hash) not in ("running", "done")]
        unused = [k for k in stale if states.get(k.span_hash) not in ("running", "done")]
        with self._lock:
            for k in stale:
                self._granted.pop(k, None)
            for k in gone:
                self._sending.pop(k, None)
        if gone or unused:
            self.cache.release(gone + unused)
