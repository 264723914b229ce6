"""Helpers shared by the pipeline tests: temp repos, configs, waiting with deadlines."""

from __future__ import annotations

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
        self.sock.settimeout(0.1)
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
            self.messages.append((time.monotonic(), data.decode("utf-8")))

    def drain(self) -> list[str]:
        """Every message received so far, oldest first."""
        return [m for _, m in list(self.messages)]

    def wait(self, needle: str, timeout_s: float = 20.0) -> str:
        return wait_for(lambda: next((m for m in self.drain() if needle in m), None), timeout_s, needle)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.sock.close()


class RunningDaemon:
    """A :class:`~llmc_rag_service.service.daemon.Daemon` after startup(), its
    main loop on a thread (``error`` keeps what the loop raised); stop() shuts it down."""

    def __init__(self, config: Config, notify: NotifySocket):
        from llmc_rag_service.service.daemon import Daemon
        from llmc_rag_service.service.notify import Notifier

        self.daemon = Daemon(config.source, config, Notifier(notify.path))
        self.daemon.startup()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="test-main-loop")
        self.thread.start()

    def _loop(self) -> None:
        try:
            self.daemon.main_loop()
        except BaseException as exc:  # the test asserts on it
            self.error = exc

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
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmc_rag_service", "serve", "-c", str(config_path)],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"), env=full_env,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)

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

    ``ollama`` and ``queue`` override config sections (see tests.helpers.make_config).
    """

    def __init__(self, tmp_path: Path, url: str, files: int = 6, ollama: dict | None = None,
                 queue: dict | None = None):
        self.root = tmp_path / "repo"
        self.root.mkdir()
        write_tree(self.root, {f"m{i}.py": f"def f{i}(x):\n    return x * {i}\n" for i in range(files)})
        self.config = make_config(tmp_path, url, [self.root], ollama=ollama or {}, queue=queue or {})
        self.changed = threading.Event()
        self.pipeline = pipeline_mod.Pipeline(self.config, on_change=self.changed.set)
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
