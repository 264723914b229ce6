"""HTTP client for Ollama's ``POST /api/chat``, with one error taxonomy.

Every request carries ``keep_alive`` exactly as configured (a number stays a
JSON number, a duration stays a string), ``format`` = the enrichment JSON
schema, the same ``options`` every time (no reload, cases O7), ``think: false``
(O16) and ``stream: false``: Ollama sends nothing until the whole answer is
ready (O3), so the read timeout is the request deadline and covers queueing
and a cold model load. Nothing here looks at ``/api/ps`` or runs ``ollama``:
the server queues concurrent requests itself.

All httpx exceptions and Ollama error answers are mapped in :func:`_map_errors`
and :func:`_raise_for_answer` to this tree (the worker pool gives each leaf
one policy)::

    OllamaError
     +-- Unavailable     connection refused / DNS / connect timeout  -> pause host, job keeps its attempts
     +-- Busy            503 "server busy" (honours Retry-After)     -> pause, job keeps its attempts
     +-- ModelMissing    404 model not found                         -> pause until /api/tags lists it
     +-- Disconnected    closed without an answer (server restart)   -> retried once at once, then an attempt
     +-- RequestTimeout  no answer within timeout_s                  -> counts an attempt, backoff
     +-- ServerError     other 5xx (load timeout, runner crash)      -> counts an attempt, backoff
     +-- BadRequest      other 4xx: our bug                          -> dead letter at once
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator

import httpx

from llmc_rag_service.config import OllamaConfig
from llmc_rag_service.enrichment import SCHEMA, effective_options

#: Seconds to open a TCP connection (and TLS) to Ollama.
CONNECT_TIMEOUT_S = 10.0
#: Seconds to send a request body.
WRITE_TIMEOUT_S = 30.0
#: Seconds for the cheap probes (/api/version, /api/tags).
PROBE_TIMEOUT_S = 10.0


class OllamaError(Exception):
    """Base of the taxonomy. ``retry_after_s`` is the server's hint, if any."""

    retry_after_s: float | None = None


class Unavailable(OllamaError):
    """Ollama cannot be reached (connection refused, DNS, connect timeout)."""


class Busy(OllamaError):
    """503: the server's pending-request queue is full (cases O5)."""


class ModelMissing(OllamaError):
    """404 for the model: ``ollama pull MODEL`` fixes it (cases O11)."""


class Disconnected(OllamaError):
    """The connection closed before an answer, e.g. the server restarted (O12)."""


class RequestTimeout(OllamaError):
    """No complete answer within the request deadline (``timeout_s``)."""


class ServerError(OllamaError):
    """Any other 5xx, e.g. a load timeout or a runner crash (O14)."""


class BadRequest(OllamaError):
    """Any other 4xx: the request itself is wrong (e.g. keep_alive, O6)."""


@contextlib.contextmanager
def _map_errors(url: str) -> Iterator[None]:
    """Translate httpx exceptions to the taxonomy, chained with ``from``."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
        raise Unavailable(f"{url}: {exc or type(exc).__name__}") from exc
    except httpx.TimeoutException as exc:
        raise RequestTimeout(f"no answer in time: {type(exc).__name__}") from exc
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        raise Disconnected(str(exc) or type(exc).__name__) from exc
    except httpx.HTTPError as exc:
        raise ServerError(f"{type(exc).__name__}: {exc}") from exc


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("error", body)) if isinstance(body, dict) else str(body)[:300]


def _retry_after_s(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _raise_for_answer(response: httpx.Response, model: str) -> None:
    status = response.status_code
    if status < 400:
        return
    text = _error_text(response)
    if status == 404:
        raise ModelMissing(f"model {model!r} not found; run `ollama pull {model}`: {text}")
    if status in (429, 503):
        err: OllamaError = Busy(f"{status}: {text}")
    elif status >= 500:
        err = ServerError(f"{status}: {text}")
    else:
        err = BadRequest(f"{status}: {text}")
    err.retry_after_s = _retry_after_s(response)
    raise err


class OllamaClient:
    """Synchronous, thread-safe client for one Ollama host.

    Args:
        cfg: ``ollama`` config; ``concurrency`` sizes the connection pool,
            ``timeout_s`` is the read (and pool) deadline in seconds.
        transport: Optional httpx transport (tests of pure client logic).
    """

    def __init__(self, cfg: OllamaConfig, transport: httpx.BaseTransport | None = None):
        self.cfg = cfg
        self.options = effective_options(cfg.options)
        self._http = httpx.Client(
            base_url=cfg.url,
            timeout=httpx.Timeout(connect=CONNECT_TIMEOUT_S, read=cfg.timeout_s, write=WRITE_TIMEOUT_S,
                                  pool=cfg.timeout_s),
            limits=httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency),
            transport=transport,
            trust_env=False,
        )

    def request_body(self, messages: list[dict]) -> dict[str, Any]:
        """The ``/api/chat`` body (Ollama API doc, "Generate a chat completion")."""
        return {
            "model": self.cfg.model,
            "messages": messages,
            "stream": False,
            "format": SCHEMA,
            "options": self.options,
            "keep_alive": self.cfg.keep_alive,
            "think": False,
        }

    def chat(self, messages: list[dict]) -> dict[str, Any]:
        """Send one chat request; return the answer object (``done: true``).

        A connection that dies before any answer (a restarted server behind a
        pooled keep-alive connection) is retried once on a fresh one.

        Raises:
            OllamaError: a leaf of the taxonomy in the module docstring.
        """
        body = self.request_body(messages)
        try:
            return self._post_chat(body)
        except Disconnected:
            return self._post_chat(body)

    def _post_chat(self, body: dict[str, Any]) -> dict[str, Any]:
        with _map_errors(self.cfg.url):
            response = self._http.post("/api/chat", json=body)
        _raise_for_answer(response, self.cfg.model)
        try:
            answer = response.json()
        except ValueError as exc:
            raise ServerError(f"answer is not JSON: {response.text[:200]!r}") from exc
        if not isinstance(answer, dict):
            raise ServerError(f"answer is not an object: {response.text[:200]!r}")
        if "error" in answer:
            raise ServerError(str(answer["error"]))
        return answer

    def version(self) -> str:
        """``GET /api/version``: the cheap liveness probe. Raises OllamaError."""
        with _map_errors(self.cfg.url):
            response = self._http.get("/api/version", timeout=PROBE_TIMEOUT_S)
        _raise_for_answer(response, self.cfg.model)
        return str(response.json().get("version", "?"))

    def has_model(self) -> bool:
        """Whether ``GET /api/tags`` lists the configured model (``name`` or
        ``name:latest``). Raises OllamaError when the server cannot answer."""
        with _map_errors(self.cfg.url):
            response = self._http.get("/api/tags", timeout=PROBE_TIMEOUT_S)
        _raise_for_answer(response, self.cfg.model)
        wanted = {self.cfg.model, f"{self.cfg.model}:latest"}
        try:
            models = response.json().get("models", [])
        except (ValueError, AttributeError):
            return False
        return any(m.get("name") in wanted or m.get("model") in wanted for m in models)

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()


def describe_body(body: dict[str, Any]) -> str:
    """A short JSON rendering of a request body for logs (messages elided)."""
    slim = {k: v for k, v in body.items() if k not in ("messages", "format")}
    return json.dumps(slim, sort_keys=True)
