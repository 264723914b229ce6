"""The LISTEN thread: hears teammates' publications and reports them to a callback.

One connection outside the pool runs ``LISTEN llmc_team``; every
``NOTIFY`` payload ``e:<span_hash>`` becomes ``on_notify(span_hash)``. After
each (re)connection it calls ``on_notify(None)``: notifications sent while it
was away are lost (PostgreSQL docs, NOTIFY), so anything deferred must be
looked up again. A lost connection is retried with capped backoff; the thread
never raises.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog

from llmc_rag_service.store import team_pg
from llmc_rag_service.team.errors import TeamError, map_error

log = structlog.get_logger("llmc_rag_service.team")

#: Seconds between checks of the stop flag while waiting for notifications.
POLL_S = 0.25


class Listener:
    """A daemon thread delivering published span hashes.

    Args:
        connect: returns a new autocommit psycopg connection or raises TeamError
            (``TeamDB.connect``).
        on_notify: called from this thread with a span hash, or None after a
            (re)connection; it must only record or wake, never block.
        retry_max_s: longest pause between reconnection attempts.
        url: the redacted DSN, for messages.

    Attributes:
        listening: set while subscribed (tests wait on it before publishing).
    """

    def __init__(self, connect: Callable[[], Any], on_notify: Callable[[str | None], None],
                 retry_max_s: float = 30.0, url: str = ""):
        self._connect, self._on_notify, self._retry_max_s, self._url = connect, on_notify, retry_max_s, url
        self._stop = threading.Event()
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmc-team-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to end and wait up to ``timeout_s`` (it checks every :data:`POLL_S`)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        pause = 0.5
        while not self._stop.is_set():
            try:
                self._listen()
                pause = 0.5
            except TeamError as err:
                if self.listening.is_set():
                    log.warning("team_listener_lost", error=str(err))
                self.listening.clear()
            except Exception as exc:  # noqa: BLE001 - any psycopg failure: reconnect, never die
                if self.listening.is_set():
                    log.warning("team_listener_lost", error=f"{type(exc).__name__}: {exc}")
                self.listening.clear()
            self._stop.wait(pause)
            pause = min(self._retry_max_s, pause * 2)

    def _listen(self) -> None:
        conn = self._connect()
        try:
            try:
                team_pg.listen(conn)
            except Exception as exc:
                raise map_error(exc, self._url) from exc
            self.listening.set()
            log.debug("team_listener_connected")
            self._on_notify(None)
            while not self._stop.is_set():
                for note in conn.notifies(timeout=POLL_S):
                    if note.payload.startswith("e:"):
                        self._on_notify(note.payload[2:])
        finally:
            self.listening.clear()
            conn.close()
