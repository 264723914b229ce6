"""Is the team database usable now? A circuit breaker with capped backoff.

After a failure every operation skips the database (the caller works alone
and results go to the outbox) until a probe succeeds; probes are spaced 1, 2,
4 ... up to ``probe_max_s`` seconds apart. So an outage costs one bounded
timeout, not one per operation. Each change of state is logged once:
``team_unreachable`` (error, with the kind and one-line message) and
``team_reachable`` (info).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from llmc_rag_service.team.errors import TeamError

log = structlog.get_logger("llmc_rag_service.team")


class Health:
    """Reachability of one team database.

    Args:
        url: the redacted DSN (for logs).
        probe_max_s: longest pause between probes while unreachable.
        clock: monotonic seconds (injected by tests).

    Attributes:
        reachable: None before the first contact, then True/False.
        last_error: one-line message of the last failure (kept after recovery).
    """

    def __init__(self, url: str, probe_max_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.url, self._max, self._clock = url, probe_max_s, clock
        self.reachable: bool | None = None
        self.last_error: str | None = None
        self._kind: str | None = None
        self._pause = 0.0
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)

    def usable(self) -> bool:
        """True unless the last contact failed (then only probes go through)."""
        return self.reachable is not False

    def probe_due(self) -> bool:
        """True when unreachable (or never contacted) and the backoff has run out."""
        with self._lock:
            return self.reachable is not True and self._clock() >= self._retry_at

    def failed(self, err: TeamError) -> None:
        """Record a failure: open the breaker, schedule the next probe, log
        once per outage (again if the kind of failure changes)."""
        with self._lock:
            first = self.reachable is not False or self._kind != err.kind
            self.reachable, self.last_error, self._kind = False, str(err), err.kind
            self._pause = min(self._max, max(1.0, self._pause * 2))
            self._retry_at = self._clock() + self._pause
            self.changed.notify_all()
        if first:
            log.error("team_unreachable", url=self.url, kind=err.kind, error=str(err))

    def succeeded(self, **fields: object) -> None:
        """Record a working contact; logs ``team_reachable`` on recovery."""
        with self._lock:
            recovered = self.reachable is not True
            self.reachable, self._kind, self._pause, self._retry_at = True, None, 0.0, 0.0
            self.changed.notify_all()
        if recovered:
            log.info("team_reachable", url=self.url, **fields)

    def wait_until(self, reachable: bool, timeout_s: float) -> bool:
        """Block until ``self.reachable == reachable`` or ``timeout_s`` passes; True if reached."""
        with self._lock:
            return self.changed.wait_for(lambda: self.reachable is reachable, timeout_s)
