"""``llmc-rag serve``: the daemon's lifecycle.

``run()`` -> ``startup()`` -> ``main_loop()`` -> ``shutdown()``:

* startup: take the state lock, open and migrate the store, start one watcher
  per repo (every inotify watch is in place when ``WatchSet.start`` returns),
  then ``READY=1``. A long start (a repo with tens of thousands of
  directories) sends ``EXTEND_TIMEOUT_USEC=`` every :data:`EXTEND_EVERY_S`.
  The catch-up scan runs after READY on the scan-scheduler thread (STATUS says so),
  and the workers start at once.
* main loop: sleeps until something is due (at most :data:`TICK_S`) or an
  event wakes it; hands due watcher paths to
  the indexer, publishes STATUS (on a change of the text, at most every
  :data:`STATUS_MIN_GAP_S` or ten times what its counts took to compute, at
  least every :data:`STATUS_MAX_GAP_S`) and pings
  the watchdog a little under half of ``WATCHDOG_USEC`` only while the health
  gate passes (watchers and indexer alive, no job past its deadline plus a
  grace, store writable). The ping is sent from the loop, so a stalled loop
  stops it too; a failed check logs one error naming it.
* signals only record (set a flag; a thread woken by the signal's byte on a
  ``set_wakeup_fd`` pipe wakes the loop, ``service/signals.py``: a handler
  that took the loop's lock could deadlock its own thread): SIGHUP reloads,
  SIGTERM and SIGINT stop; a second SIGTERM/SIGINT exits at once (status 128 + signal).
  ``run()`` puts the previous handlers back when it returns (or raises), so a
  daemon can run inside a test process.
* shutdown: ``STOPPING=1``, stop watchers and intake, give in-flight jobs
  :data:`STOP_GRACE_S` seconds, return the rest to pending, close the store.
  A stop still under way after :data:`STOP_DEADLINE_S` logs ``stop_overdue``
  with every thread's frames and ends the process
  (:class:`~llmc_rag_service.service.overdue.StopDeadline`); a main loop too
  stuck to begin the stop has Python's ``faulthandler`` dump the stacks to
  stderr (the journal) and exit two seconds later (armed by the signal-waker
  thread as SIGTERM arrives, in serve's own process only). SIGTERM during a
  long start starts no further repo's watches.

All scanning (catch-up and watcher batches) runs on one scan-scheduler
thread, so the scanners never race each other and the main loop never blocks
on I/O. The parts are wired once, by
:class:`~llmc_rag_service.service.pipeline.Pipeline` (its docstring lists
every thread and what it owns); this module adds signals, sd_notify, STATUS
and the watchdog.
"""

from __future__ import annotations

import faulthandler
import fcntl
import json
import math
import os
import signal
import sqlite3
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Union

import structlog

from llmc_rag_service import logs as logsetup
from llmc_rag_service.clock import SYSTEM, Clock
from llmc_rag_service.config import Config, ConfigError, load_config
from llmc_rag_service.service.pipeline import Pipeline
from llmc_rag_service.service.notify import (HealthGate, Notifier, TimeoutExtender, ping_every_s,
                                     unset_notify_environment, watchdog_interval_s)
from llmc_rag_service.service import runtime
from llmc_rag_service.service.overdue import StopDeadline
from llmc_rag_service.service.signals import SignalWaker
from llmc_rag_service.service.status import LOCK_NAME, TEAM_META
from llmc_rag_service.store.faults import StoreUnusable, classify

log = structlog.get_logger(__name__)

#: A signal handler as ``signal.signal`` takes and returns it.
SignalHandler = Union[Callable[[int, FrameType | None], Any], int, signal.Handlers]

