"""The emulator's HTTP layer: a threading HTTP/1.1 server and the exchange handlers answer through.

* HTTP/1.1 keep-alive, TCP_NODELAY on every connection, as Go's server sets
  it: no delayed-ACK stalls between headers and body.
* Streams are chunked NDJSON (``application/x-ndjson``); other answers JSON
  with a Content-Length, Go's encoding (no spaces).
* Every accepted connection is tracked (:class:`Conn`), so ``stop()`` can shut
  them and ``restart()`` can leave idle ones open but dead (O12).

The server's ``app`` (the :class:`~llmc_rag_service.testing.emulator.OllamaEmulator`)
records each request and routes it; see :class:`App`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import structlog

from llmc_rag_service.testing.wire import GO_JSON, HttpError, RecordedRequest

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class Conn:
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


class App(Protocol):
    """What the HTTP layer needs of the emulator."""

    def generation(self) -> int: ...

    def track(self, conn: Conn, open_: bool) -> None: ...

    def record(self, method: str, path: str, body: Any) -> RecordedRequest: ...

    def route(self, ex: Handler, method: str, path: str, body: Any) -> None: ...


class Server(ThreadingHTTPServer):
    """A threading HTTP server on ``address`` whose handlers answer for ``app``."""

    daemon_threads = True
    allow_reuse_address = True  # a stopped emulator restarts on the same port

    def __init__(self, address: tuple[str, int], app: App):
        self.app = app
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A socket we shut down in stop() ends its handler with an OSError: expected.
        log.debug("emulator_connection_error", client=client_address, exc_info=True)


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler; also the exchange the emulator answers through."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the second
    # waits for the client's delayed ACK (~40 ms per answer). Ollama's Go
    # server sets TCP_NODELAY too (Go's default).
    disable_nagle_algorithm = True
    server: Server

    def setup(self) -> None:
        super().setup()
        self.app = self.server.app
        self.gen = self.app.generation()
        self.rec: RecordedRequest | None = None
        self._done_pending = False
        self.conn = Conn(self.connection, threading.current_thread())
        self.app.track(self.conn, True)

    def finish(self) -> None:
        self.app.track(self.conn, False)
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
        self.gen = self.app.generation()
        body, invalid = self._read_json()
        path = self.path.split("?", 1)[0]
        rec = self.rec = self.app.record(method, path, body)
        if self.conn.stale:  # a connection from before restart(): read, then hang up
            rec.t_end = time.monotonic()
            return self.drop()
        try:
            if invalid:
                raise HttpError(400, "invalid character in request body: not JSON")
            self.app.route(self, method, path, body)
        except HttpError as exc:
            self.send_json(exc.status, {"error": exc.message}, exc.headers)
        except OSError:
            self.close_connection = True  # the client left, or stop() shut the socket
        finally:
            rec.t_end = time.monotonic()
            self.conn.busy = False

    # -- the exchange interface used by the endpoints -----------------------
    def alive(self) -> bool:
        """False once the client has closed its end of the connection."""
        try:
            peeked: bytes = self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            return peeked != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def drop(self) -> None:
        """Close the connection without sending anything."""
        self.close_connection = True
        self.conn.kill()

    def _head(self, status: int, content_type: str, headers: dict[str, Any] | None = None,
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

    def send_json(self, status: int, obj: Any, headers: dict[str, Any] | None = None, complete: bool = False) -> None:
        """One JSON answer; ``complete``: it is a whole answer (like a ``done: true`` one)."""
        data = json.dumps(obj, separators=GO_JSON).encode()
        self._head(status, "application/json; charset=utf-8", headers, len(data))
        if self.command != "HEAD":
            self.wfile.write(data)
            self._mark_done(obj, complete)

    def send_text(self, status: int, text: str) -> None:
        data = text.encode()
        self._head(status, "text/plain; charset=utf-8", None, len(data))
        if self.command != "HEAD":
            self.wfile.write(data)

    def start_stream(self) -> None:
        self._head(200, "application/x-ndjson")

    def send_line(self, obj: Any) -> None:
        data = json.dumps(obj, separators=GO_JSON).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self._done_pending = isinstance(obj, dict) and obj.get("done") is True

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        if self._done_pending:
            self._mark_done({"done": True})

    def _mark_done(self, obj: Any, complete: bool = False) -> None:
        """Record that a whole answer went out (for exactly-once checks)."""
        done = complete or (isinstance(obj, dict) and obj.get("done") is True)
        if self.rec is not None and self.rec.status == 200 and done:
            self.rec.done_sent = True
