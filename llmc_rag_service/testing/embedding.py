"""``POST /api/embed`` of the emulator (Ollama API doc, "Generate Embeddings").

Request ``{model, input: str | [str], truncate, keep_alive, options, dimensions}``;
answer ``{model, embeddings: [[float]], total_duration, load_duration,
prompt_eval_count}`` (durations in nanoseconds). As in ``server/routes.go``
``EmbedHandler``:

* ``input`` a string is one input ("" none), a list of strings many; any other
  type is 400 ``invalid input type``. No input at all loads the model and
  answers ``embeddings: []`` (a load request).
* Any installed model can embed; an embedding model (``embed_models``) has its
  own dimension and trained context, a chat model gets :data:`CHAT_MODEL_DIM`.
* An input longer than the context (``min(options.num_ctx, trained context)``,
  counted with :func:`~llmc_rag_service.testing.wire.estimate_tokens`) is 400
  ``the input length exceeds the context length`` whatever ``truncate`` says,
  as recent Ollama versions answer.
* Vectors come from the model's ``embedder``: ``hashed`` (the default) is
  :func:`~llmc_rag_service.testing.vectors.hashed_embedding` of each input
  (deterministic, texts sharing words are close); ``wordllama`` is a real
  learned model, :mod:`~llmc_rag_service.testing.wordvectors` (extra
  ``[wordllama]``, 256 dimensions). Both are L2-normalised; ``dimensions``
  smaller than the model's cuts and re-normalises them.
* Each input costs ``embed_latency_s`` on one of the runner's slots (see
  :mod:`~llmc_rag_service.testing.scheduling`); nothing is sent until all are done.
* Faults (``inject(..., endpoint="embed")``): the exchange faults of
  :mod:`~llmc_rag_service.testing.faults`, plus ``wrong_dim`` (vectors of
  ``params["dim"]``, default half the model's) and ``nan`` (a NaN in each vector).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmc_rag_service.testing import faults as fl
from llmc_rag_service.testing.scheduling import load_options
from llmc_rag_service.testing.vectors import hashed_embedding
from llmc_rag_service.testing.wordvectors import WORDLLAMA_DIM, wordllama_embeddings
from llmc_rag_service.testing.wire import HttpError, estimate_tokens, keep_alive_of

if TYPE_CHECKING:
    from llmc_rag_service.testing.emulator import OllamaEmulator
    from llmc_rag_service.testing.server import Handler

#: Ollama's error text for an input longer than the model's context.
TOO_LONG_MSG = "the input length exceeds the context length"
#: Dimension of the vectors a chat model answers to /api/embed.
CHAT_MODEL_DIM = 1024
#: What computes an embedding model's vectors (see :class:`EmbedModel`).
EMBEDDERS = ("hashed", "wordllama")


@dataclass(frozen=True)
class EmbedModel:
    """An installed embedding model: vector ``dim``, trained ``context_length``
    in tokens, cold ``load_delay_s`` in seconds, and the ``embedder`` that
    computes its vectors (one of :data:`EMBEDDERS`). The defaults are
    nomic-embed-text's shape (768 dimensions; ``nomic-bert.context_length``
    2048) with hashed vectors; :meth:`wordllama` is a real model."""

    dim: int = 768
    context_length: int = 2048
    load_delay_s: float = 0.0
    embedder: str = "hashed"

    def __post_init__(self) -> None:
        if self.embedder not in EMBEDDERS:
            raise ValueError(f"unknown embedder {self.embedder!r}; use one of {', '.join(EMBEDDERS)}")

    @classmethod
    def wordllama(cls, load_delay_s: float = 0.0) -> EmbedModel:
        """WordLlama's shape: 256 dimensions; its context is nomic-embed-text's
        (the model itself has no limit: it averages token vectors)."""
        return cls(dim=WORDLLAMA_DIM, load_delay_s=load_delay_s, embedder="wordllama")


@dataclass
class EmbedRequest:
    """A parsed ``/api/embed`` request (``t0`` monotonic seconds)."""

    model: str
    inputs: list[str]
    keep_alive_s: float | None
    options: dict[str, Any]
    load_opts: dict[str, Any]
    dimensions: int | None
    t0: float
    key: str = ""


def _inputs(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise HttpError(400, "invalid input type")


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


class Embedding:
    """Answers embed requests for ``emu`` (its settings, scheduler and faults)."""

    def __init__(self, emu: OllamaEmulator):
        self.emu = emu
        self.sched = emu.scheduler

    def handle(self, ex: Handler, body: Any) -> None:
        """Answer one ``/api/embed`` request on ``ex`` (raises HttpError for error answers)."""
        req = self._parse(body)
        fault = self.emu.faults.pop("embed")
        if fl.apply_early(fault, req.model, lambda s: self.sched.sleep(ex, s), ex.drop):
            return
        req.key = self.sched.find(req.model)
        if not req.key:
            raise HttpError(404, f"model '{req.model}' not found")
        runner = self.sched.acquire(ex, req)
        if runner is None:
            return ex.drop()
        load_s = time.monotonic() - req.t0
        try:
            spec = self.emu.embed_models.get(req.key) or EmbedModel(CHAT_MODEL_DIM, self.emu.context_length)
            context = self.sched.context_of(runner, spec.context_length)
            tokens = [estimate_tokens(text) for text in req.inputs]
            if any(count > context for count in tokens):
                raise HttpError(400, TOO_LONG_MSG)
            extra = fault.seconds() if fault and fault.kind == "slow" else 0.0
            if extra and not self.sched.sleep(ex, extra):
                return ex.drop()
            end = self.sched.reserve(runner, [self.emu.embed_latency_s] * len(req.inputs))
            vectors = self._vectors(req, spec, fault)  # while the slots are busy, not after
            if not self.sched.sleep_until(ex, end):
                return ex.drop()
            ex.send_json(200, {
                "model": req.model, "embeddings": vectors,
                "total_duration": int((time.monotonic() - req.t0) * 1e9), "load_duration": int(load_s * 1e9),
                "prompt_eval_count": sum(tokens)}, complete=True)
        finally:
            self.sched.release(runner)

    def _parse(self, body: Any) -> EmbedRequest:
        """Validate as Ollama does before scheduling; raises HttpError 400."""
        if not isinstance(body, dict):
            raise HttpError(400, "missing request body")
        keep_alive_s = keep_alive_of(body)
        if not body.get("model"):
            raise HttpError(400, "model is required")
        inputs = _inputs(body.get("input"))
        options = body.get("options") or {}
        dimensions = body.get("dimensions")
        if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)):
            raise HttpError(400, "invalid dimensions")
        # num_ctx defaults to the trained context for an embedding model (cut to it anyway).
        load_opts = load_options(options, ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread"),
                                 10**9)
        return EmbedRequest(body["model"], inputs, keep_alive_s, options, load_opts, dimensions, time.monotonic())

    def _vectors(self, req: EmbedRequest, spec: EmbedModel, fault: fl.Fault | None) -> list[list[float]]:
        """One unit vector per input, cut to ``dimensions`` and faulted as asked."""
        dim = spec.dim
        if fault is not None and fault.kind == "wrong_dim":
            dim = int(fault.params.get("dim", max(1, dim // 2)))
        if spec.embedder == "wordllama":
            vectors = wordllama_embeddings(req.inputs, min(dim, WORDLLAMA_DIM))
        else:
            vectors = [hashed_embedding(text, dim) for text in req.inputs]
        if req.dimensions and 0 < req.dimensions < dim:
            vectors = [_unit(vector[:req.dimensions]) for vector in vectors]
        if fault is not None and fault.kind == "nan":
            for vector in vectors:
                vector[0] = math.nan
        return vectors