#: Longest the main loop sleeps, in seconds; anything due sooner (a debounced
#: path, a ping, a STATUS refresh) or an event, job outcome or signal wakes it.
TICK_S = 5.0
#: Seconds in-flight jobs get to finish on stop (below the unit's TimeoutStopSec=45).
STOP_GRACE_S = 20.0
#: Seconds the indexer may take to finish its current scan on stop (within the grace).
INDEXER_JOIN_S = 5.0
#: Seconds the whole stop may take, from its start: below the unit's
#: TimeoutStopSec=45, so a hung stop is logged before systemd's silent SIGKILL.
STOP_DEADLINE_S = 40.0
STATUS_MIN_GAP_S = 0.5
#: A STATUS text that took d seconds to compute (store queries, which a busy or
#: slow disk can stretch) is recomputed at most every STATUS_COST_FACTOR * d seconds
#: (at least STATUS_MIN_GAP_S, at most STATUS_MAX_GAP_S): the loop that hands saves
#: to the indexer spends at most a tenth of its time on it.
STATUS_COST_FACTOR = 10.0
#: Seconds the STATUS copy in the store may wait for the write lock.
STATUS_META_TIMEOUT_S = 0.5
#: Below the contract's 10 s, leaving room for one tick.
STATUS_MAX_GAP_S = 9.5
#: During start-up and reload: EXTEND_TIMEOUT_USEC every this many seconds ...
EXTEND_EVERY_S = 5.0
#: ... each asking for this many seconds more.
EXTEND_BY_S = 15.0


class AlreadyRunning(Exception):
    """Another ``serve`` holds the state directory's lock. ``pid``: the holder
    (as it wrote into the lock file), or None if unreadable."""

    def __init__(self, state_dir: Path, pid: int | None):
        self.state_dir, self.pid = state_dir, pid
        super().__init__(f"another llmc-rag serve (pid {pid or 'unknown'}) uses {state_dir}")


