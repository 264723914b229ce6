"""A protocol-faithful Ollama emulator: a real HTTP server on 127.0.0.1 for tests and benchmarks.

It speaks Ollama's HTTP API (``/api/chat``, ``/api/generate``, ``/api/ps``,
``/api/tags``, ``/api/show``, ``/api/version``, ``/``) and reproduces the server
behaviours listed in the project's ``tests/data/ollama_behaviours.md`` (O1-O17). Facts come
from Ollama's source (``api/types.go`` ``Duration.UnmarshalJSON``,
``server/sched.go``, ``server/routes.go``, ``llm/server.go``) and ``docs/api.md``:

* Nothing is sent (no status line, no header) before the first token (stream)
  or the whole answer (``stream: false``): FIFO slot wait, model load and prompt
  evaluation all happen first (O3, O4).
* A model is listed by ``/api/ps`` from the start of its load; while a request
  holds it, ``expires_at`` is ``now + keep_alive`` (routes.go ``PsHandler``) (O2).
* ``keep_alive`` is sticky: a request without it keeps the loaded runner's
  duration (sched.go ``useLoadedRunner``); a load without it uses 5 min (O6).
* Other load-time options (``num_ctx``, ``num_batch``, ...) than the runner's
  drain, unload and reload the model, whatever ``keep_alive`` says (O7).
* A client that disconnects while its request is loading the model aborts the
  load (the load runs on that request's context); the next request starts it
  again (``aborted_loads``) (O3).
* Errors before the first chunk are a JSON error with a status; after it, a
  final ``{"error": ...}`` line in the 200 stream without ``done: true`` (O15).
* ``num_ctx`` beyond the model's trained ``context_length`` is cut to it and a
  longer prompt is silently truncated: only ``prompt_eval_count`` shows it (O10).
* ``/api/ps`` keeps a busy model's ``expires_at`` from when it last went idle,
  so it can lie in the past while a request runs ("Stopping...").
* TCP_NODELAY on every connection, as Go sets it: no delayed-ACK stalls.

Usage: ``with OllamaEmulator(latency_s=0.1) as emu: httpx.post(emu.url + "/api/chat", ...)``.
As a program: ``python -m llmc_rag_service.testing.emulator --port 11434 --model M --latency-s 0.5``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import math
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

log = structlog.get_logger(__name__)

BUSY_MSG = "server busy, please try again.  maximum pending requests exceeded"
LOAD_TIMEOUT_MSG = "timed out waiting for llama runner to start - progress 0.00 - "
RUNNER_CRASH_MSG = "llama runner process has terminated: exit status 2"
MIDSTREAM_MSG = "an error was encountered while running the model: unexpected EOF"
DEFAULT_KEEP_ALIVE_S = 300.0  # OLLAMA_KEEP_ALIVE default, 5m
FOREVER_NS = 2**63 - 1  # Go's math.MaxInt64 duration: expires_at lands in year ~2318
FAULTS = frozenset({
    "empty", "empty_object", "length", "invalid_json", "busy_503", "load_timeout_500",
    "runner_crash_500", "disconnect", "hang", "midstream_error", "model_missing",
    "bad_request_400", "slow", "stall",
})
_ERROR_FAULTS = {"load_timeout_500": (500, LOAD_TIMEOUT_MSG),
                 "runner_crash_500": (500, RUNNER_CRASH_MSG)}
# Faults applied while generating, holding a slot (``seconds`` is their pause).
_ANSWER_FAULTS = frozenset({"slow", "stall"})
_LOAD_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")
_POLL_S = 0.05  # how often waits notice a departed client or a stopped server
_GO_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
               "m": 60.0, "h": 3600.0}
_GO_TYPE_NAMES = {list: "[]interface {}", dict: "map[string]interface {}", bool: "bool"}
_GO_JSON = (",", ":")  # Go's encoding/json writes no spaces
_MODEL_SIZE = 4_683_087_332  # bytes; a 7B q4_K_M model, for /api/tags and /api/ps


def estimate_tokens(text: str) -> int:
    """Tokens the emulator counts for ``text``: ``ceil(len(text) / 4)``; 0 for ""."""
    return math.ceil(len(text) / 4)


def parse_go_duration(text: str) -> float:
    """Seconds of a Go duration string ("5m", "1h30m", "300ms", "-1m", "0").

    Raises ValueError with Go's ``time.ParseDuration`` message, e.g.
    ``time: missing unit in duration "300"``.
    """
    rest = text.lstrip("+-")
    sign = -1.0 if text.startswith("-") else 1.0
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f'time: invalid duration "{text}"')
    total = 0.0
    while rest:
        number = re.match(r"\d*(\.\d*)?", rest).group(0)
        if number in ("", "."):
            raise ValueError(f'time: invalid duration "{text}"')
        rest = rest[len(number):]
        unit = re.match(r"[^\d.]*", rest).group(0)
        if not unit:
            raise ValueError(f'time: missing unit in duration "{text}"')
        if unit not in _GO_UNITS_S:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{text}"')
        total += float(number) * _GO_UNITS_S[unit]
        rest = rest[len(unit):]
    return sign * total


def parse_keep_alive(value: Any) -> float:
    """Seconds to keep a model loaded, as Ollama's ``api.Duration`` reads ``keep_alive``.

    A JSON number is seconds, a string a Go duration; negative means forever
    (``math.inf``). Raises ValueError with Ollama's 400 message for a unit-less
    string (``time: missing unit in duration "300"``) or another JSON type
    (``Unsupported type: 'bool'``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"Unsupported type: '{_GO_TYPE_NAMES.get(type(value), type(value))}'")
    seconds = parse_go_duration(value) if isinstance(value, str) else float(value)
    return math.inf if seconds < 0 else seconds


