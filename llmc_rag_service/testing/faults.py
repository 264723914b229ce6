"""Fault injection: what a real Ollama server does wrong, queued per endpoint.

Error texts are Ollama's own (``server/sched.go``, ``llm/server.go``,
``server/routes.go``), so clients can be tested against the real wording
(cases O5, O11, O12, O14, O15 of ``tests/data/ollama_behaviours.md``).

A fault applies to the next request of its endpoint family: ``chat`` (``/api/chat``
and ``/api/generate``) or ``embed`` (``/api/embed``), first in, first out.
"""

from __future__ import annotations

from typing import Any

import collections
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from llmc_rag_service.testing.wire import HttpError

BUSY_MSG = "server busy, please try again.  maximum pending requests exceeded"
LOAD_TIMEOUT_MSG = "timed out waiting for llama runner to start - progress 0.00 - "
RUNNER_CRASH_MSG = "llama runner process has terminated: exit status 2"
MIDSTREAM_MSG = "an error was encountered while running the model: unexpected EOF"

#: Faults that replace the whole exchange, valid on every endpoint.
EXCHANGE_FAULTS = frozenset({
    "busy_503", "load_timeout_500", "runner_crash_500", "disconnect", "hang", "model_missing",
    "bad_request_400", "slow",
})
#: Faults of a chat/generate answer.
CHAT_FAULTS = EXCHANGE_FAULTS | {"empty", "empty_object", "length", "invalid_json", "midstream_error", "stall"}
#: Faults of an embed answer: vectors of the wrong dimension, NaN values.
EMBED_FAULTS = EXCHANGE_FAULTS | {"wrong_dim", "nan"}
#: Every fault :meth:`FaultQueue.inject` knows.
FAULTS = CHAT_FAULTS | EMBED_FAULTS
ENDPOINTS = ("chat", "embed")

_ERROR_FAULTS = {"load_timeout_500": (500, LOAD_TIMEOUT_MSG), "runner_crash_500": (500, RUNNER_CRASH_MSG)}
# Faults applied while answering, holding a slot (``seconds`` is their pause).
_ANSWER_FAULTS = frozenset({"slow", "stall"})


@dataclass
class Fault:
    """One queued fault: its ``kind`` (one of :data:`FAULTS`) and ``params``."""

    kind: str
    params: dict[str, Any]

    def seconds(self, default: float = math.inf) -> float:
        """The ``seconds`` parameter (a pause or a delay), ``default`` when not given."""
        return float(self.params.get("seconds", default))


class FaultQueue:
    """Faults waiting for the next requests, one FIFO per endpoint family; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, collections.deque[Fault]] = {e: collections.deque() for e in ENDPOINTS}

    def inject(self, fault: str, count: int = 1, endpoint: str | None = None, **params: object) -> None:
        """Queue ``fault`` for the next ``count`` requests of ``endpoint`` (``chat`` or
        ``embed``; default ``embed`` for ``wrong_dim``/``nan``, else ``chat``).

        Raises ValueError on an unknown fault, endpoint, or a fault the endpoint cannot have.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {sorted(FAULTS)}")
        endpoint = endpoint or ("embed" if fault not in CHAT_FAULTS else "chat")
        allowed = {"chat": CHAT_FAULTS, "embed": EMBED_FAULTS}.get(endpoint)
        if allowed is None:
            raise ValueError(f"unknown endpoint {endpoint!r}; known: {list(ENDPOINTS)}")
        if fault not in allowed:
            raise ValueError(f"fault {fault!r} does not apply to {endpoint}; known: {sorted(allowed)}")
        with self._lock:
            self._queues[endpoint].extend(Fault(fault, dict(params)) for _ in range(count))

    def pop(self, endpoint: str) -> Fault | None:
        """The next fault for a request of ``endpoint``, or None."""
        with self._lock:
            queue = self._queues[endpoint]
            return queue.popleft() if queue else None

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            for queue in self._queues.values():
                queue.clear()


def apply_early(fault: Fault | None, model: str, sleep: Callable[[float], bool], drop: Callable[[], None]) -> bool:
    """Apply a fault that replaces the exchange (after its ``seconds`` delay, if any).

    Args:
        sleep: waits that many seconds; False if the client left or the server stopped.
        drop: closes the connection without an answer.

    Returns True if the request is over (dropped); False to go on (no fault, a
    hang that ended, or a fault of the answer itself). Raises HttpError for an
    error fault.
    """
    if fault is None or fault.kind in _ANSWER_FAULTS:
        return False
    kind, params = fault.kind, fault.params
    seconds = fault.seconds(math.inf if kind == "hang" else 0.0)
    if kind == "disconnect" or (seconds and not sleep(seconds)):
        drop()
        return True
    if kind == "busy_503":
        after = params.get("retry_after")
        raise HttpError(503, BUSY_MSG, None if after is None else {"Retry-After": str(after)})
    if kind in _ERROR_FAULTS:
        raise HttpError(*_ERROR_FAULTS[kind])
    if kind == "model_missing":
        raise HttpError(404, f"model '{model}' not found")
    if kind == "bad_request_400":
        raise HttpError(400, str(params.get("message", "invalid request")))
    return False