class Daemon:
    """The ``serve`` process for one config file.

    Args:
        config_path: The file, re-read on SIGHUP.
        config: Its validated contents.
        notifier: sd_notify sender (default: from ``$NOTIFY_SOCKET``).
        clock: Time of the main loop and of every part of the pipeline
            (ticks, STATUS gaps, watchdog pings, backoffs); tests pass a manual one.
        on_stop_overdue: Called when a stop outlives :data:`STOP_DEADLINE_S`
            seconds (real time), after ``stop_overdue`` is logged: ``serve``
            exits there; None (a daemon inside a test) only logs.

    The watchdog interval is read from ``$WATCHDOG_USEC``/``$WATCHDOG_PID`` here;
    then those and ``$NOTIFY_SOCKET`` are removed from the environment, so no
    child process inherits them.
    """

    def __init__(self, config_path: Path, config: Config, notifier: Notifier | None = None,
                 clock: Clock = SYSTEM, on_stop_overdue: Callable[[], None] | None = None):
        self.config_path, self.config, self.clock = config_path, config, clock
        self.on_stop_overdue = on_stop_overdue
        self.notifier = notifier or Notifier()
        half_s = watchdog_interval_s()
        self.ping_every_s: float | None = ping_every_s(half_s) if half_s else None
        unset_notify_environment()
        self.wake = threading.Event()
        self.stop_requested = self.reload_requested = False
        self.status_dirty = True
        self._holding: str | None = None
        self.gate = HealthGate()
        self._status_at = -math.inf
        self._status_cost_s = 0.0  # seconds the last STATUS text took to compute (self.clock)
        self._computed_at = -math.inf  # when it was computed
        self._status_text: str | None = None
        self._degraded: list[str] = []
        self._store_fault: str | None = None  # event name of the store fault last logged
        self.fatal: StoreUnusable | None = None  # what ended the main loop, if not a signal
        self._waker: SignalWaker | None = None
        self._backstop_armed = False
        self._lock_fd: int | None = None  # the state dir's lock, from startup() to shutdown()
        self._runtime_file: Path | None = None

    # -- signals: record only --------------------------------------------
    # A handler takes no lock (not even self.wake's): it runs on the main thread
    # between two bytecodes, maybe inside wake.wait()/clear() holding that lock.
    # The SignalWaker's thread sets self.wake for it (service/signals.py).
    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested:
            os._exit(128 + signum)  # second signal: at once; running jobs are recovered at next start
        self.stop_requested = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True

    def install_signals(self) -> dict[signal.Signals, SignalHandler]:
        """Start the :class:`SignalWaker` and install the handlers (main thread
        only); returns the previous handlers, for :meth:`restore_signals`."""
        self._waker = SignalWaker(self.wake, self._arm_backstop if self.on_stop_overdue else None)
        self._waker.start()
        handlers = {signal.SIGTERM: self._on_term, signal.SIGINT: self._on_term, signal.SIGHUP: self._on_hup}
        # None: the previous handler was not set from Python; the default is put back then.
        return {signum: signal.signal(signum, handler) or signal.SIG_DFL for signum, handler in handlers.items()}

    def _arm_backstop(self, signum: int) -> None:
        """On the waker thread, as SIGTERM/SIGINT arrives (even while the main
        thread is inside a long C call): if the process is still alive
        :data:`STOP_DEADLINE_S` + 2 s later, faulthandler dumps every thread's
        stack to stderr and exits (run() cancels it). Only for ``serve``'s own
        process (``on_stop_overdue`` set): a daemon inside a test process must
        not end that process."""
        if signum in (signal.SIGTERM, signal.SIGINT) and not self._backstop_armed:
            self._backstop_armed = True
            faulthandler.dump_traceback_later(STOP_DEADLINE_S + 2.0, exit=True)

    def restore_signals(self, previous: dict[signal.Signals, SignalHandler]) -> None:
        """Put ``previous`` handlers back and stop the waker (main thread only)."""
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if self._waker is not None:
            self._waker.stop()
            self._waker = None

    # -- lifecycle --------------------------------------------------------
    def run(self) -> StoreUnusable | None:
        """Run until SIGTERM or SIGINT, then stop cleanly; returns None (``cli.py``
        exits 0), or the fault that made the store unusable for good while
        running (the state file deleted or replaced, corrupt pages met),
        already logged: the daemon stopped cleanly, ``cli.py`` exits 74 and
        systemd restarts it into a new store and a full scan. The signal
        handlers in force before are restored when it returns or raises.

        Raises:
            AlreadyRunning: another serve holds the state dir.
            StoreUnusable: the store cannot be used at start (corrupt, another
                application's, read-only, full).
        """
        previous = self.install_signals()
        try:
            try:
                self.startup()
            except BaseException:
                self._undo_startup()  # a run() after a failed one finds nothing held
                raise
            try:
                self.main_loop()
            finally:
                deadline = StopDeadline(STOP_DEADLINE_S, self.on_stop_overdue)
                deadline.start()
                try:
                    self.shutdown()
                finally:
                    deadline.cancel()
        finally:
            faulthandler.cancel_dump_traceback_later()
            self.restore_signals(previous)
        return self.fatal

    def _undo_startup(self) -> None:
        """After a failed :meth:`startup`: close what it opened (the pipeline's
        threads and store, the runtime file, the state-dir lock, the notify socket)."""
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            pipeline.close(0.0, INDEXER_JOIN_S)
        runtime.remove_runtime_file(self._runtime_file)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self.notifier.close()

    def startup(self) -> None:
        """Everything READY=1 promises: lock, store migrated, every watch in place."""
        self._lock_fd = self._take_lock(self.config.state_dir)
        self._runtime_file = runtime.write_runtime_file(self.config.state_dir, self.config_path)
        with TimeoutExtender(self.notifier, EXTEND_EVERY_S, EXTEND_BY_S):
            self._send_status("starting: opening the store")
            self.pipeline = Pipeline(self.config, on_change=self._mark_dirty, on_activity=self.wake.set,
                                     clock=self.clock)
            self.pipeline.set_meta(daemon_pid=str(os.getpid()), daemon_status="starting")
            self.pipeline.drop_nested(self.config.repos)
            self.pipeline.start_scheduler()
            self.pipeline.watch(on_repo=self._on_repo, stop=lambda: self.stop_requested)
        for name, check in self.pipeline.health().items():
            self.gate.add_check(name, check)
        self.pipeline.start_workers()
        if self.config.ollama.warm_up:
            self.pipeline.warm_up()  # background: requests are sent at once anyway
        log.info("daemon_ready", repos=[str(r.path) for r in self.config.repos], pid=os.getpid(),
                 model=self.config.ollama.model, url=self.config.ollama.url)
        self.notifier.ready()

    def main_loop(self) -> None:
        next_ping = self.clock()
        while not self.stop_requested:
            try:
                next_ping = self._tick(next_ping)
            except StoreUnusable as exc:
                if not exc.pauses:  # replaced or corrupt: stop; run() shuts down cleanly
                    log.error(exc.event, **exc.fields())
                    self.fatal = exc
                    return
                self.clock.wait(self.wake, 1.0)  # work is paused; _watch_store said so
            except Exception:
                # E.g. the store locked by another process past busy_timeout
                # during a reload: logged, and the daemon lives on (a real
                # hang still stops the watchdog pings).
                log.exception("main_loop_error")
                self.clock.wait(self.wake, 1.0)
            self.clock.wait(self.wake, self._sleep_s(next_ping))
            self.wake.clear()

    def _tick(self, next_ping: float) -> float:
        """One turn of the loop; returns when the next watchdog ping is due."""
        self._watch_store()
        if self.reload_requested:
            self.reload_requested = False
            self.reload()
        self._drain_watchers()
        self.pipeline.reap_retired()
        self.pipeline.queue_missing()
        now = self.clock()
        self._maybe_publish_status(now)
        if self.ping_every_s and now >= next_ping:
            if self.gate.should_ping():
                self.notifier.watchdog()
            next_ping = now + self.ping_every_s
        return next_ping

    def _sleep_s(self, next_ping: float) -> float:
        """How long the loop may sleep: until the next watchdog ping, watcher
        work, or STATUS refresh is due, at most :data:`TICK_S`. File events,
        job outcomes and signals wake it earlier (``self.wake``), so an idle
        daemon wakes a few times a minute, not five times a second."""
        now = self.clock()
        waits = [TICK_S]
        if self.ping_every_s:
            waits.append(next_ping - now)
        due = self.pipeline.next_due_s()
        if due is not None:
            waits.append(due)
        waits.append(self._status_at + STATUS_MAX_GAP_S - now)
        if self.status_dirty:
            waits.append(max(self._computed_at + self._dirty_gap_s(), self._status_at + STATUS_MIN_GAP_S) - now)
        return max(0.0, min(waits))

    def shutdown(self) -> None:
        """Fixed order: STOPPING=1, stop intake, bounded grace, rest to pending, close."""
        self.notifier.stopping()
        log.info("daemon_stopping", grace_s=STOP_GRACE_S, in_flight=self.pipeline.in_flight())
        returned = self.pipeline.close(STOP_GRACE_S, INDEXER_JOIN_S,
                                       meta={"daemon_status": "stopped", "daemon_pid": None, TEAM_META: None})
        log.info("daemon_stopped", returned_to_pending=returned)
        runtime.remove_runtime_file(self._runtime_file)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self.notifier.close()  # nothing is sent after STOPPING=1 (a daemon in a test process must not leak it)

    # -- reload -------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: re-read the config; keep the old one if the new is invalid."""
        self.notifier.reloading()
        try:
            with TimeoutExtender(self.notifier, EXTEND_EVERY_S, EXTEND_BY_S):
                try:
                    new = load_config(self.config_path)
                except ConfigError as exc:
                    log.error("reload_failed", error=str(exc), config=str(self.config_path))
                    return
                if os.path.realpath(new.state_dir) != os.path.realpath(self.config.state_dir):
                    # The store stays open where it is; the new config's repos would
                    # no longer exclude it (its WAL indexed forever) and status reads elsewhere.
                    log.error("reload_failed", config=str(self.config_path),
                              error=f"{self.config_path}: state_dir: changed from {self.config.state_dir} to "
                                    f"{new.state_dir}; a reload keeps the open store: restart the service to move it")
                    return
                try:
                    changed = self._apply(self.config, new)
                except (sqlite3.Error, OSError) as exc:
                    # E.g. a new repo's row while another process holds the store's write
                    # lock: the old config stays on record, so the next SIGHUP applies
                    # the whole difference again (a repo added now is not lost for good).
                    log.error("reload_failed", error=f"{type(exc).__name__}: {exc}", config=str(self.config_path),
                              retry="send SIGHUP again once the store is free")
                    return
                self.config = new
            log.info("reloaded", config=str(self.config_path), **changed)
            self.status_dirty = True
        finally:
            # Whatever happened, systemd must not be left in "reloading".
            self.notifier.ready()

    def _apply(self, old: Config, new: Config) -> dict[str, list[str]]:
        """Apply ``new`` over ``old``: log settings, Ollama/queue settings (a new
        client and worker pool), repos and watch settings. Returns what changed."""
        if new.logging.format != old.logging.format:
            logsetup.configure_logging(new.logging.level, new.logging.format)
        elif new.logging.level != old.logging.level:
            logsetup.set_level(new.logging.level)
        return self.pipeline.apply_config(old, new)

    # -- helpers ------------------------------------------------------------
    def _on_repo(self, i: int, n: int, path: Path) -> None:
        self._send_status(f"starting: watching {path} ({i}/{n})")

    def _mark_dirty(self) -> None:
        # The first change after a publish wakes the loop; later ones coalesce.
        if not self.status_dirty:
            self.status_dirty = True
            self.wake.set()

    def _take_lock(self, state_dir: Path) -> int:
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:  # a read-only or full state dir is the store's fault
            raise (classify(exc, self.config.db_path) or exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise AlreadyRunning(state_dir, int(holder) if holder.isdigit() else None) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise (classify(exc, self.config.db_path) or exc) from exc
        return fd

    def _watch_store(self) -> None:
        """Every turn (at most TICK_S apart, and woken by workers meeting a
        fault): raise a fatal store fault, checking the state file's identity,
        so a file deleted or replaced under us ends the daemon within seconds;
        log a pausing fault (disk full…) once when it begins, and when it ends."""
        self.pipeline.check_store()
        fault = self.pipeline.store_fault()
        if fault is not None and not fault.pauses:
            raise fault  # a worker met it since the check: fatal, and said once (main_loop)
        kind = fault.event if fault is not None else None
        if kind == self._store_fault:
            return
        if fault is not None:
            log.error(fault.event, **fault.fields())
        else:
            log.info("store_recovered", path=str(self.config.db_path), previous=self._store_fault)
        self._store_fault = kind
        self.status_dirty = True

    def _drain_watchers(self) -> None:
        self.pipeline.drain_events()
        holding = self.pipeline.holding()
        if holding != self._holding:  # a git hold began or ended: STATUS says so
            self._holding = holding
            self._mark_dirty()

    def _send_status(self, text: str, heartbeat: bool = False) -> bool:
        """Send STATUS if the text changed (or ``heartbeat``) and the last one is
        at least STATUS_MIN_GAP_S old. Returns True if sent."""
        now = self.clock()
        if now - self._status_at < STATUS_MIN_GAP_S or (text == self._status_text and not heartbeat):
            return False
        self._status_at, self._status_text = now, text
        self.notifier.status(text)
        return True

    def _dirty_gap_s(self) -> float:
        """Seconds between two computations of a changed STATUS (see :data:`STATUS_COST_FACTOR`)."""
        return min(STATUS_MAX_GAP_S, max(STATUS_MIN_GAP_S, STATUS_COST_FACTOR * self._status_cost_s))

    def _maybe_publish_status(self, now: float) -> None:
        # A repo moved, missing or polling changes these notes (and status --json state).
        degraded = self.pipeline.degraded()
        if degraded != self._degraded:
            self._degraded, self.status_dirty = degraded, True
        heartbeat = now - self._status_at >= STATUS_MAX_GAP_S
        recompute = (self.status_dirty and now - self._computed_at >= self._dirty_gap_s()
                     and now - self._status_at >= STATUS_MIN_GAP_S)
        if not (heartbeat or recompute):
            return
        # A heartbeat with nothing changed resends the last text: its counts change only
        # with a job outcome or a scan, which mark it dirty; a "retry in" countdown moves.
        if recompute or self._status_text is None or "retry in" in self._status_text:
            self.status_dirty = False
            text = self.status_text()
            self._computed_at, self._status_cost_s = now, self.clock() - now
        else:
            text = self._status_text
        if self._send_status(text, heartbeat):
            try:
                # Short wait: another process holding the store must not stall the loop.
                team = self.pipeline.team_status()
                self.pipeline.set_meta(busy_timeout_s=STATUS_META_TIMEOUT_S, daemon_status=self._status_text,
                                       ollama_last_error=self.pipeline.last_error(),
                                       repo_states=json.dumps(self.pipeline.repo_states()),
                                       **{TEAM_META: json.dumps(team) if team else None})
            except (sqlite3.Error, StoreUnusable) as exc:
                log.debug("status_not_stored", error=str(exc))

    def status_text(self) -> str:
        """The one STATUS line: activity, queue counts, Ollama state, degraded notes."""
        text = self.pipeline.status_line(self.pipeline.activity())
        if self._degraded:  # each note reads "degraded: polling /repo (...)"
            text += "; " + "; ".join(self._degraded)
        return text