def fill_schema(schema: Any, hint: str, _root: Any = None, _name: str = "value") -> Any:
    """A JSON value conforming to a JSON schema (object/array/string/number/integer/boolean).

    Every property is filled (so all of ``required`` are present); strings name
    their property and carry ``hint``; ``enum``/``const``/``anyOf``/``$ref`` honoured.
    """
    root = schema if _root is None else _root
    if not isinstance(schema, dict):
        return hint
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return fill_schema(target, hint, root, _name)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return fill_schema(schema[key][0], hint, root, _name)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return _fill_typed(kind, schema, hint, root, _name)


def _fill_typed(kind: str, schema: dict, hint: str, root: Any, name: str) -> Any:
    if kind == "object":
        props = schema.get("properties", {})
        return {k: fill_schema(v, hint, root, k) for k, v in props.items()}
    if kind == "array":
        if schema.get("maxItems") == 0:
            return []
        count = max(1, schema.get("minItems", 1))
        return [fill_schema(schema.get("items", {}), hint, root, name) for _ in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1)
        return int(low) if kind == "integer" else float(low)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = f"{name}: {hint}"
    text = text.ljust(schema.get("minLength", 0), ".")
    return text[: schema["maxLength"]] if "maxLength" in schema else text


def _hint(request: dict) -> str:
    """The first line of the last user message (or the prompt), at most 60 chars."""
    users = [m for m in request.get("messages") or [] if m.get("role") == "user"]
    text = str(users[-1].get("content") or "") if users else str(request.get("prompt") or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "nothing")[:60]


def default_answer(request: dict) -> str:
    """The emulator's answer text for a request JSON.

    ``format`` a JSON schema: a conforming JSON document; ``"json"``: a JSON
    object; no format: plain text. All mention the last user message.
    """
    fmt, hint = request.get("format"), _hint(request)
    if isinstance(fmt, dict):
        return json.dumps(fill_schema(fmt, hint))
    if fmt == "json":
        return json.dumps({"answer": hint})
    return f"Emulated answer about: {hint}"


def _canonical(name: str) -> str:
    """Ollama's model name with the implied ``:latest`` tag."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _expiry_iso(expires_at: float) -> str:
    """RFC 3339 time of a wall-clock expiry; ``inf`` (forever) is now + MaxInt64 ns."""
    now = datetime.now(timezone.utc)
    if math.isinf(expires_at):
        return _iso(now + timedelta(microseconds=FOREVER_NS // 1000))
    return _iso(now + timedelta(seconds=expires_at - time.time()))


@dataclass
class RecordedRequest:
    """One HTTP request the emulator received.

    ``json`` is the parsed body (None for no or non-JSON body); ``t_start`` and
    ``t_end`` are ``time.monotonic()`` seconds (``t_end`` None while open);
    ``status`` the HTTP status sent (None if the connection was dropped);
    ``done_sent`` True once the final ``done: true`` object was written whole.
    """

    method: str
    path: str
    json: Any
    t_start: float
    t_end: float | None = None
    status: int | None = None
    done_sent: bool = False


class _HttpError(Exception):
    """An Ollama error answer: ``status`` with body ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class _Fault:
    kind: str
    params: dict


@dataclass(eq=False)
class _Runner:
    """A loaded (or loading) model. Times: ``expires_at`` wall-clock seconds."""

    key: str
    load_opts: dict
    session_s: float
    ready: bool = False
    failed: bool = False
    draining: bool = False
    refs: int = 0
    in_flight: int = 0
    expires_at: float = 0.0
    waiters: collections.deque = field(default_factory=collections.deque)


