"""Helpers shared by the pipeline tests: temp repos, configs, waiting with deadlines."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

import pytest
import yaml

from llmc_rag_service.store import jobs as q
from llmc_rag_service.enrich import workers
from llmc_rag_service.config import Config, load_config
from llmc_rag_service.testing.repos import make_config, write_tree  # noqa: F401  (re-exported for tests)
from llmc_rag_service.service import pipeline as pipeline_mod


def wait_for(condition: Callable[[], object], timeout_s: float = 15.0, what: str = "condition") -> object:
    """Poll ``condition`` until it is truthy; fail after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET.

    A thread receives every datagram as it arrives and keeps
    ``(time.monotonic() on arrival, text)`` in ``messages``.
    """

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(1.0)  # close() wakes the receiver at once; this only bounds a lost wake-up
        self.messages: list[tuple[float, str]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-socket", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, OSError):
                continue
            if self._closed.is_set():  # close()'s wake-up datagram
                return
            self.messages.append((time.monotonic(), data.decode("utf-8")))

    def drain(self) -> list[str]:
        """Every message received so far, oldest first."""
        return [m for _, m in list(self.messages)]

    def wait(self, needle: str, timeout_s: float = 20.0) -> str:
        return wait_for(lambda: next((m for m in self.drain() if needle in m), None), timeout_s, needle)

    def close(self) -> None:
        self._closed.set()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as waker, contextlib.suppress(OSError):
            waker.sendto(b"", self.path)  # wakes the receiver's recv() now
        self._thread.join(5)
        self.sock.close()


def clocked_notifier(path: str, clock: Callable[[], float]):
    """A real :class:`~llmc_rag_service.service.notify.Notifier` for ``path``
    whose ``sent`` keeps ``(clock(), message)`` of every message, with
    ``messages()`` and ``times(prefix)`` to read them."""
    from llmc_rag_service.service.notify import Notifier

    class _Clocked(Notifier):
        def __init__(self) -> None:
            super().__init__(path)
            self.sent: list[tuple[float, str]] = []

        def send(self, *lines: str) -> bool:
            self.sent.append((clock(), "\n".join(lines)))
            return super().send(*lines)

        def messages(self) -> list[str]:
            """Every message sent so far, oldest first."""
            return [m for _, m in list(self.sent)]

        def times(self, prefix: str) -> list[float]:
            """When each message starting with ``prefix`` was sent (clock seconds)."""
            return [t for t, m in list(self.sent) if m.startswith(prefix)]

    return _Clocked()


class RunningDaemon:
    """A :class:`~llmc_rag_service.service.daemon.Daemon` after startup(), its
    main loop on a thread (``error`` keeps what the loop raised); stop() shuts it down.

    With ``clock`` (a :class:`~llmc_rag_service.testing.clock.ManualClock`) the
    daemon and its whole pipeline run on it, the notifier records the clock time
    of each message (:func:`clocked_notifier`), and :meth:`step` /
    :meth:`step_until` drive the loop.
    """

    def __init__(self, config: Config, notify: NotifySocket, clock=None):
        from llmc_rag_service.service.daemon import Daemon
        from llmc_rag_service.service.notify import Notifier

        self.clock = clock
        self.notifier = clocked_notifier(notify.path, clock) if clock else Notifier(notify.path)
        self.daemon = Daemon(config.source, config, self.notifier, **({"clock": clock} if clock else {}))
        self.daemon.startup()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="test-main-loop")
        self.thread.start()

    def _loop(self) -> None:
        try:
            self.daemon.main_loop()
        except BaseException as exc:  # the test asserts on it
            self.error = exc

    def settle(self) -> None:
        """Wait until the loop finished its turn and sleeps on the clock."""
        self.clock.wait_asleep(self.thread)

    def step(self, to: float | None = None) -> float:
        """Move the clock to ``to`` (default: when the loop's own sleep ends),
        then wait until the loop handled it and sleeps again. Returns the new time."""
        self.settle()
        self.clock.advance_to(self.clock.deadline_of(self.thread) if to is None else to)
        self.settle()
        return self.clock()

    def step_until(self, condition: Callable[[], object], what: str, max_step_s: float = 0.25,
                   timeout_s: float = 20.0) -> None:
        """Follow the loop's wake-ups, at most ``max_step_s`` of clock time per step
        and a step per look at ``condition`` (20 ms of real time apart), until it
        holds: work on other threads (scans, requests) gets real time to run, and
        a request in flight sees clock time pass slowly, far inside its hang limit."""

        def look() -> bool:
            if condition():
                return True
            self.settle()
            self.step(min(self.clock.deadline_of(self.thread), self.clock() + max_step_s))
            return bool(condition())

        wait_for(look, timeout_s, what)

    def stop(self) -> None:
        self.daemon.stop_requested = True
        self.daemon.wake.set()
        self.thread.join(10)
        self.daemon.shutdown()


class Serve:
    """A running ``llmc-rag serve`` subprocess."""

    def __init__(self, config_path: Path, notify: NotifySocket | None, env: dict | None = None):
        full_env = {**os.environ, **(env or {})}
        if notify:
            full_env["NOTIFY_SOCKET"] = notify.path
        self.log = config_path.parent / "serve.log"
        with open(self.log, "ab") as stderr:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmc_rag_service", "serve", "-c", str(config_path)],
                stdout=subprocess.DEVNULL, stderr=stderr, env=full_env,
            )

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 50.0) -> int:
        """Send ``sig`` and wait for the exit status. A serve still running
        after ``timeout_s`` (longer than its own stop deadline) fails the test
        with the end of its log, which holds its ``stop_overdue`` thread dump."""
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"serve still running {timeout_s} s after signal {sig}; {self._tail()}") from None
        if '"stop_overdue"' in self.logs():
            raise AssertionError(f"serve's stop outlived its deadline; {self._tail()}")
        return code

    def _tail(self, lines: int = 60) -> str:
        return "its log ends:\n" + "\n".join(self.logs().splitlines()[-lines:])

    def logs(self) -> str:
        return self.log.read_text()


def chats(emu) -> list:
    """The /api/chat requests an emulator received."""
    return [r for r in emu.requests if r.path == "/api/chat"]


def fast_backoffs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink every backoff so retries and probes take tenths of a second."""
    monkeypatch.setattr(q.backoff_s, "__defaults__", (0.05, 0.1))
    monkeypatch.setattr(workers, "PROBE_BASE_S", 0.1)
    monkeypatch.setattr(workers, "PROBE_MAX_S", 0.3)
    monkeypatch.setattr(workers, "BUSY_BASE_S", 0.05)
    monkeypatch.setattr(workers, "BUSY_MAX_S", 0.1)


class TempPipeline:
    """The real Pipeline (store, queue, scanner, workers, clients) on a temp repo of
    ``files`` one-function Python files, each one span and one job.

    ``ollama`` and ``queue`` override config sections (see tests.helpers.make_config);
    ``clock`` (e.g. a ManualClock) is the pipeline's clock.
    """

    def __init__(self, tmp_path: Path, url: str, files: int = 6, ollama: dict | None = None,
                 queue: dict | None = None, clock=None):
        self.root = tmp_path / "repo"
        self.root.mkdir()
        write_tree(self.root, {f"m{i}.py": f"def f{i}(x):\n    return x * {i}\n" for i in range(files)})
        self.config = make_config(tmp_path, url, [self.root], ollama=ollama or {}, queue=queue or {})
        self.changed = threading.Event()
        self.pipeline = pipeline_mod.Pipeline(self.config, on_change=self.changed.set,
                                              **({"clock": clock} if clock else {}))
        self.pipeline.scan_all()

    def start(self) -> TempPipeline:
        self.pipeline.start_workers()
        return self

    def settled(self) -> bool:
        """Nothing pending or running."""
        c = self.pipeline.counts()
        return c["pending"] + c["running"] == 0

    def wait_done(self, timeout_s: float = 15.0) -> None:
        wait_for(self.settled, timeout_s, "every job done or failed")

    def jobs(self) -> list[dict]:
        """Every job row as a dict (span_hash, state, attempts, last_error)."""
        rows = self.pipeline.store.conn.execute(
            "SELECT span_hash, state, attempts, last_error FROM jobs ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    def close(self) -> None:
        self.pipeline.close(2.0)
