"""TeamCache: what the daemon calls to share enrichments and work with its teammates.

The flow the daemon follows for enrichment keys (``EnrichmentKey``):

1. When jobs are queued, in batches: ``hits = team.lookup(keys)``; each hit
   is stored locally and its job is done without a request.
2. Before a worker sends a job: ``if key in team.claim([key])`` it sends it,
   then ``team.publish([(key, enrichment)])`` (its claim is no longer renewed), or
   ``team.release([key])`` if it gives up. Claims are renewed by the cache's
   own thread every ``lease_s / 3`` until then.
3. A key not claimed is being enriched by a teammate: defer the job. Either
   block a worker in ``team.wait_for([key], deadline)`` or, better, park the
   job and act on ``on_published(span_hash)`` (or ``None``: look everything
   up again); at ``settings.defer_deadline_s`` claim it again — a holder that
   died has lost its lease by then.

For embedding keys (``EmbeddingKey``: the hash of the exact text embedded):
``lookup_embeddings(keys, dim)`` before a batch is sent; ``claim_embeddings``
for the keys not found (a key not claimed is being embedded by a teammate:
look it up again a moment later); ``publish_embeddings`` after the answer.
Embedding claims are not renewed; those of texts that got no vector are
released (``release_embeddings``), the others lapse after the lease. Rows
of another dimension, of NaN or of the wrong byte length are logged and
ignored.

Never blocks, never loses: while the database is unreachable (or refuses the
login, or its schema is too new), ``lookup`` finds nothing, ``claim`` grants
every key (work alone), ``publish`` keeps results in the outbox, and the
cache's thread probes with backoff, then drains the outbox. Each of these
costs at most one bounded timeout per outage (``health.Health``).

Thread-safe: call from any worker thread. Values read from the database are
validated by the ``validate`` callable; a row it rejects is logged
(``team_row_invalid``) and ignored.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from llmc_rag_service.models import Enrichment
from llmc_rag_service.store import team_pg
from llmc_rag_service.store.team_outbox import OutboxItem
from llmc_rag_service.team.claims import Claims
from llmc_rag_service.team.keys import (EmbeddingKey, EnrichmentKey, distinct_keys, fields_json, usable_vectors,
                                        vector_problem, well_formed)
from llmc_rag_service.team.link import TeamLink
from llmc_rag_service.team.listener import Listener
from llmc_rag_service.team.outbox import MemoryOutbox, Outbox
from llmc_rag_service.team.settings import TeamSettings
from llmc_rag_service.team.wakeups import Wakeups

log = structlog.get_logger("llmc_rag_service.team")

#: Seconds between claims housekeeping: expired claims older than this are deleted.
PURGE_EVERY_S = 3600.0


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class TeamCache:
    """The team cache and work queue of one daemon.

    Args:
        dsn: ``team.postgres`` (may hold a password; shown only redacted).
        validate: ``validate(fields) -> Enrichment | None`` for a row's
            decoded JSON (the product's schema, ``enrich.prompt``); None or an
            exception rejects the row.
        producer: who published, stored with each row (default: host name);
            never a path.
        outbox: where unpublished results wait (default: in memory).
        settings: timeouts, lease, batch size.
        on_published: called from the listener thread with each span hash a
            teammate published, or None after a reconnection; only record or wake.
        clock: monotonic seconds, for deadlines (injected by tests).

    Raises:
        TeamNotInstalled: the ``[postgres]`` extra is missing.
    """

    def __init__(self, dsn: str, *, validate: Callable[[Any], Enrichment | None], producer: str | None = None,
                 outbox: Outbox | None = None, settings: TeamSettings | None = None,
                 on_published: Callable[[str | None], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings or TeamSettings()
        self.producer = producer or socket.gethostname()
        #: Claims are held under this name: unique per process and instance.
        self.holder = f"{self.producer}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wakeups = Wakeups()
        self.link = TeamLink(dsn, self.settings, outbox if outbox is not None else MemoryOutbox(), self.producer,
                             clock, on_recovered=lambda: self._wakeups.notify(None))
        self.db, self.health, self.outbox, self.url = self.link.db, self.link.health, self.link.outbox, self.link.db.url
        self._call = self.link.call
        self._validate, self._on_published, self._clock = validate, on_published, clock
        self._listener = Listener(self.db.connect, self._heard, self.settings.probe_max_s, self.url)
        self.claims = Claims(self.link, self.holder, self.settings.lease_s, self.settings.batch)
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew_at = self._purge_at = 0.0

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        """Start the listener and the maintenance thread (probe, renew, drain);
        returns at once — the first contact happens in the background."""
        self.db.open()
        self._listener.start()
        self._thread = threading.Thread(target=self._maintenance_loop, name="llmc-team", daemon=True)
        self._thread.start()

    @property
    def listening(self) -> threading.Event:
        """Set while the listener is subscribed to publications."""
        return self._listener.listening

    def check(self) -> int:
        """One synchronous contact for ``serve`` start and ``doctor``: connect,
        migrate if needed; returns the schema version.

        Raises:
            TeamError: the one-line reason (also kept in ``status()``).
        """
        return self.link.check()

    def close(self) -> None:
        """Stop both threads, release held claims (teammates need not wait
        for their lease) and close the connections; bounded by a few seconds."""
        self._stop.set()
        self.link.failures.set()  # wakes the maintenance thread
        if self._thread:
            self._thread.join(self.settings.connect_timeout_s + self.settings.statement_timeout_s)
        self._listener.stop()
        self.claims.release_all()
        self.db.close()

    # -- enrichments -------------------------------------------------------------
    def lookup(self, keys: Iterable[EnrichmentKey],
               rejected: set[EnrichmentKey] | None = None) -> dict[EnrichmentKey, Enrichment]:
        """Published, valid enrichments for ``keys`` (one statement per
        ``settings.batch`` keys); {} for anything unreachable. The keys of
        rows that fail validation are added to ``rejected`` when given: such
        a key can never be claimed (it is published), so the caller enriches it itself."""
        return self._valid_enrichments(self._fetch(team_pg.lookup_enrichments, keys, EnrichmentKey), rejected)

    def publish(self, results: Iterable[tuple[EnrichmentKey, Enrichment]]) -> int:
        """Share validated results (first publisher wins); our claims on them
        are no longer renewed. What cannot be sent now goes to the outbox.
        Returns the rows the team database newly took."""
        rows = {EnrichmentKey(*k): fields_json(e).encode() for k, e in results if well_formed(k)}
        self.claims.done(rows)
        return self._share([OutboxItem("enrichment", *k, payload=f) for k, f in sorted(rows.items())])["enrichment"]

    def claim(self, keys: Iterable[EnrichmentKey]) -> set[EnrichmentKey]:
        """Keys this daemon may now enrich (see :meth:`Claims.claim`); the rest are counted deferred."""
        return self.claims.claim(keys)

    def claim_or_lookup(self, keys: Iterable[EnrichmentKey], rejected: set[EnrichmentKey] | None = None,
                        ) -> tuple[set[EnrichmentKey], dict[EnrichmentKey, Enrichment]]:
        """:meth:`claim` and :meth:`lookup` in one statement per batch:
        ``(claimed, found)``. A key is claimed, or found (published and
        valid), or neither: a teammate holds it (deferred), or its row failed
        validation (added to ``rejected`` when given, as in :meth:`lookup`)."""
        claimed, rows = self.claims.claim_fetching(keys)
        return claimed, self._valid_enrichments(rows, rejected)

    def renew(self) -> set[EnrichmentKey]:
        """Extend every held claim by ``lease_s``; returns those still held (the thread does this)."""
        return self.claims.renew()

    def release(self, keys: Iterable[EnrichmentKey]) -> None:
        """Give up claims (job failed or dropped) so a teammate may take them now."""
        self.claims.release(keys)

    def forget(self, keys: Iterable[EnrichmentKey]) -> None:
        """Stop counting ``keys`` as deferred (their jobs were dropped or done locally)."""
        self.claims.undefer(keys)

    def wait_for(self, keys: Iterable[EnrichmentKey], deadline: float) -> dict[EnrichmentKey, Enrichment]:
        """Block until teammates published all ``keys`` or ``deadline`` (the
        ``clock``'s seconds) passes; returns what was published. Woken by
        NOTIFY; returns at once when the database is unreachable."""
        keys = set(distinct_keys(keys, EnrichmentKey))
        found: dict[EnrichmentKey, Enrichment] = {}
        with self._wakeups.watching({k.span_hash for k in keys}) as watch:
            self.claims.defer(keys)
            while True:
                watch.clear()  # before the lookup: a publication after it still wakes us
                found.update(self.lookup(keys - found.keys()))
                remaining = deadline - self._clock()
                if len(found) == len(keys) or not self.health.usable() or remaining <= 0:
                    return found
                watch.wait(remaining)

    # -- embeddings --------------------------------------------------------------
    def lookup_embeddings(self, keys: Iterable[EmbeddingKey], dim: int | None = None,
                          unusable: set[EmbeddingKey] | None = None) -> dict[EmbeddingKey, bytes]:
        """Published vectors (float32 little-endian bytes) for ``keys``, one
        statement per ``settings.batch`` keys; {} for anything unreachable.

        A row is taken only if its bytes are ``dim`` finite float32 values:
        ``dim`` is the embedding model's dimension as this daemon knows it
        (None before its first vector: then the dimension most rows of this
        lookup share, see ``keys.usable_vectors``). A row that fails is logged
        (``team_row_invalid``) and ignored. The keys of rows present but not
        taken (failed, or not trusted to set the dimension) are added to
        ``unusable`` when given: they can never be claimed (they are
        published), so the caller embeds them itself.
        """
        rows = self._fetch(team_pg.lookup_embeddings, keys, EmbeddingKey)
        found, rejected = usable_vectors(rows, dim)
        for span_hash, producer, reason in rejected:
            self._reject(span_hash, producer, reason)
        if unusable is not None:
            unusable.update(k for k in (EmbeddingKey(*row[:3]) for row in rows) if k not in found)
        self._count(embed_hits=len(found))
        return found

    def claim_embeddings(self, keys: Iterable[EmbeddingKey]) -> set[EmbeddingKey]:
        """Keys this daemon may embed now: not published, and nobody else
        claimed them within ``settings.lease_s`` (every key when the database
        is unreachable). The claims are not renewed: they lapse after the
        lease (a publication ends them earlier for everyone), unless released
        with :meth:`release_embeddings`."""
        claimed: set[EmbeddingKey] = set()
        for chunk in _chunks(distinct_keys(keys, EmbeddingKey), self.settings.batch):
            ok, rows = self._call(team_pg.claim, chunk, self.holder, self.settings.lease_s, "embedding")
            claimed |= {EmbeddingKey(*r) for r in rows} if ok else set(chunk)
        return claimed

    def release_embeddings(self, keys: Iterable[EmbeddingKey]) -> None:
        """Drop this daemon's claims on ``keys`` (no vector came), so teammates may embed them now."""
        for chunk in _chunks(distinct_keys(keys, EmbeddingKey), self.settings.batch):
            self._call(team_pg.release_claims, chunk, self.holder)

    def publish_embeddings(self, vectors: Iterable[tuple[EmbeddingKey, bytes]]) -> int:
        """Share vectors (float32 little-endian bytes; malformed ones are
        dropped) as :meth:`publish` does. Returns the rows newly taken."""
        rows = {EmbeddingKey(*k): bytes(v) for k, v in vectors if well_formed(k) and not vector_problem(v, len(v) // 4)}
        return self._share([OutboxItem("embedding", *k, payload=v, dim=len(v) // 4)
                            for k, v in sorted(rows.items())])["embedding"]

    # -- status --------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``{url, reachable, hits, published, outbox, deferred, last_error}``
        for ``status --json`` (url without password; reachable None before
        the first contact; ``hits`` and ``published`` count enrichments), plus
        ``embed_hits`` and ``embed_published`` (vectors), ``held`` claims,
        ``rejected`` rows and ``queries`` sent (database load)."""
        with self._lock:
            counts = dict(self._counts)
        deferred, held = self.claims.deferred, self.claims.held
        return {"url": self.url, "reachable": self.health.reachable, "hits": counts.get("hits", 0),
                "published": counts.get("published", 0), "outbox": self.outbox.count(), "deferred": deferred,
                "last_error": self.health.last_error, "embed_hits": counts.get("embed_hits", 0),
                "embed_published": counts.get("embed_published", 0), "held": held,
                "rejected": counts.get("rejected", 0),
                "queries": self.db.queries}

    # -- maintenance ---------------------------------------------------------------
    def flush(self) -> int:
        """A last publication before a one-shot run exits: probe at once when the
        database was unreachable (not waiting out the breaker's backoff), then
        drain the outbox. Bounded by the connect and statement timeouts; returns
        the items still waiting in the outbox (the next run or ``serve`` sends them)."""
        if self.outbox.count() and (self.health.reachable is True or self.link.probe()):
            drained = self.link.drain()
            self._count(published=drained["enrichment"], embed_published=drained["embedding"])
        return self.outbox.count()

    def maintain(self) -> None:
        """One round of housekeeping (the thread calls it about once a second, or
        every ``probe_max_s`` if shorter):
        probe when due, renew claims every ``lease_s / 3``, drain the outbox,
        purge long-expired claims hourly."""
        if self.health.reachable is not True and self.health.probe_due():
            self.link.probe()
        if self.health.reachable is not True:
            return
        now = self._clock()
        if self.claims.held and now >= self._renew_at:
            self._renew_at = now + self.settings.lease_s / 3
            self.renew()
        if self.link.outbox_dirty:
            drained = self.link.drain()
            self._count(published=drained["enrichment"], embed_published=drained["embedding"])
        if now >= self._purge_at:
            self._purge_at = now + PURGE_EVERY_S
            self._call(team_pg.purge_expired_claims, PURGE_EVERY_S)

    def _maintenance_loop(self) -> None:
        # Probes may be due as often as probe_max_s apart (TeamHealth): the tick must not be longer.
        tick = min(1.0, self.settings.lease_s / 3, self.settings.probe_max_s)
        while not self._stop.is_set():
            try:
                self.maintain()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any one failure
                log.error("team_maintenance_failed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
            self.link.failures.wait(tick)  # a failure wakes it early: the outbox may have grown
            self.link.failures.clear()

    # -- internals -------------------------------------------------------------------
    def _fetch(self, statement: Callable[..., list[Any]], keys: Iterable[tuple[Any, ...]],
               kind: type[Any]) -> list[Any]:
        """The rows ``statement`` finds for ``keys`` (well-formed ones, as ``kind``),
        one statement per ``settings.batch`` keys; stops at the first failure."""
        rows: list[Any] = []
        for chunk in _chunks(distinct_keys(keys, kind), self.settings.batch):
            ok, found = self._call(statement, chunk)
            if not ok:
                break
            rows += found
        return rows

    def _share(self, items: list[OutboxItem]) -> Counter[str]:
        """Publish ``items``, ``settings.batch`` at a time; what the database
        does not take goes to the outbox. Returns the rows newly taken, per kind."""
        inserted: Counter[str] = Counter()
        for start in range(0, len(items), self.settings.batch):
            sent = self.link.send(items[start:start + self.settings.batch])
            if sent is None:
                self.link.keep(items[start:])
                break
            inserted += sent
        self._count(published=inserted["enrichment"], embed_published=inserted["embedding"])
        return inserted

    def _valid_enrichments(self, rows: Iterable[tuple[str, str, int, Any, str]],
                           rejected: set[EnrichmentKey] | None) -> dict[EnrichmentKey, Enrichment]:
        """The rows ``(span_hash, model, prompt_version, fields, producer)`` that
        pass ``validate``, counted as hits and no longer deferred; the keys of
        the others go to ``rejected`` when given."""
        found: dict[EnrichmentKey, Enrichment] = {}
        for span_hash, model, version, fields, producer in rows:
            enrichment = self._checked(span_hash, fields, producer)
            if enrichment is not None:
                found[EnrichmentKey(span_hash, model, version)] = enrichment
            elif rejected is not None:
                rejected.add(EnrichmentKey(span_hash, model, version))
        self._count(hits=len(found))
        self.claims.undefer(found)
        return found

    def _checked(self, span_hash: str, fields: Any, producer: str) -> Enrichment | None:
        try:
            enrichment = self._validate(fields)
        except Exception as exc:  # noqa: BLE001 - a teammate's row is untrusted input
            self._reject(span_hash, producer, f"{type(exc).__name__}: {exc}")
            return None
        if not isinstance(enrichment, Enrichment):
            self._reject(span_hash, producer, "fails the enrichment schema")
            return None
        return enrichment

    def _reject(self, span_hash: str, producer: str, reason: str) -> None:
        self._count(rejected=1)
        log.warning("team_row_invalid", span_hash=span_hash, producer=producer, reason=reason[:200])

    def _count(self, **deltas: int) -> None:
        with self._lock:
            self._counts.update(deltas)

    def _heard(self, span_hash: str | None) -> None:
        self._wakeups.notify(span_hash)
        if self._on_published is not None:
            self._on_published(span_hash)
