"""A protocol-faithful Ollama emulator: a real HTTP server on 127.0.0.1 for tests and benchmarks.

It speaks Ollama's HTTP API (``/api/chat``, ``/api/generate``, ``/api/embed``,
``/api/ps``, ``/api/tags``, ``/api/show``, ``/api/version``, ``/``) and
reproduces the server behaviours listed in the project's
``tests/data/ollama_behaviours.md`` (O1-O17). Facts come from Ollama's source
(``api/types.go``, ``server/sched.go``, ``server/routes.go``, ``llm/server.go``)
and ``docs/api.md``. One module per concern:

* :mod:`~llmc_rag_service.testing.scheduling` -- model loads, slots, keep_alive expiry;
* :mod:`~llmc_rag_service.testing.faults` -- fault injection and Ollama's error texts;
* :mod:`~llmc_rag_service.testing.server` -- the HTTP server and exchange;
* :mod:`~llmc_rag_service.testing.generation` -- ``/api/chat`` and ``/api/generate``;
* :mod:`~llmc_rag_service.testing.embedding` -- ``/api/embed``;
* :mod:`~llmc_rag_service.testing.catalog` -- ``/api/tags``, ``/api/ps``, ``/api/show``;
* :mod:`~llmc_rag_service.testing.answers` -- answers that fill a ``format`` schema;
* :mod:`~llmc_rag_service.testing.wire` -- keep_alive, durations, names, times.

This module holds :class:`OllamaEmulator` (lifecycle, test controls, routing)
and the program: ``python -m llmc_rag_service.testing --port 11434 --model M
--embed-model nomic-embed-text --latency-s 0.5`` (``-m llmc_rag_service.testing.emulator`` works too);
``--embedder wordllama`` serves a real embedding model (extra ``[wordllama]``).

Usage: ``with OllamaEmulator(latency_s=0.1) as emu: httpx.post(emu.url + "/api/chat", ...)``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from llmc_rag_service.testing import catalog
from llmc_rag_service.testing.answers import default_answer, fill_schema
from llmc_rag_service.testing.embedding import EMBEDDERS, TOO_LONG_MSG, EmbedModel, Embedding
from llmc_rag_service.testing.faults import (BUSY_MSG, EMBED_FAULTS, FAULTS, LOAD_TIMEOUT_MSG, MIDSTREAM_MSG,
                                             RUNNER_CRASH_MSG, FaultQueue)
from llmc_rag_service.testing.generation import Generation
from llmc_rag_service.testing.scheduling import Scheduler
from llmc_rag_service.testing.server import Conn, Handler, Server
from llmc_rag_service.testing.wordvectors import WORDLLAMA_MODEL, WordLlamaMissing, wordllama_embeddings
from llmc_rag_service.testing.wire import (DEFAULT_KEEP_ALIVE_S, FOREVER_NS, RecordedRequest, estimate_tokens,
                                          parse_go_duration, parse_keep_alive)

__all__ = ["BUSY_MSG", "DEFAULT_KEEP_ALIVE_S", "EMBED_FAULTS", "FAULTS", "FOREVER_NS", "LOAD_TIMEOUT_MSG",
           "MIDSTREAM_MSG", "RUNNER_CRASH_MSG", "TOO_LONG_MSG", "EmbedModel", "OllamaEmulator", "RecordedRequest",
           "default_answer", "estimate_tokens", "fill_schema", "main", "parse_go_duration", "parse_keep_alive"]

log = structlog.get_logger(__name__)


def _model_map(models: Mapping[str, Any] | Iterable[str], default: Any) -> dict[str, Any]:
    return dict(models) if isinstance(models, Mapping) else dict.fromkeys(models, default)


class OllamaEmulator:
    """An Ollama server on 127.0.0.1 with switchable faults and recorded traffic.

    Args:
        models: installed chat model names, or name -> cold load delay in seconds.
        embed_models: installed embedding models: names (nomic-embed-text's
            768 dimensions and 2048-token context) or name -> :class:`EmbedModel`.
        num_parallel: slots per loaded model (OLLAMA_NUM_PARALLEL);
            excess requests wait FIFO, unbounded, with no byte sent.
        max_queue: requests that may wait for a model load (OLLAMA_MAX_QUEUE);
            beyond it: 503 ``BUSY_MSG``.
        latency_s: generation time of one chat/generate request, seconds.
        embed_latency_s: time one embedding input holds a slot, seconds.
        num_ctx_default: context size in tokens when a request sets no ``num_ctx``.
        context_length: the chat models' trained context; a larger ``num_ctx`` is
            cut to it (llm/server.go), so longer prompts are silently truncated (O10).
        port: TCP port; 0 picks a free one (kept across ``restart``).
        answer: request JSON -> message content; default :func:`default_answer`.
        thinking_models: names that think by default (also any name containing "think").
        version: what ``/api/version`` reports.

    Attributes for assertions: ``requests`` (list of RecordedRequest), ``loads``,
    ``unloads``, ``aborted_loads`` (counts), ``in_flight_max`` (installed name ->
    most requests generating at once), ``url`` (None until started).
    """

    def __init__(self, models: Mapping[str, float] | Iterable[str] | None = None, *,
                 embed_models: Mapping[str, EmbedModel] | Iterable[str] = (),
                 num_parallel: int = 4, max_queue: int = 512, latency_s: float = 0.0,
                 embed_latency_s: float = 0.0, num_ctx_default: int = 2048, context_length: int = 32768,
                 port: int = 0, answer: Callable[[dict[str, Any]], str] | None = None,
                 thinking_models: Iterable[str] = (), version: str = "0.11.10"):
        self.embed_models: dict[str, EmbedModel] = _model_map(embed_models, EmbedModel())
        installed = _model_map({"test-model": 0.0} if models is None else models, 0.0)
        installed.update({name: spec.load_delay_s for name, spec in self.embed_models.items()})
        self.scheduler = Scheduler(installed, num_parallel, max_queue)
        self.faults = FaultQueue()
        self.latency_s, self.embed_latency_s = latency_s, embed_latency_s
        self.num_ctx_default, self.port, self.version = num_ctx_default, port, version
        self.context_length = context_length
        self.answer = answer or default_answer
        self.thinking_models = set(thinking_models)
        self.url: str | None = None
        self.requests: list[RecordedRequest] = []
        self._generation = Generation(self)
        self._embedding = Embedding(self)
        self._conns: set[Conn] = set()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- counters and settings (the scheduler owns them) ---------------------
    @property
    def num_parallel(self) -> int:
        return self.scheduler.num_parallel

    @property
    def max_queue(self) -> int:
        return self.scheduler.max_queue

    @property
    def loads(self) -> int:
        """Model loads started."""
        return self.scheduler.loads

    @property
    def unloads(self) -> int:
        """Models unloaded (keep_alive expiry, keep_alive 0, uninstall, reload)."""
        return self.scheduler.unloads

    @property
    def aborted_loads(self) -> int:
        """Loads aborted because the loading request's client left."""
        return self.scheduler.aborted_loads

    @property
    def in_flight_max(self) -> dict[str, int]:
        """Installed name -> most chat/generate requests generating at once."""
        return self.scheduler.in_flight_max

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> str:
        """Listen on 127.0.0.1 (the same port after a stop) and return the base URL."""
        if self._server is None:
            self._server = Server(("127.0.0.1", self.port), self)
            self.port = self._server.server_address[1]
            self.url = f"http://127.0.0.1:{self.port}"
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,),
                                            name=f"ollama-emulator-{self.port}", daemon=True)
            self._thread.start()
            log.debug("emulator_started", url=self.url)
        return self.url  # type: ignore[return-value]  # set just above

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
        self.scheduler.stop()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
        self._server = None
        with self.scheduler.cond:
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
        """Make a chat model installed (it appears in /api/tags; requests for it work)."""
        with self.scheduler.cond:
            self.scheduler.models[name] = load_delay_s

    def install_embed(self, name: str, spec: EmbedModel | None = None) -> None:
        """Make an embedding model installed (default: nomic-embed-text's shape)."""
        spec = spec or EmbedModel()
        with self.scheduler.cond:
            self.embed_models[name] = spec
            self.scheduler.models[name] = spec.load_delay_s

    def uninstall(self, name: str) -> None:
        """Remove an installed model (and unload it): requests for it get 404 (O11)."""
        self.scheduler.uninstall(name)
        with self.scheduler.cond:
            self.embed_models.pop(name, None)

    def inject(self, fault: str, count: int = 1, *, endpoint: str | None = None, **params: Any) -> None:
        """Queue ``fault`` (one of FAULTS) for the next ``count`` requests of
        ``endpoint``, FIFO: ``chat`` (chat/generate; the default) or ``embed``
        (the default for ``wrong_dim`` and ``nan``).

        Params: ``seconds`` (wait that long first, e.g. a load timeout after a
        stall; for hang: then answer normally, default until stop; for slow:
        extra time holding a slot before the first byte; for stall: a pause
        after the first streamed chunk; both default until stop), ``retry_after``
        (busy_503: Retry-After header), ``message`` (error text of midstream_error /
        bad_request_400), ``dim`` (wrong_dim: the dimension sent). Raises
        ValueError on an unknown fault or one its endpoint cannot have.
        """
        self.faults.inject(fault, count, endpoint, **params)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self.faults.clear()

    def count(self, path: str) -> int:
        """How many requests were received for ``path`` (e.g. "/api/ps")."""
        with self.scheduler.cond:
            return sum(1 for r in self.requests if r.path == path)

    def loaded_models(self) -> list[str]:
        """Installed names of the models loaded or loading now (expired ones unloaded first)."""
        return [runner.key for runner in self.scheduler.loaded()]

    def pause(self, paused: bool = True) -> None:
        """Hold (True) or release (False) chat and generate answers: a request that
        gets its slot keeps it and sends nothing until released, so others queue
        behind it however slow the machine is (the time-free way to fill a queue)."""
        self.scheduler.pause(paused)

    @property
    def waiting_for_slot(self) -> int:
        """Requests now waiting FIFO for a generation slot of a loaded model."""
        return self.scheduler.waiting_for_slot()

    @property
    def waiting_for_load(self) -> int:
        """Requests now waiting for a model load (the queue ``max_queue`` bounds)."""
        return self.scheduler.waiting_for_load()

    # -- the server's app interface (see server.App) --------------------------
    def generation(self) -> int:
        """The server generation (bumped by every stop)."""
        return self.scheduler.gen

    def track(self, conn: Conn, open_: bool) -> None:
        """A connection was accepted (``open_``) or ended."""
        with self.scheduler.cond:
            (self._conns.add if open_ else self._conns.discard)(conn)

    def record(self, method: str, path: str, body: Any) -> RecordedRequest:
        """Keep a request in :attr:`requests`."""
        rec = RecordedRequest(method, path, body, time.monotonic())
        with self.scheduler.cond:
            self.requests.append(rec)
        return rec

    def route(self, ex: Handler, method: str, path: str, body: Any) -> None:
        """Answer one request (raises HttpError for Ollama error answers)."""
        gets: dict[str, Callable[[], dict[str, Any]]] = {
            "/api/version": lambda: {"version": self.version}, "/api/tags": lambda: catalog.tags(self),
            "/api/ps": lambda: catalog.ps(self)}
        if method in ("GET", "HEAD") and path == "/":
            return ex.send_text(200, "Ollama is running")
        if method in ("GET", "HEAD") and path in gets:
            return ex.send_json(200, gets[path]())
        if method == "POST" and path in ("/api/chat", "/api/generate"):
            return self._generation.handle(ex, path.rsplit("/", 1)[1], body)
        if method == "POST" and path == "/api/embed":
            return self._embedding.handle(ex, body)
        if method == "POST" and path == "/api/show":
            return ex.send_json(200, catalog.show(self, body))
        ex.send_text(404, "404 page not found")


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM: ``python -m llmc_rag_service.testing --port 11434 --model M``.
    Returns 0, or 1 when the port cannot be bound (one line on stderr says so)."""
    parser = argparse.ArgumentParser(prog="python -m llmc_rag_service.testing",
                                     description="Protocol-faithful Ollama emulator.")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--model", action="append", help="installed chat model (repeatable)")
    parser.add_argument("--embed-model", action="append",
                        help="installed embedding model (repeatable; default nomic-embed-text, "
                             f"or {WORDLLAMA_MODEL} with --embedder wordllama)")
    parser.add_argument("--embedder", choices=EMBEDDERS, default="hashed",
                        help="what computes the embedding models' vectors: a hashed bag of words (768 dims), "
                             "or the real WordLlama model (256 dims; needs the [wordllama] extra)")
    parser.add_argument("--latency-s", type=float, default=0.5)
    parser.add_argument("--embed-latency-s", type=float, default=0.005, help="seconds per embedded input")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--load-delay-s", type=float, default=0.0)
    parser.add_argument("--max-queue", type=int, default=512)
    parser.add_argument("--num-ctx", type=int, default=2048)
    args = parser.parse_args(argv)
    # Standalone program: only warnings, on stderr, so stdout carries just the URL line.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    models = dict.fromkeys(args.model or ["qwen2.5:7b-instruct-q4_K_M"], args.load_delay_s)
    if args.embedder == "wordllama":
        try:
            wordllama_embeddings(["load the model before the first request"])
        except WordLlamaMissing as exc:
            parser.error(str(exc))
        spec = EmbedModel.wordllama(args.load_delay_s)
        embeds = dict.fromkeys(args.embed_model or [WORDLLAMA_MODEL], spec)
    else:
        embeds = dict.fromkeys(args.embed_model or ["nomic-embed-text"], EmbedModel(load_delay_s=args.load_delay_s))
    emu = OllamaEmulator(models, embed_models=embeds, num_parallel=args.parallel, max_queue=args.max_queue,
                         latency_s=args.latency_s, embed_latency_s=args.embed_latency_s,
                         num_ctx_default=args.num_ctx, port=args.port)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())  # handlers only record
    try:
        url = emu.start()
    except OSError as exc:  # e.g. the port is taken (a real Ollama on 11434, another emulator)
        sys.stderr.write(f"ollama emulator: cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}; "
                         "pick another --port\n")
        return 1
    sys.stdout.write(f"ollama emulator listening on {url}\n")
    sys.stdout.flush()
    stop.wait()
    emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
