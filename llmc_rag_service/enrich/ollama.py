"""HTTP client for one Ollama host's ``POST /api/chat`` and ``POST /api/embed``, with one error taxonomy.

Every request carries ``keep_alive`` exactly as configured (a number stays a
JSON number, a duration stays a string, cases O6). A chat request carries the
caller's answer schema as ``format``, the same load-time ``options`` every
time (no reload, O7), ``think: false`` (O16) and ``stream: true``; an embed
request a list of inputs and ``truncate: false`` (:meth:`OllamaClient.embed`).
Nothing here looks at ``/api/ps`` or runs ``ollama``: the server queues
concurrent requests itself.

Deadlines (O3, O17; the official client has none). Ollama sends no byte, not
even the status line, before the first token: queue wait, a cold model load
and prompt evaluation all come first (O3). So a request has two phases:

* connect :data:`CONNECT_TIMEOUT_S`, write :data:`WRITE_TIMEOUT_S`, pool
  :data:`POOL_TIMEOUT_S`;
* first byte within ``ollama.load_timeout_s`` (the read timeout until the
  headers arrive) -- never shorter, so a load is not aborted by hanging up;
* then the whole answer within ``ollama.timeout_s`` of the first byte, with
  no gap between two chunks longer than :data:`CHUNK_TIMEOUT_S`.

A request therefore ends within :meth:`OllamaClient.max_request_s`.
Streaming is what makes a stalled generation visible in seconds, not after
the full budget; an error after the first chunk arrives as a final
``{"error": ...}`` line with status 200 (O15) and is a failure.

All httpx exceptions (table :data:`HTTPX_ERRORS`) and Ollama error answers
(:func:`error_for_status`) map to this tree; ``policy`` on each class is what
the worker pool does with it::

    OllamaError
     +-- Unavailable     refused / DNS / connect timeout / bad URL  policy "pause": host down, probe /api/version; attempts kept
     +-- ModelMissing    404 model not found (O11)                  policy "pause": probe /api/tags until listed; attempts kept
     +-- Busy            503 / 429 (O5), honours Retry-After        policy "release": jittered backoff; attempts kept
     +-- Disconnected    closed without an answer (O12)             policy "retry": an attempt, backoff (one fresh-connection retry first)
     +-- RequestTimeout  a deadline above passed                    policy "retry"
     +-- ServerError     other 5xx (O14), mid-stream error (O15)    policy "retry"
     +-- BadRequest      other 4xx, our own misuse of httpx         policy "dead_letter": at once, with what was sent
"""

from __future__ import annotations

import email.utils
import functools
import json
import re
import ssl
import time
from contextlib import contextmanager
from typing import Any, Callable, ClassVar, Iterator, Sequence

import httpx

from llmc_rag_service.config import HostConfig, OllamaConfig

#: Seconds to open a TCP connection (and TLS) to Ollama.
CONNECT_TIMEOUT_S = 10.0
#: Seconds to send a request body.
WRITE_TIMEOUT_S = 30.0
#: Seconds to wait for a free pooled connection (the pool has a spare one).
POOL_TIMEOUT_S = 10.0
#: Longest silence between two chunks of a streamed answer, in seconds.
CHUNK_TIMEOUT_S = 60.0
#: Seconds for the cheap probes (/api/version, /api/tags).
PROBE_TIMEOUT_S = 10.0


class OllamaError(Exception):
    """Base of the taxonomy. ``retry_after_s``: the server's Retry-After, if any."""

    policy: ClassVar[str] = "retry"
    retry_after_s: float | None = None


class Unavailable(OllamaError):
    """Ollama cannot be reached (connection refused, DNS, connect timeout) (O13)."""

    policy = "pause"


class ModelMissing(OllamaError):
    """404 for the model: ``ollama pull MODEL`` fixes it (O11)."""

    policy = "pause"


class Busy(OllamaError):
    """503: the server's pending-request queue is full (O5); or 429."""

    policy = "release"


class Disconnected(OllamaError):
    """The connection closed before a complete answer (e.g. a restart, O12).
    ``before_answer``: no response byte had arrived."""

    before_answer: bool = False


