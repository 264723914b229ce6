"""The emulator's model scheduler: loads, slots, keep_alive expiry (``server/sched.go``).

All state lives under one condition variable (:attr:`Scheduler.cond`):

* A model is loaded by the first request that needs it (on that request's
  behalf: its client leaving aborts the load, cases O3); others wait, at most
  ``max_queue`` of them, beyond which 503 ``BUSY_MSG`` (O5).
* ``keep_alive`` is sticky: a request without it keeps the runner's duration
  (``useLoadedRunner``); a load without it uses 5 min (O6). Other load-time
  options than the runner's drain, unload and reload it (O7).
* A loaded model has ``num_parallel`` generation slots, granted FIFO (O4).
  Embedding inputs are scheduled on the same slots by reservation: each input
  takes the slot that frees first, so one request's inputs run in parallel
  and requests queue behind each other, as the runner batches sequences.
* Idle models expire lazily (checked whenever the state is read).

The exchange (``ex``) the waits watch is the HTTP handler: ``ex.gen`` is the
server generation it started in (a stop bumps it) and ``ex.alive()`` is False
once its client hung up.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmc_rag_service.testing.faults import BUSY_MSG
from llmc_rag_service.testing.wire import DEFAULT_KEEP_ALIVE_S, HttpError, canonical

#: How often waits notice a departed client or a stopped server, in seconds.
POLL_S = 0.05


class Exchange(Protocol):
    """What the scheduler needs of the HTTP exchange it waits for."""

    gen: int

    def alive(self) -> bool: ...


class Ask(Protocol):
    """What the scheduler needs of a request: its installed model ``key``, its
    load-time options and its ``keep_alive`` in seconds (None: not sent)."""

    key: str
    load_opts: dict[str, Any]
    keep_alive_s: float | None


@dataclass(eq=False)
class Runner:
    """A loaded (or loading) model. ``expires_at`` is wall-clock seconds;
    ``slot_free_at`` the monotonic time each slot's reserved embedding work ends."""

    key: str
    load_opts: dict[str, Any]
    session_s: float
    ready: bool = False
    failed: bool = False
    draining: bool = False
    refs: int = 0
    in_flight: int = 0
    expires_at: float = 0.0
    waiters: collections.deque[object] = field(default_factory=collections.deque)
    slot_free_at: list[float] = field(default_factory=list)


