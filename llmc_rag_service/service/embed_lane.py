"""The embedding lane of the pipeline: its queue, clients and worker pool, beside enrichment's.

One :class:`EmbedLane` exists while ``search.embed_model`` is set. It shares
the store, the scans (every indexed span gets an ``embed`` job as well as an
``enrich`` one) and the hosts with enrichment, but has its own threads,
host states and counts, so a missing embedding model or a slow embedder
never holds enrichment back (and lexical search works meanwhile).

Threads: ``EMBED_THREADS_PER_HOST`` worker threads per host
(:class:`~llmc_rag_service.enrich.embedder.EmbedPool`); the pipeline's caller
reads :meth:`counts`, :meth:`state` and :meth:`note` (the pool's counters
and host states are written under its lock).
"""

from __future__ import annotations

from typing import Callable

from llmc_rag_service.clock import SYSTEM, Clock
from llmc_rag_service.config import Config
from llmc_rag_service.enrich.embed_text import INPUT_VERSION
from llmc_rag_service.enrich.embedder import EmbedPool, embed_client
from llmc_rag_service.enrich.gate import EmbedGate
from llmc_rag_service.enrich.ollama import OllamaClient
from llmc_rag_service.enrich.outages import HostOutages
from llmc_rag_service.store.db import Store
from llmc_rag_service.store import vectors
from llmc_rag_service.store.embed_jobs import EmbedQueue


class EmbedLane:
    """Queue + clients + pool for ``config.search.embed_model`` (which must be set).

    Args:
        store: The pipeline's store.
        config: Validated config.
        on_change: Called after job outcomes and host state changes.
        clock: Time of its queue and workers (see :mod:`llmc_rag_service.clock`).
        team: Team mode's gate (``TeamGate.embed_gate``), or None: every text is sent.
        outages: The host outages shared with the enrichment pool (one error line
            per host outage), or None: this lane's own.
    """

    def __init__(self, store: Store, config: Config, on_change: Callable[[], None] = lambda: None,
                 clock: Clock = SYSTEM, team: EmbedGate | None = None, outages: HostOutages | None = None):
        model = config.search.embed_model
        if not model:
            raise ValueError("search.embed_model is null: no embedding lane")
        self.model = model
        self.queue = EmbedQueue(store, model, INPUT_VERSION, config.ollama.model, config.queue.max_attempts,
                                clock)
        self.clients: list[OllamaClient] = [embed_client(config.ollama, model, host)
                                            for host in config.ollama.all_hosts()]
        self.pool = EmbedPool(store, self.queue, self.clients, on_change, clock=clock, team=team, outages=outages)
        # Vectors stored before packs existed (or while the writer fell behind) get packed
        # once here, so a new search process never has to read them row by row.
        vectors.pack_all(store, (model, INPUT_VERSION))

    def counts(self) -> dict[str, int]:
        """Embedding job counts (``pending``, ``ready``, ``running``, ``failed``,
        ``done``) plus ``in_flight``, the embed requests being answered."""
        return {**self.queue.counts(), "in_flight": self.pool.in_flight}

    def remaining(self) -> int:
        """Embedding jobs still to do (pending or running)."""
        counts = self.queue.counts()
        return counts["pending"] + counts["running"]

    def state(self) -> str | None:
        """None while some host can embed; else ``model_missing``, ``unreachable``,
        ``quarantined`` or ``busy`` (as ``Pipeline.ollama_down``)."""
        hosts = self.pool.hosts
        if any(h.state == "ok" and not h.busy for h in hosts):
            return None
        return next((h.state for h in hosts if h.state != "ok"), "busy")

    def note(self, pending: int | None = None) -> str | None:
        """The STATUS part for embeddings: what waits and why, or None when
        nothing is pending (so an idle daemon's STATUS stays short).
        ``pending``: :meth:`remaining` when the caller has it already."""
        state = self.state()
        pending = self.remaining() if pending is None else pending
        if state == "model_missing":
            return (f"embed model {self.model} missing, run: ollama pull {self.model} "
                    f"({pending} spans wait; lexical search works)")
        if state is not None:
            host = next((h for h in self.pool.hosts if h.state != "ok"), self.pool.hosts[0])
            return f"embeddings waiting: {state} ({host.error or 'busy'}); {pending} pending"
        return f"embedding {pending} pending" if pending else None

    def hung(self) -> str | None:
        """Watchdog health check of the embedding workers."""
        return self.pool.hung() or self.pool.dead()

    def finished(self) -> int:
        """Embedding jobs this lane finished (done or dead-lettered)."""
        return self.pool.done + self.pool.failed
