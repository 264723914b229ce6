"""Embedding jobs: the ``embed`` kind of the persistent queue, and what they read and write.

A job embeds one span content hash for one embedding model and input version
(the version of the recipe that makes the embedded text); its result is a row
of ``embeddings`` (see :mod:`~llmc_rag_service.store.vectors`). Same states,
backoff, dead-lettering and crash recovery as enrichment jobs
(:class:`~llmc_rag_service.store.jobs.JobQueue`).

The embedded text uses the span's enrichment when there is one, so an
embedding is redone when that changes: ``basis`` records the enrichment key
(``model@prompt_version``) a job's text was made from (NULL: code only).

* :meth:`EmbedQueue.refresh` -- an enrichment just landed (inside its
  transaction): the span's embedding job goes back to pending;
* :meth:`EmbedQueue.store_vectors` -- vectors stored; a job whose text missed an
  enrichment that landed meanwhile stays pending;
* :meth:`EmbedQueue.enqueue_missing` -- catch-up: spans without a vector, and
  vectors made without the enrichment that now exists.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from llmc_rag_service.clock import SYSTEM, Clock
from llmc_rag_service.models import PROMPT_VERSION, Job
from llmc_rag_service.store import vectors
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.jobs import PRIORITY_BACKFILL, PRIORITY_LIVE, JobQueue

#: Set a done or failed job back to pending with no attempts (a new input).
_REOPEN = ("state = 'pending', attempts = 0, next_attempt_at = 0, last_error = NULL, claimed_by = NULL,"
           " updated_at = :now")


@dataclass(frozen=True)
class EmbedInput:
    """What a span's embedded text is made from: ``language``, ``text`` (the
    span's code), the ``summary`` of its enrichment (None when not enriched)
    and the ``name`` of a span holding that code (None: unnamed)."""

    language: str
    text: str
    summary: str | None
    name: str | None = None


class EmbedQueue(JobQueue):
    """The embedding jobs of one embedding model (``model``) and input version.

    Args:
        store: The state store.
        model: ``search.embed_model``.
        input_version: Version of the text recipe (``enrich.embed_text.INPUT_VERSION``).
        chat_model: ``ollama.model``, whose enrichments the embedded text uses.
        max_attempts: Failed attempts before a job is dead-lettered.
        clock: Its ``time()`` stamps jobs (see :class:`~llmc_rag_service.store.jobs.JobQueue`).
    """

    KIND = "embed"
    HAS_RESULT = ("EXISTS (SELECT 1 FROM embeddings r WHERE r.span_hash = :h AND r.embed_model = :model"
                  " AND r.input_version = :ver)")

    def __init__(self, store: Store, model: str, input_version: int, chat_model: str, max_attempts: int = 5,
                 clock: Clock = SYSTEM):
        super().__init__(store, model, max_attempts, clock)
        self.input_version, self.chat_model = input_version, chat_model
        self.basis = f"{chat_model}@{PROMPT_VERSION}"

    @property
    def version(self) -> int:
        return self.input_version

    def _enriched(self, span: str) -> str:
        return (f"EXISTS (SELECT 1 FROM enrichments e WHERE e.span_hash = {span} AND e.model = :cm"
                f" AND e.prompt_version = :pv)")

    def refresh(self, tx: sqlite3.Connection, span_hash: str) -> None:
        """Inside ``tx`` (the one storing the span's enrichment): queue its
        re-embedding at live priority, whatever state its job was in (a
        running job is caught by :meth:`store_vectors`)."""
        tx.execute(
            f"""INSERT INTO jobs(kind, span_hash, model, prompt_version, state, priority, created_at, updated_at)
                VALUES (:kind, :h, :model, :ver, 'pending', :prio, :now, :now)
                ON CONFLICT(kind, span_hash, model, prompt_version) DO UPDATE SET {_REOPEN}, priority = :prio
                WHERE jobs.state IN ('done', 'failed')""",
            self._params(h=span_hash, prio=PRIORITY_LIVE, now=self.clock.time()))

    def enqueue_missing(self, tx: sqlite3.Connection, priority: int = PRIORITY_BACKFILL) -> int:
        """Inside ``tx``: queue every span hash in the tree without a vector of
        this model and version (reopening a done job whose vector is gone), and
        reopen done jobs whose text was made without the enrichment that now
        exists. Returns how many jobs were queued or reopened."""
        params = self._params(prio=priority, now=self.clock.time(), cm=self.chat_model, pv=PROMPT_VERSION, basis=self.basis)
        missing = tx.execute(
            f"""INSERT INTO jobs(kind, span_hash, model, prompt_version, state, priority, created_at, updated_at)
                SELECT DISTINCT :kind, s.span_hash, :model, :ver, 'pending', :prio, :now, :now FROM spans s
                WHERE NOT {self.HAS_RESULT.replace(":h", "s.span_hash")}
                ON CONFLICT(kind, span_hash, model, prompt_version) DO UPDATE SET {_REOPEN}
                WHERE jobs.state = 'done'""", params).rowcount
        stale = tx.execute(
            f"""UPDATE jobs SET {_REOPEN} WHERE kind = :kind AND model = :model AND prompt_version = :ver
                AND state = 'done' AND basis IS NOT :basis AND {self._enriched("jobs.span_hash")}""",
            params).rowcount
        return missing + stale

    def inputs(self, span_hashes: Sequence[str]) -> dict[str, EmbedInput]:
        """What each span hash's text is made from (hashes no file holds any more are left out)."""
        marks = ",".join("?" * len(span_hashes))
        rows = self.store.conn.execute(
            f"""SELECT t.span_hash, t.language, t.text, e.summary,
                       (SELECT MIN(s.name) FROM spans s WHERE s.span_hash = t.span_hash) AS name
                FROM span_texts t
                LEFT JOIN enrichments e ON e.span_hash = t.span_hash AND e.model = ? AND e.prompt_version = ?
                WHERE t.span_hash IN ({marks})
                AND EXISTS (SELECT 1 FROM spans s WHERE s.span_hash = t.span_hash)""",
            (self.chat_model, PROMPT_VERSION, *span_hashes)).fetchall()
        return {r["span_hash"]: EmbedInput(r["language"], r["text"], r["summary"], r["name"]) for r in rows}

    def model_dim(self) -> int | None:
        """The dimension of this model's stored vectors, None before the first."""
        return vectors.model_dim(self.store.conn, self.model)

    def store_vectors(self, results: Sequence[tuple[Job, Sequence[float] | np.ndarray, bool]]) -> int:
        """Store the vectors and mark their jobs done, in one transaction.

        Args:
            results: ``(job, vector, enriched)``; ``vector``: floats (Ollama's
                answer) or a float32 array (a teammate's); ``enriched``: the text used
                the span's enrichment. A job whose text did not, while an
                enrichment exists now (it landed during the request), is
                stored but set pending again, so the better text is embedded.

        Returns how many jobs were set pending again.

        Raises:
            ValueError: a vector is empty, not finite, or of another dimension
                than this model's (nothing is written).
        """
        reopened = 0
        with self.store.write() as tx:
            vectors.put_embeddings(tx, [(job.span_hash, self.model, self.input_version, vector)
                                        for job, vector, _ in results])
            for job, _, enriched in results:
                self.mark_done(tx, job, self.basis if enriched else None)
                if not enriched and tx.execute(f"SELECT {self._enriched(':h')}",
                                               {"h": job.span_hash, "cm": self.chat_model,
                                                "pv": PROMPT_VERSION}).fetchone()[0]:
                    tx.execute(f"UPDATE jobs SET {_REOPEN} WHERE id = :id", {"id": job.id, "now": self.clock.time()})
                    reopened += 1
        return reopened
