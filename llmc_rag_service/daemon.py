"""``llmc-rag serve``: the daemon's lifecycle.

``run()`` -> ``startup()`` -> ``main_loop()`` -> ``shutdown()``:

* startup: take the state lock, open and migrate the store, start one watcher
  per repo, then ``READY=1``; the catch-up scan runs after READY on the
  indexer thread (STATUS says so), and the workers start at once.
* main loop: ticks every :data:`TICK_S`; hands due watcher paths to the
  indexer, restarts dead watchers, refreshes STATUS (on change, at most twice
  a second, at least every 10 s) and pings the watchdog only while the health
  gate passes (watchers and indexer alive, no job past its deadline, store
  writable); the ping is sent from the loop, so a stalled loop stops it too.
* signals only record (set a flag, wake the loop): SIGHUP reloads, SIGTERM and
  SIGINT stop; a second SIGTERM/SIGINT exits at once.
* shutdown: ``STOPPING=1``, stop watchers and intake, give in-flight jobs
  :data:`STOP_GRACE_S` seconds, return the rest to pending, close the store.

All scanning (catch-up and watcher batches) runs on one indexer thread, so
the scanners never race each other and the main loop never blocks on I/O.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from pathlib import Path

import structlog

from llmc_rag_service import logging as logsetup
from llmc_rag_service.config import Config, ConfigError, load_config
from llmc_rag_service.engine import Engine
from llmc_rag_service.notify import HealthGate, Notifier, watchdog_interval_s
from llmc_rag_service.indexer import Indexer
from llmc_rag_service.report import LOCK_NAME
from llmc_rag_service.watching import Watching

log = structlog.get_logger(__name__)

TICK_S = 0.2
#: Seconds in-flight jobs get to finish on stop (below the unit's TimeoutStopSec=45).
STOP_GRACE_S = 20.0
STATUS_MIN_GAP_S = 0.5
STATUS_MAX_GAP_S = 10.0


class AlreadyRunning(Exception):
    """Another ``serve`` holds the state directory's lock."""


class Daemon:
    """The ``serve`` process for one config file.

    Args:
        config_path: The file, re-read on SIGHUP.
        config: Its validated contents.
        notifier: sd_notify sender (default: from ``$NOTIFY_SOCKET``).
    """

    def __init__(self, config_path: Path, config: Config, notifier: Notifier | None = None):
        self.config_path, self.config = config_path, config
        self.notifier = notifier or Notifier()
        self.wake = threading.Event()
        self.stop_requested = self.reload_requested = False
        self.status_dirty = True
        self.gate = HealthGate()

    # -- signals: record only --------------------------------------------
    def _on_term(self, signum, frame) -> None:
        if self.stop_requested:
            os._exit(1)  # second signal: exit at once; running jobs are recovered at next start
        self.stop_requested = True
        self.wake.set()

    def _on_hup(self, signum, frame) -> None:
        self.reload_requested = True
        self.wake.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)

    # -- lifecycle --------------------------------------------------------
    def run(self) -> int:
        """Run until SIGTERM; returns the exit status (0)."""
        self.install_signals()
        self.startup()
        try:
            self.main_loop()
        finally:
            self.shutdown()
        return 0

    def startup(self) -> None:
        self._lock_fd = self._take_lock(self.config.state_dir)
        self.engine = Engine(self.config, on_change=self._mark_dirty)
        self.engine.store.set_meta(daemon_pid=str(os.getpid()), daemon_status="starting")
        self.indexer = Indexer(self.engine, on_change=self._mark_dirty)
        self.indexer.start()
        self.watching = Watching(self.config.watch)
        for repo in self.config.repos:
            self.watching.start(repo.path, self.engine.scanners[repo.path].ignore)
        self.gate.add_check("watchers", lambda: self.watching.health())
        self.gate.add_check("indexer", lambda: None if self.indexer.is_alive() else "indexer thread died")
        self.gate.add_check("workers", lambda: self.engine.hung())
        self.gate.add_check("store", lambda: self.engine.store.writable())
        self.engine.pool.start()
        for repo in self.config.repos:
            self.indexer.put_full(repo.path)
        self.notifier.ready()
        log.info("daemon_ready", repos=[str(r.path) for r in self.config.repos], pid=os.getpid(),
                 model=self.config.ollama.model, url=self.config.ollama.url)

    def main_loop(self) -> None:
        interval = watchdog_interval_s()
        last_ping = last_status = 0.0
        while not self.stop_requested:
            now = time.monotonic()
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            self._drain_watchers()
            if self.status_dirty and now - last_status >= STATUS_MIN_GAP_S or now - last_status >= STATUS_MAX_GAP_S:
                self._publish_status()
                last_status = now
            if interval and now - last_ping >= interval and self.gate.should_ping():
                self.notifier.watchdog()
                last_ping = now
            self.wake.wait(TICK_S)
            self.wake.clear()

    def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("daemon_stopping", grace_s=STOP_GRACE_S, in_flight=self.engine.pool.in_flight)
        self.watching.stop_all()
        self.indexer.stop()
        returned = self.engine.pool.stop(STOP_GRACE_S)
        self.engine.store.set_meta(daemon_status="stopped", daemon_pid=None)
        self.engine.close(0)
        log.info("daemon_stopped", returned_to_pending=returned)
        os.close(self._lock_fd)

    # -- reload -------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: re-read the config; keep the old one if the new is invalid."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload_failed", error=str(exc), config=str(self.config_path))
            self.notifier.ready()
            return
        old, self.config = self.config, new
        logsetup.set_level(new.logging.level)
        if new.ollama != old.ollama or new.queue != old.queue:
            self.engine.replace_client(new, STOP_GRACE_S)
        self.engine.config = new
        added, removed = self.engine.set_repos(new.repos)
        for path in removed:
            self.watching.stop(path)
        for path in added:
            self.watching.start(path, self.engine.scanners[path].ignore)
            self.indexer.put_full(path)
        log.info("reloaded", config=str(self.config_path), added=[str(p) for p in added],
                 removed=[str(p) for p in removed])
        self.status_dirty = True
        self.notifier.ready()

    # -- helpers ------------------------------------------------------------
    def _mark_dirty(self) -> None:
        self.status_dirty = True

    def _take_lock(self, state_dir: Path) -> int:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(f"another llmc-rag serve uses {state_dir}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _drain_watchers(self) -> None:
        for work in self.watching.poll():
            if work.kind == "full":
                self.indexer.put_full(work.repo)
            else:
                self.indexer.put_paths(work.repo, set(work.paths))

    def _publish_status(self) -> None:
        self.status_dirty = False
        activity = self.indexer.busy
        queued = self.indexer.items.qsize()
        if queued and not activity:
            activity = "scanning"
        text = self.engine.status_line(activity)
        self.notifier.status(text)
        self.engine.store.set_meta(daemon_status=text, ollama_last_error=self.engine.last_error())