class RequestTimeout(OllamaError):
    """A deadline passed (first byte, chunk gap, whole answer, pool, write)."""


class ServerError(OllamaError):
    """Any other 5xx, e.g. a load timeout or a runner crash (O14), or an error
    line in a 200 stream (O15)."""


class BadRequest(OllamaError):
    """Any other 4xx (e.g. a bad keep_alive, O6), or our own misuse of httpx."""

    policy = "dead_letter"


#: Every httpx exception class -> taxonomy class. A test walks httpx's
#: exception hierarchy and fails if a class is missing here.
HTTPX_ERRORS: dict[type[Exception], type[OllamaError]] = {
    httpx.HTTPError: ServerError, httpx.RequestError: ServerError, httpx.TransportError: Unavailable,
    httpx.ConnectError: Unavailable, httpx.ConnectTimeout: Unavailable, httpx.ProxyError: Unavailable,
    httpx.UnsupportedProtocol: Unavailable, httpx.InvalidURL: Unavailable,
    httpx.TimeoutException: RequestTimeout, httpx.ReadTimeout: RequestTimeout,
    httpx.WriteTimeout: RequestTimeout, httpx.PoolTimeout: RequestTimeout,
    httpx.NetworkError: Disconnected, httpx.ReadError: Disconnected, httpx.WriteError: Disconnected,
    httpx.CloseError: Disconnected, httpx.ProtocolError: Disconnected, httpx.RemoteProtocolError: Disconnected,
    httpx.LocalProtocolError: BadRequest, httpx.DecodingError: ServerError, httpx.TooManyRedirects: ServerError,
    httpx.HTTPStatusError: ServerError, httpx.CookieConflict: BadRequest,
    httpx.StreamError: BadRequest, httpx.StreamConsumed: BadRequest, httpx.StreamClosed: BadRequest,
    httpx.ResponseNotRead: BadRequest, httpx.RequestNotRead: BadRequest,
}


def map_exception(exc: Exception, model: str = "") -> OllamaError:
    """The taxonomy error for an httpx exception (by its most specific mapped
    class); an ``HTTPStatusError`` is judged by its status code."""
    if isinstance(exc, httpx.HTTPStatusError):
        return error_for_status(exc.response, model)
    kind = next(HTTPX_ERRORS[c] for c in type(exc).__mro__ if c in HTTPX_ERRORS)
    # "[Errno 111] Connection refused" -> "connection refused" for STATUS.
    text = re.sub(r"^\[Errno -?\d+\] ", "", str(exc)) or type(exc).__name__
    return kind(text[:1].lower() + text[1:])


@contextmanager
def _mapped(model: str = "", before_answer: bool = False) -> Iterator[None]:
    """Translate httpx exceptions raised inside to the taxonomy, chained with ``from``."""
    try:
        yield
    except tuple(HTTPX_ERRORS) as exc:
        err = map_exception(exc, model)
        if isinstance(err, Disconnected):
            err.before_answer = before_answer
        raise err from exc


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("error", body)) if isinstance(body, dict) else str(body)[:300]


def _retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date (RFC 9110)."""
    value = response.headers.get("retry-after", "").strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def error_for_status(response: httpx.Response, model: str) -> OllamaError:
    """The taxonomy error for an Ollama error answer (status >= 400, body read)."""
    status, text = response.status_code, _error_text(response)
    if status == 404:
        # Ollama's own text is "model 'NAME' not found"; say it once, with the fix.
        return ModelMissing(f"model {model!r} not found, run: ollama pull {model}"
                            + ("" if "not found" in text else f" ({text})"))
    kind = Busy if status in (429, 503) else ServerError if status >= 500 else BadRequest
    err = kind(f"{status}: {text}")
    err.retry_after_s = _retry_after_s(response)
    return err


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context (system trust store) for every client: building one per
    client costs tens of milliseconds, paid again on each reload."""
    return ssl.create_default_context()