@dataclass
class _Gen:
    """A parsed ``/api/chat`` or ``/api/generate`` request."""

    kind: str
    model: str
    body: dict
    stream: bool
    keep_alive_s: float | None
    options: dict
    load_opts: dict  # the load-time options; others than the runner's force a reload
    t0: float
    key: str = ""
    thinks: bool = False
    load_s: float = 0.0  # seconds from arrival until the model was ready (queue + load)

    @property
    def empty(self) -> bool:
        """No messages (chat) / empty prompt (generate): a load or unload request."""
        return not (self.body.get("messages") if self.kind == "chat" else self.body.get("prompt"))

    def prompt_text(self) -> str:
        if self.kind == "chat":
            return "".join(str(m.get("content") or "") for m in self.body.get("messages") or [])
        return str(self.body.get("system") or "") + str(self.body.get("prompt") or "")



class OllamaEmulator:
    """An Ollama server on 127.0.0.1 with switchable faults and recorded traffic.

    Args:
        models: installed model names, or name -> cold load delay in seconds.
        num_parallel: generation slots per loaded model (OLLAMA_NUM_PARALLEL);
            excess requests wait FIFO, unbounded, with no byte sent.
        max_queue: requests that may wait for a model load (OLLAMA_MAX_QUEUE);
            beyond it: 503 ``BUSY_MSG``.
        latency_s: generation time of one request, seconds.
        num_ctx_default: context size in tokens when a request sets no ``num_ctx``.
        context_length: the model's trained context; a larger ``num_ctx`` is
            cut to it (llm/server.go), so longer prompts are silently truncated (O10).
        port: TCP port; 0 picks a free one (kept across ``restart``).
        answer: request JSON -> message content; default :func:`default_answer`.
        thinking_models: names that think by default (also any name containing "think").
        version: what ``/api/version`` reports.

    Attributes for assertions: ``requests`` (list of RecordedRequest), ``loads``,
    ``unloads``, ``aborted_loads`` (counts), ``in_flight_max`` (installed name ->
    most requests generating at once), ``url`` (None until started).
    """

    def __init__(self, models: dict[str, float] | Iterable[str] | None = None, *,
                 num_parallel: int = 4, max_queue: int = 512, latency_s: float = 0.0,
                 num_ctx_default: int = 2048, context_length: int = 32768, port: int = 0,
                 answer: Callable[[dict], str] | None = None,
                 thinking_models: Iterable[str] = (), version: str = "0.11.10"):
        models = {"test-model": 0.0} if models is None else models
        self._models = dict(models) if isinstance(models, dict) else dict.fromkeys(models, 0.0)
        self.num_parallel, self.max_queue, self.latency_s = num_parallel, max_queue, latency_s
        self.num_ctx_default, self.port, self.version = num_ctx_default, port, version
        self.context_length = context_length
        self.answer = answer or default_answer
        self.thinking_models = set(thinking_models)
        self.url: str | None = None
        self.requests: list[RecordedRequest] = []
        self.loads = self.unloads = self.aborted_loads = 0
        self.in_flight_max: dict[str, int] = {}
        self._cond = threading.Condition()
        self._runners: dict[str, _Runner] = {}
        self._faults: collections.deque[_Fault] = collections.deque()
        self._load_waiters = 0
        self._gen = 0  # bumped by stop(): requests of an older generation give up
        self._conns: set[_Conn] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> str:
        """Listen on 127.0.0.1 (the same port after a stop) and return the base URL."""
        if self._server is None:
            self._server = _Server(("127.0.0.1", self.port), self)
            self.port = self._server.server_address[1]
            self.url = f"http://127.0.0.1:{self.port}"
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,),
                                            name=f"ollama-emulator-{self.port}", daemon=True)
            self._thread.start()
            log.debug("emulator_started", url=self.url)
        return self.url

    def stop(self) -> None:
        """Close the listening socket and every connection; loaded models are forgotten."""
        self._shutdown(keep_idle=False)

    set_down = stop

    def restart(self) -> str:
        """Stop and start on the same port, like a restarted ``ollama serve``.

        Idle keep-alive connections stay open but are dead: the next request on
        one is read and the socket closed without an answer, as a request racing
        a restart (or a Docker port proxy) sees it. httpx then raises
        ``RemoteProtocolError("Server disconnected without sending a response.")`` (O12).
        A plain ``stop()`` closes them, which httpx notices and silently reconnects.
        """
        self._shutdown(keep_idle=True)
        return self.start()

    def _shutdown(self, keep_idle: bool) -> None:
        if self._server is None:
            return
        with self._cond:
            self._gen += 1
            self._runners.clear()
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
        self._server = None
        with self._cond:
            conns = list(self._conns)
        for conn in conns:
            if keep_idle and not conn.busy:
                conn.stale = True
            else:
                conn.kill()
        for conn in conns:
            if not conn.stale:
                conn.thread.join(2.0)
        log.debug("emulator_stopped", url=self.url, keep_idle=keep_idle)

    def __enter__(self) -> OllamaEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls and introspection -----------------------------------
    def install(self, name: str, load_delay_s: float = 0.0) -> None:
        """Make a model installed (it appears in /api/tags; requests for it work)."""
        with self._cond:
            self._models[name] = load_delay_s

    def uninstall(self, name: str) -> None:
        """Remove an installed model (and unload it): requests for it get 404 (O11)."""
        with self._cond:
            self._models.pop(name, None)
            runner = self._runners.get(name)
            if runner is not None:
                self._unload(runner)

    def inject(self, fault: str, count: int = 1, **params: Any) -> None:
        """Queue ``fault`` (one of FAULTS) for the next ``count`` chat/generate requests, FIFO.

        Params: ``seconds`` (wait that long first, e.g. a load timeout after a
        stall; for hang: then answer normally, default until stop; for slow:
        extra generation time holding a slot before the first byte; for stall:
        a pause after the first streamed chunk; both default until stop), ``retry_after``
        (busy_503: Retry-After header), ``message`` (error text of midstream_error /
        bad_request_400). Raises ValueError on an unknown fault.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {sorted(FAULTS)}")
        with self._cond:
            self._faults.extend(_Fault(fault, dict(params)) for _ in range(count))

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._cond:
            self._faults.clear()

    def count(self, path: str) -> int:
        """How many requests were received for ``path`` (e.g. "/api/ps")."""
        with self._cond:
            return sum(1 for r in self.requests if r.path == path)

    def loaded_models(self) -> list[str]:
        """Installed names of the models loaded or loading now (expired ones unloaded first)."""
        with self._cond:
            self._reap()
            return list(self._runners)

    @property
    def waiting_for_slot(self) -> int:
        """Requests now waiting FIFO for a generation slot of a loaded model."""
        with self._cond:
            return sum(len(r.waiters) for r in self._runners.values())

    @property
    def waiting_for_load(self) -> int:
        """Requests now waiting for a model load (the queue ``max_queue`` bounds)."""
        with self._cond:
            return self._load_waiters

    # -- scheduler (all state under self._cond) ----------------------------
    def _abandoned(self, ex: _Handler) -> bool:
        return ex.gen != self._gen or not ex.alive()

    def _wait_until(self, ex: _Handler, ready: Callable[[], bool], until: float = math.inf) -> bool:
        """Wait (under the lock) until ``ready()``; False if the client left or the server stopped."""
        with self._cond:
            while not ready():
                if self._abandoned(ex):
                    return False
                self._cond.wait(max(0.0, min(_POLL_S, until - time.monotonic())))
        return True

    def _sleep(self, ex: _Handler, seconds: float) -> bool:
        return self._sleep_until(ex, time.monotonic() + seconds)

    def _sleep_until(self, ex: _Handler, end: float) -> bool:
        """Wait until monotonic time ``end`` (absolute, so late wake-ups do not add up)."""
        return self._wait_until(ex, lambda: time.monotonic() >= end, until=end)

    def _unload(self, runner: _Runner) -> None:
        if self._runners.get(runner.key) is runner:
            del self._runners[runner.key]
            self.unloads += 1
            self._cond.notify_all()

    def _reap(self) -> None:
        """Unload idle models whose keep_alive ran out (checked lazily)."""
        now = time.time()
        for runner in list(self._runners.values()):
            if runner.ready and runner.refs == 0 and runner.expires_at <= now:
                self._unload(runner)

    def _claim(self, req: _Gen) -> tuple[_Runner | None, bool]:
        """Take a reference on the runner for ``req``: (runner, this request loads it).

        (None, False) while a runner with other load-time options drains (O7).
        """
        runner = self._runners.get(req.key)
        if runner is not None and (runner.draining or runner.load_opts != req.load_opts):
            runner.draining = True
            if runner.refs > 0:
                return None, False
            self._unload(runner)
            runner = None
        loader = runner is None
        if loader:
            session_s = DEFAULT_KEEP_ALIVE_S if req.keep_alive_s is None else req.keep_alive_s
            runner = _Runner(req.key, req.load_opts, session_s)
            self._runners[req.key] = runner
            self.loads += 1
        runner.refs += 1
        if req.keep_alive_s is not None:  # sticky: absent keep_alive keeps the runner's
            runner.session_s = req.keep_alive_s
        return runner, loader

    def _release(self, runner: _Runner) -> None:
        with self._cond:
            runner.refs -= 1
            if runner.refs == 0 and runner.ready and self._runners.get(runner.key) is runner:
                if runner.draining or runner.session_s <= 0:
                    self._unload(runner)
                else:
                    runner.expires_at = time.time() + runner.session_s
            self._cond.notify_all()

    def _enter_load_queue(self, req: _Gen) -> bool:
        """Count ``req`` as waiting for a load if its model is not ready; 503 past max_queue."""
        with self._cond:
            self._reap()
            runner = self._runners.get(req.key)
            if runner and runner.ready and not runner.draining \
                    and runner.load_opts == req.load_opts:
                return False
            if self._load_waiters >= self.max_queue:
                raise _HttpError(503, BUSY_MSG)
            self._load_waiters += 1
            return True

    def _acquire(self, ex: _Handler, req: _Gen) -> _Runner | None:
        """A ready runner holding a reference for ``req``; None if the client left / server stopped."""
        queued = self._enter_load_queue(req)
        try:
            while True:
                with self._cond:
                    runner, loader = self._claim(req)
                if runner is None:
                    blocker = self._runners.get(req.key)
                    if not self._wait_until(ex, lambda: self._runners.get(req.key) is not blocker):
                        return None
                    continue
                ok = self._load(ex, req, runner) if loader else self._wait_until(
                    ex, lambda: runner.ready or runner.failed)
                if ok and runner.ready:
                    return runner
                self._release(runner)
                if not ok:
                    return None
        finally:
            if queued:
                with self._cond:
                    self._load_waiters -= 1

    def _load(self, ex: _Handler, req: _Gen, runner: _Runner) -> bool:
        """Load on this request's behalf; its client leaving aborts the load (as in Ollama)."""
        ok = self._sleep(ex, self._models.get(req.key, 0.0))
        with self._cond:
            if ok and not runner.failed:
                runner.ready = True
            else:
                runner.failed = True
                if self._runners.get(req.key) is runner:
                    del self._runners[req.key]
                    self.aborted_loads += 1
            self._cond.notify_all()
        return ok

    def _take_slot(self, ex: _Handler, runner: _Runner) -> bool:
        """Wait FIFO for one of ``num_parallel`` generation slots of ``runner``."""
        ticket = object()

        def granted() -> bool:
            if runner.waiters[0] is not ticket or runner.in_flight >= self.num_parallel:
                return False
            runner.waiters.popleft()
            runner.in_flight += 1
            self.in_flight_max[runner.key] = max(self.in_flight_max.get(runner.key, 0),
                                                 runner.in_flight)
            return True

        with self._cond:
            runner.waiters.append(ticket)
        if self._wait_until(ex, granted):
            return True
        with self._cond:
            runner.waiters.remove(ticket)
            self._cond.notify_all()
        return False

    def _free_slot(self, runner: _Runner) -> None:
        with self._cond:
            runner.in_flight -= 1
            self._cond.notify_all()

    # -- /api/chat and /api/generate ---------------------------------------
    def _parse_gen(self, kind: str, body: Any) -> _Gen:
        """Validate as Ollama does before scheduling; raises _HttpError 400."""
        if not isinstance(body, dict):
            raise _HttpError(400, "missing request body")
        keep_alive_s = None
        if body.get("keep_alive") is not None:  # JSON null is "not sent" in Go
            try:
                keep_alive_s = parse_keep_alive(body["keep_alive"])
            except ValueError as exc:
                raise _HttpError(400, str(exc)) from exc
        if not body.get("model"):
            raise _HttpError(400, "model is required")
        options = body.get("options") or {}
        load_opts = {k: options.get(k) for k in _LOAD_OPTIONS}
        load_opts["num_ctx"] = options.get("num_ctx", self.num_ctx_default)
        return _Gen(kind, body["model"], body, body.get("stream") is not False, keep_alive_s,
                    options, load_opts, time.monotonic())

    def _resolve(self, req: _Gen) -> None:
        """Find the installed model (404) and whether it thinks (400 if asked and it cannot)."""
        with self._cond:
            req.key = next((k for k in self._models if _canonical(k) == _canonical(req.model)), "")
        if not req.key:
            raise _HttpError(404, f"model '{req.model}' not found")
        capable = "think" in req.key.lower() or req.key in self.thinking_models
        think = req.body.get("think")
        if think not in (None, False) and not capable:
            raise _HttpError(400, f'"{req.model}" does not support thinking')
        req.thinks = capable and think is not False

    def _pop_fault(self) -> _Fault | None:
        with self._cond:
            return self._faults.popleft() if self._faults else None

    def _early_fault(self, ex: _Handler, fault: _Fault | None, req: _Gen) -> bool:
        """Apply a fault that replaces the exchange (after its ``seconds`` delay, if any).

        True if the request is over (dropped); raises _HttpError for error faults;
        False to go on (no fault, a hang that ended, or a fault of the answer itself).
        """
        if fault is None or fault.kind in _ANSWER_FAULTS:
            return False
        kind, params = fault.kind, fault.params
        seconds = params.get("seconds", math.inf if kind == "hang" else 0.0)
        if kind == "disconnect" or (seconds and not self._sleep(ex, seconds)):
            ex.drop()
            return True
        if kind == "busy_503":
            after = params.get("retry_after")
            raise _HttpError(503, BUSY_MSG, None if after is None else {"Retry-After": str(after)})
        if kind in _ERROR_FAULTS:
            raise _HttpError(*_ERROR_FAULTS[kind])
        if kind == "model_missing":
            raise _HttpError(404, f"model '{req.model}' not found")
        if kind == "bad_request_400":
            raise _HttpError(400, params.get("message", "invalid request"))
        return False

    def _handle_gen(self, ex: _Handler, kind: str, body: Any) -> None:
        req = self._parse_gen(kind, body)
        fault = self._pop_fault()
        if self._early_fault(ex, fault, req):
            return
        self._resolve(req)
        if req.empty and req.keep_alive_s == 0:
            return ex.send_json(200, self._unload_now(req))
        runner = self._acquire(ex, req)
        if runner is None:
            return ex.drop()
        req.load_s = time.monotonic() - req.t0
        try:
            if req.empty:
                return ex.send_json(200, self._reply(req, "", None, "load", done=True))
            self._generate(ex, req, runner, fault)
        finally:
            self._release(runner)

    def _unload_now(self, req: _Gen) -> dict:
        """keep_alive 0 with nothing to generate: unload (once idle) without loading."""
        with self._cond:
            runner = self._runners.get(req.key)
            if runner is not None:
                runner.session_s = 0.0
                if runner.refs == 0 and runner.ready:
                    self._unload(runner)
        return self._reply(req, "", None, "unload", done=True)

    def _compose(self, req: _Gen, fault: _Fault | None) -> tuple[str, str | None, str]:
        """(content, thinking or None, done_reason) after faults and ``num_predict``."""
        fmt = req.body.get("format")
        if fmt not in (None, "", "json") and not isinstance(fmt, dict):
            raise _HttpError(500, f"invalid format: {json.dumps(json.dumps(fmt))}; "
                                  'expected "json" or a valid JSON Schema object')
        full = self.answer(req.body)
        kind = fault.kind if fault else None
        content = {"empty": "", "empty_object": "{}\n\n  ",
                   "invalid_json": "Sure! Here is the JSON you asked for: {" + full[:40],
                   "length": full[: max(1, len(full) // 2)]}.get(kind, full)
        reason = "length" if kind == "length" else "stop"
        limit = req.options.get("num_predict")
        if isinstance(limit, (int, float)) and limit >= 0 and estimate_tokens(content) > limit:
            content, reason = content[: int(limit) * 4], "length"
        thinking = f"The user asks about {_hint(req.body)!r}; answer briefly." if req.thinks else None
        return content, thinking, reason

    def _generate(self, ex: _Handler, req: _Gen, runner: _Runner, fault: _Fault | None) -> None:
        if not self._take_slot(ex, runner):
            return ex.drop()
        try:
            content, thinking, reason = self._compose(req, fault)
            midstream = fault is not None and fault.kind == "midstream_error"
            extra = fault.params.get("seconds", math.inf) if fault and fault.kind == "slow" else 0.0
            begun = time.monotonic()
            if not self._sleep_until(ex, begun + extra + self.latency_s / 2):  # prompt evaluation: nothing sent
                return ex.drop()
            stall = fault.params.get("seconds", math.inf) if fault and fault.kind == "stall" else 0.0
            if not req.stream:
                if midstream:
                    raise _HttpError(500, fault.params.get("message", MIDSTREAM_MSG))
                if not self._sleep_until(ex, begun + extra + stall + self.latency_s):
                    return ex.drop()
                return ex.send_json(200, self._final(req, content, thinking, reason, runner))
            self._stream(ex, req, (content, thinking, reason), runner, fault if midstream else None,
                         begun + extra, stall)
        finally:
            self._free_slot(runner)

    def _stream(self, ex: _Handler, req: _Gen, answer: tuple, runner: _Runner,
                midstream: _Fault | None, begun: float, stall_s: float = 0.0) -> None:
        """Stream the answer in ~6 chunks over the second half of ``latency_s``
        counted from ``begun`` (monotonic); ``stall_s``: a pause after the first
        chunk (the ``stall`` fault)."""
        content, thinking, reason = answer
        step = max(1, math.ceil(len(content) / 6))
        pieces = [("thinking", thinking)] if thinking else []
        pieces += [("content", content[i:i + step]) for i in range(0, len(content), step)]
        gap = self.latency_s / 2 / max(1, len(pieces))
        first = begun + self.latency_s / 2
        ex.start_stream()
        for n, (field_name, piece) in enumerate(pieces):
            if n and not self._sleep_until(ex, first + n * gap + stall_s):
                return ex.drop()
            ex.send_line(self._chunk(req, field_name, piece))
            if midstream:
                ex.send_line({"error": midstream.params.get("message", MIDSTREAM_MSG)})
                return ex.end_stream()
        if not self._sleep_until(ex, first + len(pieces) * gap + (stall_s if len(pieces) > 1 else 0.0)):
            return ex.drop()
        ex.send_line(self._final(req, "", None, reason, runner, counted=answer))
        ex.end_stream()

    def _chunk(self, req: _Gen, field_name: str, piece: str) -> dict:
        if field_name == "thinking":
            return self._reply(req, "", piece, None, done=False)
        return self._reply(req, piece, None, None, done=False)

    def _reply(self, req: _Gen, content: str, thinking: str | None, reason: str | None,
               done: bool) -> dict:
        """One Ollama answer object (chat: ``message``; generate: ``response``)."""
        out: dict[str, Any] = {"model": req.model, "created_at": _iso(datetime.now(timezone.utc))}
        if req.kind == "chat":
            out["message"] = {"role": "assistant", "content": content}
            if thinking is not None:
                out["message"]["thinking"] = thinking
        else:
            out["response"] = content
            if thinking is not None:
                out["thinking"] = thinking
        out["done"] = done
        if reason is not None:
            out["done_reason"] = reason
        return out

    def _ctx(self, runner: _Runner) -> int:
        """The runner's real context: its num_ctx cut to the model's trained context."""
        return min(runner.load_opts["num_ctx"], self.context_length)

    def _final(self, req: _Gen, content: str, thinking: str | None, reason: str,
               runner: _Runner, counted: tuple | None = None) -> dict:
        """The done object with token counts and nanosecond durations."""
        counted_content, counted_thinking = (counted or (content, thinking))[:2]
        out = self._reply(req, content, thinking, reason, done=True)
        half_ns = int(self.latency_s / 2 * 1e9)
        out.update(
            total_duration=int((time.monotonic() - req.t0) * 1e9),
            load_duration=int(req.load_s * 1e9),
            prompt_eval_count=min(estimate_tokens(req.prompt_text()), self._ctx(runner)),
            prompt_eval_duration=half_ns,
            eval_count=estimate_tokens(counted_content) + estimate_tokens(counted_thinking or ""),
            eval_duration=half_ns)
        return out

    # -- other endpoints ----------------------------------------------------
    def _details(self) -> dict:
        return {"parent_model": "", "format": "gguf", "family": "qwen2", "families": ["qwen2"],
                "parameter_size": "7.6B", "quantization_level": "Q4_K_M"}

    def _model_entry(self, key: str) -> dict:
        name = _canonical(key)
        return {"name": name, "model": name, "size": _MODEL_SIZE,
                "digest": hashlib.sha256(name.encode()).hexdigest(), "details": self._details()}

    def _tags(self) -> dict:
        with self._cond:
            keys = sorted(self._models)
        stamp = _iso(datetime.now(timezone.utc))
        return {"models": [{**self._model_entry(k), "modified_at": stamp} for k in keys]}

    def _ps(self) -> dict:
        """Loaded and loading models. A model never idle yet (loading, or busy
        since its load) expires ``keep_alive`` from now; otherwise ``expires_at``
        is the one set when it last went idle, kept while a later request runs
        (sched.go sets it only on release), so a busy model can show an expiry
        in the past: ``ollama ps`` prints "Stopping..." for it."""
        with self._cond:
            self._reap()
            runners = list(self._runners.values())
            models = []
            for r in runners:
                expires = r.expires_at or time.time() + r.session_s
                models.append({**self._model_entry(r.key), "expires_at": _expiry_iso(expires),
                               "size_vram": _MODEL_SIZE, "context_length": self._ctx(r)})
        return {"models": models}

    def _show(self, body: Any) -> dict:
        name = str((body or {}).get("model") or (body or {}).get("name") or "")
        with self._cond:
            key = next((k for k in self._models if _canonical(k) == _canonical(name)), "") \
                if name else ""
        if not key:
            raise _HttpError(404, f"model '{name}' not found")
        thinks = "think" in key.lower() or key in self.thinking_models
        return {"modelfile": "", "parameters": "", "template": "{{ .Prompt }}",
                "details": self._details(),
                "model_info": {"general.architecture": "qwen2", "qwen2.context_length": self.context_length},
                "capabilities": ["completion"] + (["thinking"] if thinks else [])}

    def _route(self, ex: _Handler, method: str, path: str, body: Any) -> None:
        """Answer one request (raises _HttpError for Ollama error answers)."""
        gets = {"/api/version": lambda: {"version": self.version}, "/api/tags": self._tags,
                "/api/ps": self._ps}
        if method in ("GET", "HEAD") and path == "/":
            return ex.send_text(200, "Ollama is running")
        if method in ("GET", "HEAD") and path in gets:
            return ex.send_json(200, gets[path]())
        if method == "POST" and path in ("/api/chat", "/api/generate"):
            return self._handle_gen(ex, path.rsplit("/", 1)[1], body)
        if method == "POST" and path == "/api/show":
            return ex.send_json(200, self._show(body))
        ex.send_text(404, "404 page not found")

    def _record(self, method: str, path: str, body: Any) -> RecordedRequest:
        rec = RecordedRequest(method, path, body, time.monotonic())
        with self._cond:
            self.requests.append(rec)
        return rec


@dataclass(eq=False)
class _Conn:
    """One accepted TCP connection: ``busy`` while a request is being answered."""

    sock: socket.socket
    thread: threading.Thread
    busy: bool = False
    stale: bool = False  # survived a restart(): the next request on it gets no answer

    def kill(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a stopped emulator restarts on the same port

    def __init__(self, address: tuple[str, int], emu: OllamaEmulator):
        self.emu = emu
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A socket we shut down in stop() ends its handler with an OSError: expected.
        log.debug("emulator_connection_error", client=client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler; also the exchange the emulator answers through."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the second
    # waits for the client's delayed ACK (~40 ms per answer). Ollama's Go
    # server sets TCP_NODELAY too (Go's default).
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.emu = self.server.emu
        self.gen = self.emu._gen
        self.rec: RecordedRequest | None = None
        self.conn = _Conn(self.connection, threading.current_thread())
        with self.emu._cond:
            self.emu._conns.add(self.conn)

    def finish(self) -> None:
        with self.emu._cond:
            self.emu._conns.discard(self.conn)
        try:
            super().finish()
        except OSError:
            pass  # the client or stop() closed the socket

    def log_message(self, format: str, *args: Any) -> None:
        pass  # per-request lines would flood benchmarks; ``requests`` records them

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _read_json(self) -> tuple[Any, bool]:
        """(parsed body or None, whether a body was present but is not JSON)."""
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not raw:
            return None, False
        try:
            return json.loads(raw), False
        except ValueError:
            return None, True

    def _dispatch(self, method: str) -> None:
        self.conn.busy = True
        self._done_pending = False
        self.gen = self.emu._gen
        body, invalid = self._read_json()
        path = self.path.split("?", 1)[0]
        self.rec = self.emu._record(method, path, body)
        if self.conn.stale:  # a connection from before restart(): read, then hang up
            self.rec.t_end = time.monotonic()
            return self.drop()
        try:
            if invalid:
                raise _HttpError(400, "invalid character in request body: not JSON")
            self.emu._route(self, method, path, body)
        except _HttpError as exc:
            self.send_json(exc.status, {"error": exc.message}, exc.headers)
        except OSError:
            self.close_connection = True  # the client left, or stop() shut the socket
        finally:
            self.rec.t_end = time.monotonic()
            self.conn.busy = False

    # -- the exchange interface used by OllamaEmulator ----------------------
    def alive(self) -> bool:
        """False once the client has closed its end of the connection."""
        try:
            return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def drop(self) -> None:
        """Close the connection without sending anything."""
        self.close_connection = True
        self.conn.kill()

    def _head(self, status: int, content_type: str, headers: dict | None = None,
              length: int | None = None) -> None:
        if self.rec is not None:
            self.rec.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def send_json(self, status: int, obj: Any, headers: dict | None = None) -> None:
        data = json.dumps(obj, separators=_GO_JSON).encode()
        self._head(status, "application/json; charset=utf-8", headers, len(data))
        if self.command != "HEAD":
            self.wfile.write(data)
            self._mark_done(obj)

    def send_text(self, status: int, text: str) -> None:
        data = text.encode()
        self._head(status, "text/plain; charset=utf-8", None, len(data))
        if self.command != "HEAD":
            self.wfile.write(data)

    def start_stream(self) -> None:
        self._head(200, "application/x-ndjson")

    def send_line(self, obj: Any) -> None:
        data = json.dumps(obj, separators=_GO_JSON).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self._done_pending = isinstance(obj, dict) and obj.get("done") is True

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        if getattr(self, "_done_pending", False):
            self._mark_done({"done": True})

    def _mark_done(self, obj: Any) -> None:
        """Record that a whole ``done: true`` answer went out (for exactly-once checks)."""
        if self.rec is not None and self.rec.status == 200 and isinstance(obj, dict) and obj.get("done") is True:
            self.rec.done_sent = True


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM: ``python -m llmc_rag_service.testing.emulator --port 11434 --model M``."""
    parser = argparse.ArgumentParser(description="Protocol-faithful Ollama emulator.")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--model", action="append", help="installed model (repeatable)")
    parser.add_argument("--latency-s", type=float, default=0.5)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--load-delay-s", type=float, default=0.0)
    parser.add_argument("--max-queue", type=int, default=512)
    parser.add_argument("--num-ctx", type=int, default=2048)
    args = parser.parse_args(argv)
    # Standalone program: only warnings, on stderr, so stdout carries just the URL line.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    models = dict.fromkeys(args.model or ["qwen2.5:7b-instruct-q4_K_M"], args.load_delay_s)
    emu = OllamaEmulator(models, num_parallel=args.parallel, max_queue=args.max_queue,
                         latency_s=args.latency_s, num_ctx_default=args.num_ctx, port=args.port)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())  # handlers only record
    sys.stdout.write(f"ollama emulator listening on {emu.start()}\n")
    sys.stdout.flush()
    stop.wait()
    emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
