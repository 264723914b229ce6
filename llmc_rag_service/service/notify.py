"""sd_notify messages to systemd, and the health gate that decides watchdog pings.

Protocol (sd_notify(3), sd_watchdog_enabled(3)): one AF_UNIX SOCK_DGRAM datagram
to ``$NOTIFY_SOCKET`` (a path, or with a leading ``@`` a name in the abstract
namespace), holding newline-separated ``KEY=VALUE`` lines: ``READY=1``,
``STATUS=<one line>``, ``WATCHDOG=1``, ``STOPPING=1``, ``RELOADING=1`` together
with ``MONOTONIC_USEC=<CLOCK_MONOTONIC in microseconds>`` in the same datagram,
``EXTEND_TIMEOUT_USEC=<microseconds>``. systemd drops text that is not UTF-8.
The watchdog is ours when ``$WATCHDOG_USEC`` is set and ``$WATCHDOG_PID`` is unset
or our PID; the advice is to ping every half of that interval.

Why our own client and not the ``sdnotify`` package (0.3.2): it encodes messages
as Latin-1 and swallows every error, so one character outside Latin-1 in STATUS
(a repo path, a ``✓``) silently drops the whole datagram, ``READY=1`` included,
and systemd then fails the start on its timeout; and there is no way to learn that
a send failed. It also connects once at start, so a socket that was briefly
missing stays lost. Here every message is UTF-8, a failed send returns False and
is logged once, and nothing ever raises.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping, MutableMapping

import structlog

log = structlog.get_logger(__name__)

_CHILD_DROP = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_CLIP_MARK = "..."
# A full receive queue (a stuck manager) must not block the main loop for long.
_SEND_TIMEOUT_S = 1.0


def _address(socket_path: str) -> str:
    """A ``$NOTIFY_SOCKET`` value as a socket address: ``@name`` is abstract (NUL)."""
    return "\0" + socket_path[1:] if socket_path.startswith("@") else socket_path


class Notifier:
    """Sends sd_notify datagrams; thread-safe; every method returns True if sent.

    ``socket_path`` defaults to ``env["NOTIFY_SOCKET"]`` (``env`` defaults to
    ``os.environ``). Without one, ``enabled`` is False and sends return False.
    """

    def __init__(self, socket_path: str | None = None, env: Mapping[str, str] | None = None):
        if socket_path is None:
            socket_path = (os.environ if env is None else env).get("NOTIFY_SOCKET") or None
        self.socket_path = socket_path
        self.enabled: bool = bool(socket_path)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._failing = False

    def send(self, *lines: str) -> bool:
        """Send ``lines`` (``KEY=VALUE`` each, no newline inside) as one datagram,
        UTF-8 encoded (an unencodable lone surrogate becomes ``?``).

        Never raises. Returns False when disabled or when the send fails; the first
        failure after a success is logged (warning ``notify_failed``), later ones
        stay silent until a send succeeds again (info ``notify_recovered``).
        """
        if not self.enabled or not self.socket_path or not lines:
            return False
        data = "\n".join(lines).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sock.settimeout(_SEND_TIMEOUT_S)
                self._sock.sendto(data, _address(self.socket_path))
            except (OSError, ValueError) as exc:
                self._note_failure(lines, exc)
                return False
            if self._failing:
                self._failing = False
                log.info("notify_recovered", socket=self.socket_path)
            return True

    def _note_failure(self, lines: tuple[str, ...], exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            keys = [line.partition("=")[0] for line in lines]
            log.warning("notify_failed", socket=self.socket_path, keys=keys, error=str(exc))

    def ready(self) -> bool:
        """``READY=1``: start-up (or a reload) is complete."""
        return self.send("READY=1")

    def status(self, text: str) -> bool:
        """``STATUS=<text>``, cleaned to one valid UTF-8 line by ``clean_status``."""
        return self.send("STATUS=" + clean_status(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping (send only while healthy)."""
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC=`` (CLOCK_MONOTONIC, microseconds),
        in one datagram as Type=notify-reload requires; follow with ``ready()``."""
        now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={now_us}")

    def extend_timeout(self, usec: int) -> bool:
        """``EXTEND_TIMEOUT_USEC=<usec>``: the current start/stop/reload may take
        ``usec`` microseconds more from now."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(usec)}")

    def close(self) -> None:
        """Close the socket; a later send opens a new one."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _clean_char(ch: str) -> str:
    if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
        return " "  # newlines and other control characters would break the line
    if "\ud800" <= ch <= "\udfff":
        return "\ufffd"  # lone surrogate, e.g. from os.fsdecode of a non-UTF-8 path
    return ch


def clean_status(text: str, max_chars: int = 240) -> str:
    """``text`` as one line of valid UTF-8 of at most ``max_chars`` characters.

    Control characters and line breaks become spaces, lone surrogates become
    U+FFFD, and a longer text is clipped with an ASCII ``...`` at the end.
    Raises ValueError if ``max_chars`` < 4.
    """
    if max_chars < len(_CLIP_MARK) + 1:
        raise ValueError(f"max_chars must be at least {len(_CLIP_MARK) + 1}, got {max_chars}")
    line = "".join(_clean_char(ch) for ch in text).strip()
    if len(line) > max_chars:
        line = line[: max_chars - len(_CLIP_MARK)].rstrip() + _CLIP_MARK
    return line


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of ``$WATCHDOG_USEC``.

    None when the watchdog is off or not ours: WATCHDOG_USEC unset, not a positive
    integer, or WATCHDOG_PID set to another PID (or not a number).
    """
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
        pid = env.get("WATCHDOG_PID")
        if pid is not None and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    return usec / 2 / 1e6 if usec > 0 else None


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) for subprocesses such as git:
    without NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID, so a child can never
    speak for the service."""
    source = os.environ if env is None else env
    return {k: v for k, v in source.items() if k not in _CHILD_DROP}


def unset_notify_environment(env: MutableMapping[str, str] | None = None) -> None:
    """Remove NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from ``env`` (default
    ``os.environ``), as ``sd_notify(unset_environment=1)`` does: call after the
    notifier and the watchdog interval were read, so no child process (git, a
    hook) inherits them and speaks for the service."""
    env = os.environ if env is None else env
    for key in _CHILD_DROP:
        env.pop(key, None)


def ping_every_s(half_interval_s: float) -> float:
    """Seconds between WATCHDOG=1 pings for a watchdog whose half interval is
    ``half_interval_s`` (see :func:`watchdog_interval_s`): a little under half,
    by 20 % up to 1 s, so loop jitter never makes a gap longer than half."""
    return half_interval_s - min(half_interval_s * 0.2, 1.0)


class TimeoutExtender:
    """Context manager for a long but progressing step (adding watches for a huge
    repo at start-up, a reload): while inside, a thread sends
    ``EXTEND_TIMEOUT_USEC=<extend_s in microseconds>`` every ``every_s`` seconds,
    for at most ``max_s`` seconds in total, so systemd's TimeoutStartSec= is not
    hit while work goes on, yet a step stuck for ``max_s`` is still failed.

    Does nothing when the notifier is disabled. Raises ValueError unless
    0 < ``every_s`` < ``extend_s``.
    """

    def __init__(self, notifier: Notifier, every_s: float = 5.0, extend_s: float = 15.0, max_s: float = 600.0):
        if not 0 < every_s < extend_s:
            raise ValueError(f"need 0 < every_s < extend_s, got {every_s} and {extend_s}")
        self.notifier, self.every_s, self.extend_s, self.max_s = notifier, every_s, extend_s, max_s
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        while not self._done.wait(self.every_s) and time.monotonic() < deadline:
            if self.notifier.extend_timeout(int(self.extend_s * 1_000_000)):
                self.sent += 1

    def __enter__(self) -> TimeoutExtender:
        if self.notifier.enabled:
            self._thread = threading.Thread(target=self._run, name="sd-extend-timeout", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


class Degraded(str):
    """A check's reason for a condition the daemon handles itself (e.g. the
    state disk full: work paused, resumed when space returns). The gate reports
    it like a failure (listed by ``failures()``, logged once as
    ``watchdog_degraded``) but keeps pinging: a restart would not help."""


class HealthGate:
    """Watchdog health gate: named checks; ping only while all pass.

    A check is a callable returning None when healthy, else a reason string
    (a :class:`Degraded` one reports without stopping the pings).
    Checks run on the caller's thread (the main loop) and should be quick.
    """

    def __init__(self) -> None:
        self._checks: list[tuple[str, Callable[[], str | None]]] = []
        self._lock = threading.Lock()
        self._healthy = True
        self._degraded: list[str] = []

    def add_check(self, name: str, check: Callable[[], str | None]) -> None:
        """Register ``check`` under ``name`` (used in logs)."""
        with self._lock:
            self._checks.append((name, check))

    def failures(self) -> list[tuple[str, str]]:
        """Run every check; return ``(name, reason)`` for each failing one, in
        registration order. A check that raises fails with the exception's text."""
        with self._lock:
            checks = list(self._checks)
        failed = []
        for name, check in checks:
            try:
                reason = check()
            except Exception as exc:  # a broken check must not kill the main loop
                reason = f"{type(exc).__name__}: {exc}"
            if reason is not None:
                failed.append((name, reason if isinstance(reason, str) and reason else str(reason) or "unhealthy"))
        return failed

    def should_ping(self) -> bool:
        """True when every check passes or is only :class:`Degraded`. On
        healthy → failing, logs one error ``watchdog_unhealthy`` (first failing
        check, its reason, all failing names); on failing → healthy, logs info
        ``watchdog_healthy``; when the degraded checks change, one error
        ``watchdog_degraded`` (or ``watchdog_healthy`` when none is left)."""
        failed = self.failures()
        blocking = [(n, r) for n, r in failed if not isinstance(r, Degraded)]
        degraded = [(n, r) for n, r in failed if isinstance(r, Degraded)]
        if blocking and self._healthy:
            name, reason = blocking[0]
            log.error("watchdog_unhealthy", check=name, reason=str(reason), failing=[n for n, _ in blocking])
        elif not blocking and not self._healthy:
            log.info("watchdog_healthy")
        names = [n for n, _ in degraded]
        if names != self._degraded:
            if names:
                log.error("watchdog_degraded", check=names[0], reason=str(degraded[0][1]), degraded=names)
            elif not blocking:
                log.info("watchdog_healthy")
            self._degraded = names
        self._healthy = not blocking
        return self._healthy
