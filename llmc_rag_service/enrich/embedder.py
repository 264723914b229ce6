"""The embedding workers: queued ``embed`` jobs -> ``POST /api/embed`` -> stored vectors.

:class:`EmbedPool` is a :class:`~llmc_rag_service.enrich.workers.WorkerPool`
(same threads per host, host states, probes, backoff, quarantine, STATUS
callbacks, hang check) whose turn embeds a batch instead of one enrichment:

* claim up to :data:`EMBED_BATCH` ready jobs (one claim transaction each);
* build each span's text (``enrich/embed_text.py``: summary + code, capped
  to the model's context, counted conservatively) and send them as one
  ``input`` list, with ``keep_alive`` (never asking about model state first);
* a 400 for a batch: every member is sent alone; a 400 for a lone input that
  says it exceeds the context: the context assumed is halved (for this pool
  from now on) and the input re-cut, down to ``MIN_CONTEXT_TOKENS``; any
  other 400: dead-lettered with the reason;
* check the answer: one finite vector per input, all of the model's
  dimension (that of its vectors already stored); ``prompt_eval_count`` at
  least one token per input (else the server embedded nothing) and not above
  our estimate (else the estimate is too low: logged). A refused vector
  counts an attempt for its job only (``job_retry``, then dead-lettered with
  the reason after ``queue.max_attempts``);
* store the good vectors and mark their jobs done in one transaction.

With an :class:`~llmc_rag_service.enrich.gate.EmbedGate` (team mode), the
claimed batch's texts are first looked up in the team cache, in one
statement: each vector a teammate published for the same text (same model,
same recipe version) is stored as if Ollama had answered
(``team_embed_hit``). The rest are claimed in one statement: a text a
teammate is embedding right now goes back for the gate's ``wait_s``
(``team_embed_deferred``); only the texts claimed are sent. After an answer,
the good vectors are published (kept in the outbox while the team database
is unreachable). Texts re-cut after a 400 are not looked up again (rare).

Every other error follows its class's policy (``enrich/ollama.py``), once
per request: ``pause`` releases the batch and marks the host down (a missing
embedding model is ``model_missing``: probed with ``/api/tags``, said in
STATUS with ``ollama pull``; the chat workers are not affected), ``release``
backs off, ``retry`` counts an attempt for each job.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import structlog

from llmc_rag_service.clock import SYSTEM, Clock
from llmc_rag_service.config import HostConfig, OllamaConfig
from llmc_rag_service.enrich import ollama as ol
from llmc_rag_service.enrich.embed_text import EMBED_CONTEXT_TOKENS, MIN_CONTEXT_TOKENS, embed_text, estimate_tokens
from llmc_rag_service.enrich import workers as wk
from llmc_rag_service.enrich.gate import EmbedGate
from llmc_rag_service.enrich.outages import HostOutages
from llmc_rag_service.enrich.workers import Host, WorkerPool
from llmc_rag_service.models import Job
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.embed_jobs import EmbedInput, EmbedQueue
from llmc_rag_service.store.jobs import backoff_s

log = structlog.get_logger(__name__)

#: Inputs sent in one ``/api/embed`` request.
EMBED_BATCH = 16
#: Embedding worker threads per host: one request in flight while the next is prepared.
EMBED_THREADS_PER_HOST = 3

_Item = tuple[Job, EmbedInput]


class EmbedPool(WorkerPool):
    """Embedding worker threads for every host over one :class:`EmbedQueue`
    (see the module docstring). ``clients`` are embed clients (their
    ``cfg.model`` is the embedding model, so probes and messages name it).

    ``team``, asked before and after each request (team mode), or None;
    ``outages``, shared with the enrichment pool (one error line per host outage).

    Attributes: ``context_tokens``, the embedding model's context assumed now
    (lowered when the server refuses an input as too long); ``done`` and
    ``failed``, jobs finished by this pool (``done`` includes the jobs done
    with a teammate's vector).
    """

    def __init__(self, store: Store, queue: EmbedQueue, clients: ol.OllamaClient | Sequence[ol.OllamaClient],
                 on_change: Callable[[], None] = lambda: None, batch_size: int = EMBED_BATCH, clock: Clock = SYSTEM,
                 team: EmbedGate | None = None, outages: HostOutages | None = None):
        super().__init__(store, queue, clients, on_change, clock, outages=outages)
        self.queue: EmbedQueue = queue
        self.batch_size = batch_size
        self.claim_batch = 1  # a turn claims the rest of its batch itself
        self.context_tokens = EMBED_CONTEXT_TOKENS
        self.team = team
        self._team_turn = threading.local()  # per worker thread: see _process
        self._server_dims: dict[ol.OllamaClient, int | None] = {}  # see _known_dim (benign race: same answer)

    READS_TEXT = False  # its inputs are read per batch (EmbedQueue.inputs)
    LANE = "embed"

    def warm_up(self) -> None:
        """Nothing: the first batch loads the embedding model (Ollama queues it behind the load)."""

    # -- one turn ----------------------------------------------------------
    def _process(self, host: Host, job: Job, row: sqlite3.Row | None = None) -> None:
        jobs = [job] + self.queue.claim_many(self.batch_size - 1)
        open_ = {j.id: j for j in jobs}  # claimed jobs without an outcome yet
        self._team_turn.admitted = set()  # texts the team gate admitted this turn and not yet published
        try:
            inputs = self.queue.inputs([j.span_hash for j in jobs])
            for gone in [j for j in jobs if j.span_hash not in inputs]:  # the span vanished after the claim
                self._settle(open_, gone, lambda j: self.queue.release(j))
            items = [(j, inputs[j.span_hash]) for j in jobs if j.span_hash in inputs]
            self._send(host, self._from_team(items, open_, host), open_)
        finally:
            if self.team is not None and self._team_turn.admitted:
                self.team.abandon(sorted(self._team_turn.admitted))
            # An unexpected error: the loop puts the first job back; the others go back here.
            for other in [j for j in open_.values() if j.id != job.id]:
                with contextlib.suppress(Exception):
                    self.queue.release(other, backoff_s(other.attempts + 1), "interrupted by an error")

    def _known_dim(self, host: Host) -> int | None:
        """The embed model's dimension: that of the vectors stored here, else what
        ``host`` says of the model (``/api/show``, asked once per host): a fresh
        store checks teammates' vectors against its own server's model, so a
        teammate serving another model under the same name is refused."""
        dim = self.queue.model_dim()
        if dim is not None:
            return dim
        if host.client not in self._server_dims:
            try:
                self._server_dims[host.client] = host.client.embedding_length(self.queue.model)
            except ol.OllamaError:
                return None  # asked again next turn
        return self._server_dims[host.client]

    def _from_team(self, items: list[_Item], open_: dict[int, Job], host: Host) -> list[_Item]:
        """Store the teammates' vectors for ``items`` and put back the jobs whose
        text a teammate is embedding now (``EmbedGate.admit``); returns the items to send."""
        if self.team is None or not items:
            return items
        texts = [embed_text(inp.text, inp.summary, self.context_tokens, inp.name) for _, inp in items]
        found, send = self.team.admit(texts, self._known_dim(host))
        hits = [(job, found[text], inp.summary is not None) for (job, inp), text in zip(items, texts) if text in found]
        if hits and not self._store_hits(hits, open_):
            found, send = {}, set(texts)
        waiting = [job for (job, _), text in zip(items, texts) if text not in found and text not in send]
        wait_s = self.team.wait_s
        for job in waiting:
            self._settle(open_, job, lambda j: self.queue.release(j, wait_s))
        if waiting:
            log.info("team_embed_deferred", model=self.queue.model, jobs=len(waiting), wait_s=wait_s)
        self._team_turn.admitted = send - found.keys()
        return [item for item, text in zip(items, texts) if text in send and text not in found]

    def _store_hits(self, hits: list[tuple[Job, np.ndarray, bool]], open_: dict[int, Job]) -> bool:
        """Store teammates' vectors as answers to their jobs; False if the store refused them."""
        try:
            self.queue.store_vectors(hits)  # a job whose text missed an enrichment stays pending, as in _accept
        except ValueError as exc:  # another worker stored this model's first vectors, of another dimension
            log.warning("team_embed_refused", model=self.queue.model, vectors=len(hits), error=str(exc))
            return False
        for job, _, _ in hits:
            open_.pop(job.id, None)
            log.info("team_embed_hit", job=job.id, span_hash=job.span_hash, model=self.queue.model)
        with self._lock:
            self.done += len(hits)
        return True

    def _settle(self, open_: dict[int, Job], job: Job, outcome: Callable[[Job], object]) -> None:
        """Give ``job`` its one outcome."""
        outcome(job)
        open_.pop(job.id, None)

    def _send(self, host: Host, items: list[_Item], open_: dict[int, Job], context: int | None = None) -> None:
        """Embed ``items`` in one request (splitting or re-cutting on a 400) and settle each."""
        if not items:
            return
        context = context or self.context_tokens
        texts = [embed_text(inp.text, inp.summary, context, inp.name) for _, inp in items]
        started = self.clock()
        with self._lock:
            self._started[threading.get_ident()] = (host, started)
        try:
            answer = host.client.embed_answer(texts, self.queue.model)
        except ol.BadRequest as exc:
            return self._on_bad_request(host, items, open_, exc, context)
        except ol.OllamaError as exc:
            return self._on_batch_error(host, items, open_, exc, self.clock() - started)
        finally:
            with self._lock:
                self._started.pop(threading.get_ident(), None)
        self._accept(host, items, open_, texts, answer, self.clock() - started)

    def _on_bad_request(self, host: Host, items: list[_Item], open_: dict[int, Job], exc: ol.BadRequest,
                        context: int) -> None:
        if len(items) > 1:
            log.info("embed_batch_split", host=host.url, model=self.queue.model, inputs=len(items), error=str(exc))
            for item in items:
                self._send(host, [item], open_, context)
            return
        job = items[0][0]
        if "context length" in str(exc) and context // 2 >= MIN_CONTEXT_TOKENS:
            with self._lock:
                lowered = context // 2 < self.context_tokens
                self.context_tokens = min(self.context_tokens, context // 2)
            if lowered:
                log.warning("embed_context_lowered", host=host.url, model=self.queue.model,
                            context_tokens=context // 2, error=str(exc))
            return self._send(host, items, open_, context // 2)
        sent = ol.describe_body(host.client.embed_body(["..."], self.queue.model))
        self._settle(open_, job, lambda j: self._dead(j, self._fields(host, j), f"BadRequest: {exc}",
                                                      reason="bad_request", sent=sent))

    def _on_batch_error(self, host: Host, items: list[_Item], open_: dict[int, Job], exc: ol.OllamaError,
                        duration: float) -> None:
        """Apply the error's policy once for the request (see ``WorkerPool._on_error``)."""
        jobs = [job for job, _ in items]
        if exc.policy == "pause":
            for job in jobs:
                self._settle(open_, job, lambda j: self.queue.release(j, error=str(exc)))
            self._host_down(host, "model_missing" if isinstance(exc, ol.ModelMissing) else "unreachable", str(exc))
        elif exc.policy == "release":
            host.busy += 1
            delay = exc.retry_after_s or backoff_s(host.busy, wk.BUSY_BASE_S, wk.BUSY_MAX_S)
            for job in jobs:
                self._settle(open_, job, lambda j: self.queue.release(j, delay, str(exc)))
            (log.warning if host.busy == 1 else log.debug)("ollama_busy", host=host.url, model=self.queue.model,
                                                           error=str(exc))
        else:
            host.strikes += 1
            quarantine = host.strikes >= wk.QUARANTINE_AFTER
            error = f"{type(exc).__name__}: {exc}"
            move = quarantine and any(h is not host and h.state == "ok" for h in self.hosts)
            for job in jobs:
                self._settle(open_, job, (lambda j: self.queue.release(j, 0.0, error)) if move else
                             (lambda j: self._retry(j, self._fields(host, j), error, duration)))
            if quarantine:
                self._host_down(host, "quarantined", f"{host.strikes} failures in a row, last: {exc}")

    def _accept(self, host: Host, items: list[_Item], open_: dict[int, Job], texts: list[str],
                answer: dict[str, Any], duration: float) -> None:
        """Refuse bad vectors (an attempt each), store the good ones, settle every job."""
        vectors = answer["embeddings"]
        problems = self._problems(vectors, answer.get("prompt_eval_count"), texts)
        good = [(job, vector, inp.summary is not None) for (job, inp), vector, problem
                in zip(items, vectors, problems) if problem is None]
        shared = [(text, vector) for text, vector, problem in zip(texts, vectors, problems) if problem is None]
        for (job, _), problem in zip(items, problems):
            if problem is not None:
                self._settle(open_, job, lambda j: self._retry(j, self._fields(host, j),
                                                               f"InvalidEmbedding: {problem}", duration))
        if good:
            reopened = self.queue.store_vectors(good)
            for job, _, _ in good:
                open_.pop(job.id, None)
            with self._lock:
                self.done += len(good)
            log.info("embed_done", host=host.url, model=self.queue.model, inputs=len(items), stored=len(good),
                     reopened=reopened, duration_s=round(duration, 3), prompt_eval_count=answer.get("prompt_eval_count"))
            if self.team is not None:
                self.team.publish(shared)
                self._team_turn.admitted -= {text for text, _ in shared}
        host.strikes = host.busy = 0
        self._host_ok(host, self.clock() - duration)

    def _problems(self, vectors: list[list[float]], evaluated: object, texts: list[str]) -> list[str | None]:
        """Why each vector cannot be stored (None: it can)."""
        if isinstance(evaluated, int) and not isinstance(evaluated, bool) and evaluated < len(texts):
            return [f"prompt_eval_count {evaluated} for {len(texts)} inputs: the server embedded nothing"] * len(texts)
        estimate = sum(estimate_tokens(t) for t in texts)
        if isinstance(evaluated, int) and evaluated > estimate:
            log.warning("embed_tokens_underestimated", model=self.queue.model, prompt_eval_count=evaluated,
                        estimate=estimate)
        finite = [bool(np.isfinite(np.asarray(v, dtype=np.float64)).all()) for v in vectors]
        dim = self.queue.model_dim() or next((len(v) for v, ok in zip(vectors, finite) if ok), None)
        out: list[str | None] = []
        for vector, ok in zip(vectors, finite):
            if not ok:
                out.append("the embedding has NaN or infinite values")
            elif len(vector) != dim:
                out.append(f"the embedding has dimension {len(vector)}, but {self.queue.model} has dimension {dim}")
            else:
                out.append(None)
        return out

    def _fields(self, host: Host, job: Job) -> dict[str, Any]:
        return dict(kind="embed", model=self.queue.model, job=job.id, span_hash=job.span_hash[:12],
                    attempt=job.attempts + 1, host=host.url)


def embed_client(cfg: OllamaConfig, model: str, host: HostConfig | None = None) -> ol.OllamaClient:
    """An :class:`~llmc_rag_service.enrich.ollama.OllamaClient` for embedding
    requests to ``host`` (default ``cfg.url``): ``model`` as its model (so
    probes and errors name it), no ``options`` (the chat model's, e.g. its
    ``num_ctx``, would reload the embedding model with them), and
    :data:`EMBED_THREADS_PER_HOST` connections."""
    url = host.url if host else cfg.url
    return ol.OllamaClient(replace(cfg, model=model, options={}), HostConfig(url, EMBED_THREADS_PER_HOST), options={})