class Scheduler:
    """Installed models, runners and slots (see the module docstring).

    Args:
        models: installed name -> cold load delay in seconds.
        num_parallel: slots per loaded model (OLLAMA_NUM_PARALLEL).
        max_queue: requests that may wait for a load (OLLAMA_MAX_QUEUE).

    Counters for assertions: ``loads``, ``unloads``, ``aborted_loads``;
    ``in_flight_max``: installed name -> most requests generating at once.
    """

    def __init__(self, models: dict[str, float], num_parallel: int, max_queue: int):
        self.models = models
        self.num_parallel, self.max_queue = num_parallel, max_queue
        self.cond = threading.Condition()
        self.runners: dict[str, Runner] = {}
        self.load_waiters = 0
        self.gen = 0  # bumped by stop(): requests of an older generation give up
        self.loads = self.unloads = self.aborted_loads = 0
        self.in_flight_max: dict[str, int] = {}
        #: Wall-clock seconds for keep_alive expiries (``time.time``); a test
        #: injects a manual clock to step past an expiry without sleeping.
        self.wall: Callable[[], float] = time.time
        #: While True, a chat/generate request that has its slot waits before answering (see :meth:`hold`).
        self.paused = False

    # -- installed models --------------------------------------------------
    def find(self, name: str) -> str:
        """The installed name ``name`` refers to (``x`` = ``x:latest``), or ""."""
        with self.cond:
            return next((k for k in self.models if canonical(k) == canonical(name)), "") if name else ""

    def uninstall(self, name: str) -> None:
        """Forget an installed model and unload it."""
        with self.cond:
            self.models.pop(name, None)
            runner = self.runners.get(name)
            if runner is not None:
                self._unload(runner)

    def stop(self) -> None:
        """The server stopped: waits give up, loaded models are forgotten."""
        with self.cond:
            self.gen += 1
            self.runners.clear()
            self.cond.notify_all()

    # -- waiting -----------------------------------------------------------
    def wait_until(self, ex: Exchange, ready: Callable[[], bool], until: float = math.inf) -> bool:
        """Wait (under the lock) until ``ready()``; False if the client left or the server stopped."""
        with self.cond:
            while not ready():
                if ex.gen != self.gen or not ex.alive():
                    return False
                self.cond.wait(max(0.0, min(POLL_S, until - time.monotonic())))
        return True

    def hold(self, ex: Exchange) -> bool:
        """Wait while :attr:`paused` (a stuck runner keeping its slot); False if the client left or the server stopped."""
        return self.wait_until(ex, lambda: not self.paused)

    def pause(self, paused: bool) -> None:
        """Set :attr:`paused` and wake the waits."""
        with self.cond:
            self.paused = paused
            self.cond.notify_all()

    def sleep(self, ex: Exchange, seconds: float) -> bool:
        """Wait ``seconds``; False if the client left or the server stopped."""
        return self.sleep_until(ex, time.monotonic() + seconds)

    def sleep_until(self, ex: Exchange, end: float) -> bool:
        """Wait until monotonic time ``end`` (absolute, so late wake-ups do not add up)."""
        return self.wait_until(ex, lambda: time.monotonic() >= end, until=end)

    # -- runners (call with the lock held where noted) -----------------------
    def _unload(self, runner: Runner) -> None:
        """Lock held."""
        if self.runners.get(runner.key) is runner:
            del self.runners[runner.key]
            self.unloads += 1
            self.cond.notify_all()

    def reap(self) -> None:
        """Unload idle models whose keep_alive ran out (checked lazily). Lock held."""
        now = self.wall()
        for runner in list(self.runners.values()):
            if runner.ready and runner.refs == 0 and runner.expires_at <= now:
                self._unload(runner)

    def _claim(self, req: Ask) -> tuple[Runner | None, bool]:
        """A reference on the runner for ``req``: (runner, this request loads it);
        (None, False) while a runner with other load-time options drains (O7). Lock held."""
        runner = self.runners.get(req.key)
        if runner is not None and (runner.draining or runner.load_opts != req.load_opts):
            runner.draining = True
            if runner.refs > 0:
                return None, False
            self._unload(runner)
            runner = None
        loader = runner is None
        if runner is None:
            session_s = DEFAULT_KEEP_ALIVE_S if req.keep_alive_s is None else req.keep_alive_s
            runner = Runner(req.key, req.load_opts, session_s)
            self.runners[req.key] = runner
            self.loads += 1
        runner.refs += 1
        if req.keep_alive_s is not None:  # sticky: absent keep_alive keeps the runner's
            runner.session_s = req.keep_alive_s
        return runner, loader

    def release(self, runner: Runner) -> None:
        """Drop a request's reference; an idle runner starts its keep_alive (or unloads at 0)."""
        with self.cond:
            runner.refs -= 1
            if runner.refs == 0 and runner.ready and self.runners.get(runner.key) is runner:
                if runner.draining or runner.session_s <= 0:
                    self._unload(runner)
                else:
                    runner.expires_at = self.wall() + runner.session_s
            self.cond.notify_all()

    def _enter_load_queue(self, req: Ask) -> bool:
        """Count ``req`` as waiting for a load if its model is not ready; 503 past max_queue."""
        with self.cond:
            self.reap()
            runner = self.runners.get(req.key)
            if runner and runner.ready and not runner.draining and runner.load_opts == req.load_opts:
                return False
            if self.load_waiters >= self.max_queue:
                raise HttpError(503, BUSY_MSG)
            self.load_waiters += 1
            return True

    def acquire(self, ex: Exchange, req: Ask) -> Runner | None:
        """A ready runner holding a reference for ``req``; None if the client left
        or the server stopped. Raises HttpError 503 past ``max_queue``."""
        queued = self._enter_load_queue(req)
        try:
            while True:
                with self.cond:
                    runner, loader = self._claim(req)
                if runner is None:
                    blocker = self.runners.get(req.key)
                    if not self.wait_until(ex, lambda: self.runners.get(req.key) is not blocker):
                        return None
                    continue
                ok = self._load(ex, runner) if loader else self.wait_until(ex, lambda: runner.ready or runner.failed)
                if ok and runner.ready:
                    return runner
                self.release(runner)
                if not ok:
                    return None
        finally:
            if queued:
                with self.cond:
                    self.load_waiters -= 1

    def _load(self, ex: Exchange, runner: Runner) -> bool:
        """Load on this request's behalf; its client leaving aborts the load (as in Ollama)."""
        ok = self.sleep(ex, self.models.get(runner.key, 0.0))
        with self.cond:
            if ok and not runner.failed:
                runner.ready = True
            else:
                runner.failed = True
                if self.runners.get(runner.key) is runner:
                    del self.runners[runner.key]
                    self.aborted_loads += 1
            self.cond.notify_all()
        return ok

    def unload_now(self, key: str) -> None:
        """keep_alive 0 with nothing to do: unload (once idle) without loading."""
        with self.cond:
            runner = self.runners.get(key)
            if runner is not None:
                runner.session_s = 0.0
                if runner.refs == 0 and runner.ready:
                    self._unload(runner)

    # -- slots -------------------------------------------------------------
    def take_slot(self, ex: Exchange, runner: Runner) -> bool:
        """Wait FIFO for one of ``num_parallel`` generation slots of ``runner``."""
        ticket = object()

        def granted() -> bool:
            if runner.waiters[0] is not ticket or runner.in_flight >= self.num_parallel:
                return False
            runner.waiters.popleft()
            runner.in_flight += 1
            self.in_flight_max[runner.key] = max(self.in_flight_max.get(runner.key, 0), runner.in_flight)
            return True

        with self.cond:
            runner.waiters.append(ticket)
        if self.wait_until(ex, granted):
            return True
        with self.cond:
            runner.waiters.remove(ticket)
            self.cond.notify_all()
        return False

    def free_slot(self, runner: Runner) -> None:
        with self.cond:
            runner.in_flight -= 1
            self.cond.notify_all()

    def reserve(self, runner: Runner, costs_s: list[float]) -> float:
        """Reserve a slot for each embedding input (``costs_s``: its seconds), each
        on the slot that frees first; returns the monotonic time the last one ends."""
        now, end = time.monotonic(), time.monotonic()
        with self.cond:
            if len(runner.slot_free_at) != self.num_parallel:
                runner.slot_free_at = [now] * max(1, self.num_parallel)
            for cost in costs_s:
                slot = min(range(len(runner.slot_free_at)), key=runner.slot_free_at.__getitem__)
                runner.slot_free_at[slot] = max(now, runner.slot_free_at[slot]) + cost
                end = max(end, runner.slot_free_at[slot])
        return end

    # -- views ---------------------------------------------------------------
    def loaded(self) -> list[Runner]:
        """Runners loaded or loading now (expired ones unloaded first)."""
        with self.cond:
            self.reap()
            return list(self.runners.values())

    def waiting_for_slot(self) -> int:
        with self.cond:
            return sum(len(r.waiters) for r in self.runners.values())

    def waiting_for_load(self) -> int:
        with self.cond:
            return self.load_waiters

    def context_of(self, runner: Runner, trained: int) -> int:
        """The runner's real context: its num_ctx cut to the model's ``trained`` context (O10)."""
        return min(int(runner.load_opts["num_ctx"]), trained)


def load_options(options: dict[str, Any], names: tuple[str, ...], num_ctx_default: int) -> dict[str, Any]:
    """The load-time options of a request (others than the runner's force a reload, O7)."""
    load_opts = {k: options.get(k) for k in names}
    load_opts["num_ctx"] = options.get("num_ctx", num_ctx_default)
    return load_opts
