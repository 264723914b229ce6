"""Team mode for the embedding lane: the :class:`~llmc_rag_service.enrich.gate.EmbedGate` over the team cache.

The embedding workers (``enrich/embedder.py``) ask it with the exact texts
they are about to send to ``/api/embed``:

1. **Before a batch is sent**: one lookup for the batch (one statement per
   ``settings.batch`` texts). The key is ``(sha256 of the text, embed model,
   input version)`` (``enrich.embed_text.input_hash``): a span's embedded text
   changes when its enrichment lands and is capped to the model's context,
   so the span hash alone would not say which vector a row holds. A row of
   another dimension, with NaN, or of the wrong byte length is logged
   (``team_row_invalid``) and ignored (``team.keys.usable_vectors``).
2. **Then the texts not found are claimed**, in one statement
   (``llmc_claims``, for ``settings.lease_s``): daemons started together on
   the same code walk their queues in the same order, and without claims both
   would embed every text. A text a teammate claimed is being embedded right
   now: its job waits ``settings.embed_wait_s`` (:class:`~llmc_rag_service.team.settings.TeamSettings`)
   and is looked up again (``team_embed_deferred``). The claims are not
   renewed (a request rarely outlives the lease); those of texts that got no
   vector (an error) are released at once, those of published texts lapse
   (deleting them could let a teammate's claim that began before the
   publication take the text again).
3. **After an answer**: the vectors stored are published (``ON CONFLICT DO
   NOTHING``), or kept in the store's outbox while the team database is
   unreachable; the cache drains it when it returns.

Nothing but hashes, the model name and vectors is sent: no path, no name, no text.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from llmc_rag_service.enrich.embed_text import input_hash
from llmc_rag_service.team.cache import TeamCache
from llmc_rag_service.team.keys import EmbeddingKey


class TeamEmbedGate:
    """The embedding lane's gate for one embed model and input version.

    Args:
        cache: the daemon's :class:`TeamCache` (shared with enrichment's gate).
        model: ``search.embed_model``. input_version: ``enrich.embed_text.INPUT_VERSION``.
    """

    def __init__(self, cache: TeamCache, model: str, input_version: int):
        self.cache, self.model, self.input_version = cache, model, input_version
        self.wait_s = cache.settings.embed_wait_s  # see EmbedGate.wait_s
        self._lock = threading.Lock()
        #: Keys of rows not taken while this daemon knew no dimension, already sent back once.
        self._waited: set[EmbeddingKey] = set()

    def key(self, text: str) -> EmbeddingKey:
        """The team key of the vector of ``text``."""
        return EmbeddingKey(input_hash(text), self.model, self.input_version)

    def admit(self, texts: Sequence[str], dim: int | None) -> tuple[dict[str, np.ndarray], set[str]]:
        """``(found, send)`` for ``texts`` (see ``enrich.gate.EmbedGate``): one lookup, then one claim of
        the texts not found. A text whose row failed validation is sent without a claim (its key is
        published, so nobody could claim it). While ``dim`` is None, a row not trusted to set the
        dimension alone sends its text back for one turn first (neither found nor sent: the embedder
        defers it), so two daemons started together do not both embed it."""
        keys = {self.key(text): text for text in texts}
        unusable: set[EmbeddingKey] = set()
        found = self.cache.lookup_embeddings(keys, dim, unusable)
        with self._lock:
            if dim is None:
                # A lone row does not set the dimension (team.keys.usable_vectors), but it is
                # usually sound and its teammates' rows follow: wait once (the job is looked up
                # again after wait_s, by when this daemon may know the dimension) rather
                # than embed a published text again.
                wait_once = unusable - self._waited
                self._waited |= wait_once
                unusable -= wait_once  # the rest waited once already: embedded here, unclaimed
            else:
                self._waited.clear()
                wait_once = set()
        missing = [key for key in keys if key not in found and key not in unusable and key not in wait_once]
        send = self.cache.claim_embeddings(missing) | unusable if missing else unusable
        return ({keys[key]: np.frombuffer(vector, dtype="<f4") for key, vector in found.items()},
                {keys[key] for key in send})

    def publish(self, results: Sequence[tuple[str, Sequence[float]]]) -> None:
        """Share ``(text, vector)`` pairs as float32 little-endian bytes (the outbox keeps what cannot go now)."""
        self.cache.publish_embeddings([(self.key(text), np.asarray(vector, dtype="<f4").tobytes())
                                       for text, vector in results])

    def abandon(self, texts: Sequence[str]) -> None:
        """Release this daemon's claims on ``texts`` (no vector came for them)."""
        self.cache.release_embeddings([self.key(text) for text in texts])
