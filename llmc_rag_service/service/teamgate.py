"""Team mode in the pipeline: the gate the workers ask before sending (its feeder thread: ``teamfeed.py``).

The flow (``team/cache.py`` describes the cache's side), for the enrichment
key ``(span_hash, model, prompt_version)`` of each job:

1. **As jobs are queued** the ``team-feeder`` thread looks the new pending
   jobs up, one statement per ``settings.batch`` keys; each hit is stored as
   the job's enrichment (``team_hit``) and costs no request.
2. **Before a worker sends a job** it asks :meth:`TeamGate.admit`. A key this
   daemon claimed ahead is sent at once; otherwise the gate claims the job's
   key together with the next :data:`CLAIM_AHEAD` ready jobs' keys in one
   statement, which also returns what is published among them
   (``TeamCache.claim_or_lookup``). A key a teammate published is stored (``team_hit``), unless
   its row fails validation (``team_row_invalid``: ignored, and the span
   enriched here); a key a teammate holds is deferred (``team_deferred``):
   its job waits in the queue for up to ``settings.defer_deadline_s`` (one lease), then is
   claimed again, so a teammate that died holds nobody up beyond its lease.
3. **Woken by NOTIFY**: when a teammate publishes a key this daemon deferred,
   the feeder looks it up (batched for at most a quarter of a second) and
   stores it; after the listener reconnects every deferred key is looked up.
   While the team database is unreachable no publication can come: deferred
   jobs are made due at once (``team_deferral_ended``).
4. **After an answer** the worker stores it and :meth:`TeamGate.succeeded`
   publishes it (or keeps it in the store's outbox while the team database
   is unreachable; the cache drains the outbox when it returns). A job that
   fails or goes back gives its claim up (:meth:`TeamGate.abandoned`).

Embeddings are shared through the same cache by :class:`~llmc_rag_service.service.teamembed.TeamEmbedGate`
(:meth:`TeamGate.embed_gate`): looked up by the exact text and claimed before a
batch is sent (claims not renewed), published after.

Never blocks: while the team database is unreachable the cache grants every
claim and finds nothing, so the daemon enriches alone at full speed; each
outage costs at most one bounded timeout. Nothing but hashes, model names and
validated enrichments is sent: no path, no name, no span text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from llmc_rag_service.clock import SYSTEM, Clock
from llmc_rag_service.enrich.gate import SEND, Admission
from llmc_rag_service.enrich.prompt import InvalidAnswer, validate_fields
from llmc_rag_service.models import Enrichment, Job
from llmc_rag_service.service.teamembed import TeamEmbedGate
from llmc_rag_service.service.teamfeed import Ledger, TeamFeeder
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.jobs import JobQueue
from llmc_rag_service.store.team_outbox import TeamOutbox
from llmc_rag_service.team.cache import TeamCache
from llmc_rag_service.team.keys import EnrichmentKey
from llmc_rag_service.team.settings import TeamSettings

log = structlog.get_logger(__name__)

#: Keys of upcoming jobs claimed together with the job being admitted (8 keys per claim statement).
CLAIM_AHEAD = 7


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
        self.ledger = Ledger()
        self.feeder = TeamFeeder(self, self.ledger)
        self.cache = TeamCache(dsn, validate=validate_enrichment, outbox=TeamOutbox(store), settings=settings,
                               on_published=self.feeder.on_published)

    def embed_gate(self, model: str, input_version: int) -> TeamEmbedGate:
        """The embedding lane's gate on this cache for ``model`` (one per lane;
        the cache counts its hits for :meth:`status`)."""
        return TeamEmbedGate(self.cache, model, input_version)

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        """Start the cache's threads and the feeder (returns at once; idempotent)."""
        if self.feeder.thread.ident is None and not self.feeder.stopped:
            self.cache.start()
            self.feeder.start()

    def close(self) -> None:
        """Stop the feeder, publish what waits in the outbox if the database
        is reachable, release unused claims and close; bounded by the timeouts."""
        self.feeder.stop(self.settings.connect_timeout_s + 2 * self.settings.statement_timeout_s)
        if self.cache.health.reachable and self.cache.outbox.count():
            self.cache.link.drain()
        self.cache.close()

    def notify_queued(self) -> None:
        """Jobs were queued: look them up now."""
        self.feeder.wake.set()

    def health(self) -> str | None:
        """Watchdog check: None while the feeder thread runs (or before start)."""
        thread = self.feeder.thread
        dead = thread.ident is not None and not self.feeder.stopped and not thread.is_alive()
        return "team feeder thread died" if dead else None

    @property
    def hits(self) -> int:
        """Jobs completed with a teammate's result since start."""
        with self.ledger.lock:
            return self.ledger.hits

    def status(self) -> dict[str, Any]:
        """``{url, reachable, hits, published, outbox, deferred, last_error, queries, embed_hits,
        embed_published}`` (``status --json``'s ``team``): ``hits`` = enrichment jobs completed with a
        teammate's result, ``published`` = enrichments this daemon shared, ``deferred`` = jobs waiting for a
        teammate, ``queries`` = statements sent to the team database since start (its load),
        ``embed_hits`` = vectors taken from teammates, ``embed_published`` = vectors shared; ``outbox``
        counts both kinds waiting."""
        cache = self.cache.status()
        now = self.clock()
        with self.ledger.lock:
            deferred = sum(1 for deadline in self.ledger.deferred.values() if deadline > now)
        return {"url": cache["url"], "reachable": cache["reachable"], "hits": self.hits,
                "published": cache["published"], "outbox": cache["outbox"], "deferred": deferred,
                "last_error": cache["last_error"], "queries": cache["queries"],
                "embed_hits": cache["embed_hits"], "embed_published": cache["embed_published"]}

    # -- the gate (worker threads) ---------------------------------------------
    def admit(self, job: Job) -> Admission:
        """Send, store a teammate's result, or defer (see the module docstring)."""
        key, ledger = self.key(job.span_hash), self.ledger
        with ledger.lock:
            ledger.deferred.pop(job.span_hash, None)
            if ledger.granted.pop(key, None) is not None:
                ledger.sending[key] = job.id
                return SEND
            early = ledger.early.pop(job.span_hash, None)
            if early is not None:
                ledger.hits += 1
                return Admission("hit", early)
        keys = [key, *self._ahead(job.span_hash)]
        with ledger.lock:  # before the claim: a publication heard from now on is kept for the feeder
            ledger.watching.update(k.span_hash for k in keys)
        try:
            return self._claim_or_defer(job, key, keys)
        finally:
            with ledger.lock:
                ledger.watching.subtract(k.span_hash for k in keys)
                ledger.watching += Counter()  # drop the zeros

    def _claim_or_defer(self, job: Job, key: EnrichmentKey, keys: list[EnrichmentKey]) -> Admission:
        poisoned: set[EnrichmentKey] = set()
        claimed, hits = self.cache.claim_or_lookup(keys, rejected=poisoned)
        refused = [k for k in keys if k not in claimed]
        # A published row that fails validation blocks every claim on its
        # key: this daemon ignores the row and enriches the span itself.
        claimed |= poisoned
        refused = [k for k in refused if k not in poisoned]
        now, ledger = self.clock(), self.ledger
        with ledger.lock:
            ledger.granted.update((k, now) for k in claimed if k != key and k not in ledger.sending)
            if key in claimed:
                ledger.sending[key] = job.id
            if key in hits:
                ledger.hits += 1
        self._settle_ahead([k for k in refused if k != key], hits)
        if key in claimed:
            return SEND
        if key in hits:
            return Admission("hit", hits[key])
        self._defer_keys([key.span_hash])
        return Admission("defer", delay_s=self.settings.defer_deadline_s)

    def succeeded(self, job: Job, enrichment: Enrichment) -> None:
        """Publish ``job``'s result (to the outbox if the database cannot take it now)."""
        key = self.key(job.span_hash)
        with self.ledger.lock:
            self.ledger.sending.pop(key, None)
        self.cache.publish([(key, enrichment)])

    def abandoned(self, job: Job) -> None:
        """Give ``job``'s claim up, so a teammate may take the key now."""
        key = self.key(job.span_hash)
        with self.ledger.lock:
            self.ledger.sending.pop(key, None)
        self.cache.release([key])

    def key(self, span_hash: str) -> EnrichmentKey:
        """The team key of this daemon's job for ``span_hash`` (model and prompt version of the queue)."""
        return EnrichmentKey(span_hash, self.queue.model, self.queue.prompt_version)

    def _ahead(self, span_hash: str) -> list[EnrichmentKey]:
        """Keys of the next ready jobs, not yet claimed, sent or deferred by this daemon."""
        upcoming = [self.key(h) for h in self.queue.upcoming(2 * CLAIM_AHEAD + 1) if h != span_hash]
        ledger = self.ledger
        with ledger.lock:
            # Keys another worker is claiming right now are left to it.
            fresh = [k for k in upcoming if k not in ledger.granted and k not in ledger.sending
                     and k.span_hash not in ledger.deferred and ledger.watching[k.span_hash] == 0]
        return fresh[:CLAIM_AHEAD]

    def _settle_ahead(self, refused: list[EnrichmentKey], hits: dict[EnrichmentKey, Enrichment]) -> None:
        """Store the published keys among those claimed ahead; defer the jobs of the others."""
        self.store_hits({k.span_hash: e for k, e in hits.items() if k in refused})
        waiting = [k.span_hash for k in refused if k not in hits]
        if waiting:
            self._defer_keys(waiting)
            self.queue.defer(waiting, self.settings.defer_deadline_s)
            for span_hash in waiting:
                log.info("team_deferred", span_hash=span_hash, wait_s=round(self.settings.defer_deadline_s, 1))

    def _defer_keys(self, hashes: Iterable[str]) -> None:
        deadline = self.clock() + self.settings.defer_deadline_s
        with self.ledger.lock:
            self.ledger.deferred.update((h, deadline) for h in hashes)

    def store_hits(self, results: dict[str, Enrichment]) -> set[str]:
        """Complete the *pending* jobs of ``results`` (span hash -> a teammate's
        validated enrichment) locally; returns the span hashes completed."""
        if not results:
            return set()
        done = self.queue.complete_pending(results)
        with self.ledger.lock:
            self.ledger.hits += len(done)
            for _, span_hash in done:
                self.ledger.deferred.pop(span_hash, None)
        for job_id, span_hash in done:
            log.info("team_hit", job=job_id, span_hash=span_hash)
        return {span_hash for _, span_hash in done}