def _lines(response: httpx.Response) -> Iterator[bytes]:
    """The ``\n``-separated lines of a streamed NDJSON body, as bytes (``json.loads``
    reads UTF-8 bytes): ``iter_lines`` would decode every chunk to text and split
    it again, Python work per chunk that a fast server (many short answers) makes
    the client's bottleneck (issue 12). A ``\r`` before the ``\n`` is JSON whitespace."""
    pending = b""
    for data in response.iter_bytes():
        pending += data
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


def _text(raw: bytes) -> str:
    """The first 200 characters of a stream line, for an error message."""
    return raw[:200].decode("utf-8", errors="replace")


class OllamaClient:
    """Synchronous, thread-safe client for one Ollama host.

    Args:
        cfg: ``ollama`` config: model, keep_alive, options, timeouts.
        host: Which server and how many requests in flight; default the
            single host ``cfg.url`` / ``cfg.concurrency``.
        transport: Optional httpx transport (tests of pure client logic).
        answer_format: The JSON schema sent as ``format`` on every chat
            request (structured outputs), or None for free text. The caller
            owns it (the enrichment schema lives in ``enrich/prompt.py``), so
            this client knows nothing of prompts and serves ``/api/embed`` too.
        options: The ``options`` object sent on every request; default
            ``cfg.options``. It must be identical on every request (a changed
            load-time option reloads the model, cases O7).
    """

    def __init__(self, cfg: OllamaConfig, host: HostConfig | None = None,
                 transport: httpx.BaseTransport | None = None, *,
                 answer_format: dict[str, Any] | None = None, options: dict[str, Any] | None = None):
        self.cfg = cfg
        self.host = host or HostConfig(cfg.url, cfg.concurrency)
        self.url, self.concurrency = self.host.url, self.host.concurrency
        self.answer_format = answer_format
        self.options = dict(cfg.options) if options is None else options
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(connect=CONNECT_TIMEOUT_S, read=cfg.load_timeout_s,
                                  write=WRITE_TIMEOUT_S, pool=POOL_TIMEOUT_S),
            # Beside the workers: the live slot (enrich/workers.py), and one spare
            # connection for a probe or the warm-up.
            limits=httpx.Limits(max_connections=self.concurrency + 2,
                                max_keepalive_connections=self.concurrency + 2),
            transport=transport,
            verify=_ssl_context(),
            trust_env=False,
        )

    def max_request_s(self) -> float:
        """Longest a :meth:`chat` attempt can take, in seconds (see module docstring)."""
        return CONNECT_TIMEOUT_S + WRITE_TIMEOUT_S + self.cfg.load_timeout_s + self.cfg.timeout_s

    def request_body(self, messages: list[dict[str, Any]], num_predict: int | None = None) -> dict[str, Any]:
        """The ``/api/chat`` body (Ollama API doc, "Generate a chat completion").
        ``num_predict`` overrides the answer cap (not a load-time option, O7)."""
        options = self.options if num_predict is None else {**self.options, "num_predict": num_predict}
        body: dict[str, Any] = {"model": self.cfg.model, "messages": messages, "stream": True,
                                "options": options, "keep_alive": self.cfg.keep_alive, "think": False}
        if self.answer_format is not None:
            body["format"] = self.answer_format
        return body

    def chat(self, messages: list[dict[str, Any]], num_predict: int | None = None) -> dict[str, Any]:
        """Send one chat request; return the final answer object (``done: true``)
        with ``message.content`` the whole streamed text (``thinking`` dropped).

        A connection that dies before any response byte (a pooled keep-alive
        connection to a restarted server, O12) is retried on another one, at
        most once per pooled connection (each such try fails within
        :data:`CONNECT_TIMEOUT_S`).

        Raises:
            OllamaError: a leaf of the taxonomy in the module docstring.
        """
        body = self.request_body(messages, num_predict)
        return self._on_live_connection(lambda: self._post_chat(body))

    def _on_live_connection(self, send: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``send()``, again on another pooled connection while one dies before
        any byte (at most once per pooled connection)."""
        for _ in range(self.concurrency + 1):
            started = time.monotonic()
            try:
                return send()
            except Disconnected as exc:
                # Only a connection that failed at once, before any byte, is
                # a dead pooled one; a slow failure counts as an attempt.
                if not exc.before_answer or time.monotonic() - started > CONNECT_TIMEOUT_S:
                    raise
                last = exc
        raise last

    def embed_body(self, texts: Sequence[str], model: str) -> dict[str, Any]:
        """The ``/api/embed`` body (Ollama API doc, "Generate Embeddings"): ``input``
        always a list; ``truncate: false``, so a server that would cut an
        over-long input silently answers an error instead (recent ones ignore
        it and answer 400 anyway); this client's ``options`` only when set."""
        body: dict[str, Any] = {"model": model, "input": list(texts), "keep_alive": self.cfg.keep_alive,
                                "truncate": False}
        if self.options:
            body["options"] = self.options
        return body

    def embed(self, texts: Sequence[str], model: str | None = None) -> list[list[float]]:
        """``POST /api/embed`` for ``texts`` with ``model`` (default the
        configured one): one vector per text, in order. See :meth:`embed_answer`."""
        vectors: list[list[float]] = self.embed_answer(texts, model)["embeddings"]
        return vectors

    def embed_answer(self, texts: Sequence[str], model: str | None = None) -> dict[str, Any]:
        """``POST /api/embed``; the answer object ``{model, embeddings,
        total_duration, load_duration, prompt_eval_count}`` (durations in ns),
        its ``embeddings`` checked to be one non-empty list of numbers per text
        (their dimension and values are the caller's to judge). Nothing is sent
        for no texts. The read deadline is ``ollama.load_timeout_s``: Ollama
        sends nothing until every input is embedded (the load comes first).

        Raises:
            OllamaError: a leaf of the taxonomy (a 400 for an input longer than
                the model's context is BadRequest; a malformed answer ServerError).
        """
        model = model or self.cfg.model
        if not texts:
            return {"model": model, "embeddings": []}
        body = self.embed_body(texts, model)
        answer = self._on_live_connection(lambda: self._post_json("/api/embed", body, model))
        vectors = answer.get("embeddings")
        if not isinstance(vectors, list) or len(vectors) != len(texts):
            count = len(vectors) if isinstance(vectors, list) else "no"
            raise ServerError(f"embed answer has {count} embeddings for {len(texts)} inputs")
        for vector in vectors:
            if not isinstance(vector, list) or not vector or not _numbers(vector):
                raise ServerError(f"embed answer holds a vector that is not a list of numbers: {str(vector)[:80]}")
        return answer

    def _post_json(self, path: str, body: dict[str, Any], model: str) -> dict[str, Any]:
        with _mapped(model, before_answer=True):
            response = self._http.post(path, json=body)
        return self._json_answer(response, model)

    def _post_chat(self, body: dict[str, Any]) -> dict[str, Any]:
        request = self._http.build_request("POST", "/api/chat", json=body)
        with _mapped(self.cfg.model, before_answer=True):
            response = self._http.send(request, stream=True)
        try:
            if response.status_code != 200:
                with _mapped(self.cfg.model):
                    response.read()
                raise error_for_status(response, self.cfg.model)
            # The first byte is here: from now on chunks may not pause long.
            # httpcore reads the "timeout" extension when the body starts.
            request.extensions["timeout"]["read"] = min(CHUNK_TIMEOUT_S, self.cfg.timeout_s)
            with _mapped(self.cfg.model):
                return self._read_stream(response, time.monotonic() + self.cfg.timeout_s)
        finally:
            response.close()

    def _read_stream(self, response: httpx.Response, deadline: float) -> dict[str, Any]:
        """Join the NDJSON chunks into the final object (O15: an error line fails).
        The stream is read to its end so the connection can be reused."""
        parts: list[str] = []
        final: dict[str, Any] | None = None
        for raw in _lines(response):
            if final is not None or not raw.strip():
                continue
            try:
                chunk = json.loads(raw)
            except ValueError as exc:
                raise ServerError(f"unparseable stream line: {_text(raw)!r}") from exc
            if not isinstance(chunk, dict):
                raise ServerError(f"stream line is not an object: {_text(raw)!r}")
            if "error" in chunk:
                raise ServerError(f"error after the answer started: {chunk['error']}")
            parts.append(str((chunk.get("message") or {}).get("content") or ""))
            if chunk.get("done"):
                final = {**chunk, "message": {"role": "assistant", "content": "".join(parts)}}
            elif time.monotonic() > deadline:
                raise RequestTimeout(f"answer not complete within timeout_s={self.cfg.timeout_s:g} s")
        if final is None:
            raise Disconnected("the stream ended without done: true")
        return final

    def warm_up(self) -> dict[str, Any]:
        """Load the model now: Ollama's documented load request, ``POST
        /api/generate`` with an empty prompt, the same ``keep_alive`` and
        ``options`` as every chat (so no reload follows, O7). Returns the
        answer (``done_reason: "load"``). Raises OllamaError."""
        body = {"model": self.cfg.model, "prompt": "", "stream": False,
                "keep_alive": self.cfg.keep_alive, "options": self.options}
        with _mapped(self.cfg.model, before_answer=True):
            response = self._http.post("/api/generate", json=body)
        return self._json_answer(response)

    def version(self) -> str:
        """``GET /api/version``: the cheap liveness probe. Raises OllamaError."""
        with _mapped(self.cfg.model):
            response = self._http.get("/api/version", timeout=PROBE_TIMEOUT_S)
        return str(self._json_answer(response).get("version", "?"))

    def has_model(self, name: str | None = None) -> bool:
        """Whether ``GET /api/tags`` lists ``name`` (default the configured
        model) as ``name`` or ``name:latest``. Raises OllamaError when the
        server cannot answer."""
        name = name or self.cfg.model
        return bool({name, f"{name}:latest"} & set(self.models()))

    def models(self) -> list[str]:
        """The names ``GET /api/tags`` lists (Ollama API doc, "List Local
        Models"), in the server's order. Raises OllamaError when the server
        cannot answer."""
        with _mapped(self.cfg.model):
            response = self._http.get("/api/tags", timeout=PROBE_TIMEOUT_S)
        entries = self._json_answer(response).get("models") or []
        return [str(m.get("name") or m.get("model")) for m in entries if isinstance(m, dict)]

    def embedding_length(self, model: str) -> int | None:
        """The dimension of ``model``'s embeddings as this server reports it:
        ``model_info["<architecture>.embedding_length"]`` of ``POST /api/show``
        (Ollama API doc, "Show Model Information"); None when the answer does
        not say. Loads nothing. Raises OllamaError when the server cannot answer
        (ModelMissing for an unknown model)."""
        with _mapped(model):
            response = self._http.post("/api/show", json={"model": model}, timeout=PROBE_TIMEOUT_S)
        info = self._json_answer(response, model).get("model_info")
        lengths = [v for k, v in info.items() if k.endswith(".embedding_length")] if isinstance(info, dict) else []
        return lengths[0] if len(lengths) == 1 and isinstance(lengths[0], int) and lengths[0] > 0 else None

    def _json_answer(self, response: httpx.Response, model: str | None = None) -> dict[str, Any]:
        if response.status_code >= 400:
            raise error_for_status(response, model or self.cfg.model)
        try:
            answer = response.json()
        except ValueError as exc:
            raise ServerError(f"answer is not JSON: {response.text[:200]!r}") from exc
        if not isinstance(answer, dict):
            raise ServerError(f"answer is not an object: {response.text[:200]!r}")
        return answer

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()


def _numbers(values: list[Any]) -> bool:
    """Whether ``values`` are all JSON numbers (ints or floats, not booleans); one C-level pass."""
    return {type(x) for x in values} <= {int, float}


def describe_body(body: dict[str, Any]) -> str:
    """A short JSON rendering of a request body for logs (messages and schema elided)."""
    slim = {k: v for k, v in body.items() if k not in ("messages", "format")}
    return json.dumps(slim, sort_keys=True)
