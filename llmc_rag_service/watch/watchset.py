"""All repos' watchers, as the daemon sees them: start/stop per repo, and one
``poll()`` per main-loop tick that turns file events into indexer work.

The daemon knows nothing of watchdog, debouncing, lost events or git state:
it calls :meth:`WatchSet.poll` and hands each :class:`Work` item to the
indexer. Behind ``poll()``, per repo:

* due paths are held while git rewrites the tree (:class:`~.gitstate.GitGate`)
  and handed over as one batch once it settled, so no intermediate state of a
  checkout, merge or rebase is ever indexed;
* lost events (inotify overflow, a handler error, a dead observer thread) and
  ``.gitignore`` edits become a full rescan; a dead watcher is restarted;
* the root's identity (device + inode) is checked on every poll and on the
  root's own move/delete event: a root moved away is ``missing`` (its pending
  events, which belong to the moved tree, are dropped); another directory at the
  path (``mv repo repo.bak && mkdir repo``) is re-watched and fully rescanned;
  each batch carries the identity it was seen under, so the indexer drops a
  batch of a tree that is no longer at the path;
* an inotify limit switches the repo to polling (:meth:`WatchSet.degraded`),
  and back to inotify once the kernel's limits were raised (read again every
  :data:`RESTART_RETRY_S` while polling);
* every ``watch.reconcile_s`` seconds a full reconcile scan is due (a stat per
  file when nothing changed).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import structlog

from llmc_rag_service.clock import SYSTEM, Clock
from llmc_rag_service.config import WatchConfig
from llmc_rag_service.watch.gitgate import SETTLE_S, GitGate
from llmc_rag_service.index.ignore import RepoIgnore
from llmc_rag_service.index.scanner import RootId
from llmc_rag_service.watch.repo import RepoWatcher

log = structlog.get_logger(__name__)

#: Seconds between attempts to restart a watcher that cannot start (e.g. root missing).
RESTART_RETRY_S = 2.0
#: More paths than this within BURST_S seconds make a burst (see WatchSet._in_burst).
BURST_PATHS = 64
BURST_S = 2.0
#: Seconds between looks at the git gate while events are held for it.
GATE_RECHECK_S = 0.2


@dataclass(frozen=True)
class Work:
    """ScanScheduler work for one repo: ``kind`` is ``full`` (rescan the repo) or
    ``paths`` (re-check ``paths``, relative POSIX paths). ``root_id`` is the
    root's (st_dev, st_ino) when the events were seen (None: not checked);
    ``burst``: the repo was in a burst of changes (new files are not saves)."""

    repo: Path
    kind: str
    paths: frozenset[str] = frozenset()
    root_id: RootId | None = None
    burst: bool = False


@dataclass
class _Repo:
    """WatchSet state of one repo; times are the WatchSet clock's (monotonic) seconds."""

    ignore: RepoIgnore
    watcher: RepoWatcher
    gate: GitGate
    held: set[str] = field(default_factory=set)
    held_full: str | None = None  # why a full scan waits for the gate (reason), else None
    holding: str | None = None  # the gate's reason while holding, for one log line per hold
    holding_ended: bool = False  # a hold just ended: flush the pending paths with it
    last_full: float = 0.0
    retry_at: float = 0.0
    limits_check_at: float = 0.0  # while polling: when the inotify limits are read again
    recent: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)  # (time, paths handed out)
    missing: bool = False  # the root is not a directory (unmounted, deleted): retried, not unhealthy


class WatchSet:
    """The watchers of every repo.

    Args:
        watch: ``watch`` config (debounce and max delay in milliseconds,
            ``reconcile_s`` in seconds, 0 = no periodic reconcile).
        settle_s: Quiet seconds after a ``.git/`` event before held events go out.
        poll_interval_s: Snapshot interval of the polling fallback, seconds.
        clock: Time of debounce, git gate settle, restart retries and reconcile.
    """

    def __init__(self, watch: WatchConfig, *, settle_s: float = SETTLE_S,
                 poll_interval_s: float | None = None, on_activity: Callable[[], None] | None = None,
                 clock: Clock = SYSTEM):
        self.watch, self.settle_s, self.poll_interval_s, self.clock = watch, settle_s, poll_interval_s, clock
        self.on_activity = on_activity
        self._repos: dict[Path, _Repo] = {}

    @property
    def watchers(self) -> dict[Path, RepoWatcher]:
        """The watcher of each repo (read-only view, for tests and health)."""
        return {path: r.watcher for path, r in self._repos.items()}

    def gate(self, repo: Path) -> GitGate:
        """The git-operation gate of ``repo`` (KeyError if not watched)."""
        return self._repos[repo].gate

    def start(self, repo: Path, ignore: RepoIgnore) -> None:
        """Start watching ``repo`` (its ignore rules are shared with its scanner).

        The caller queues the first full scan itself; the reconcile clock starts now.
        A root that is missing or cannot be watched is not an error: the repo is
        shown as degraded and retried every :data:`RESTART_RETRY_S` seconds
        (a full scan follows once it can be watched).
        """
        extra = {} if self.poll_interval_s is None else {"poll_interval_s": self.poll_interval_s}
        watcher = RepoWatcher(repo, ignore, debounce_ms=self.watch.debounce_ms,
                              max_delay_ms=self.watch.max_delay_ms, clock=self.clock, **extra)
        gate = GitGate(repo, self.settle_s, clock=self.clock)
        gate.take_git_dir_changed()
        watcher.outside_git_dir = gate.outside_git_dir()
        watcher.on_git_event = gate.note_event
        watcher.on_activity = self.on_activity
        state = self._repos[repo] = _Repo(ignore, watcher, gate, last_full=self.clock())
        try:
            watcher.start()
        except OSError as exc:
            self._mark_missing(repo, state, self.clock(), exc)

    def stop(self, repo: Path) -> None:
        """Stop watching ``repo`` (bounded); held events are dropped (the next
        start's catch-up scan covers them)."""
        state = self._repos.pop(repo, None)
        if state:
            state.watcher.stop()

    def stop_all(self) -> None:
        """Stop every watcher."""
        for repo in list(self._repos):
            self.stop(repo)

    def poll(self) -> list[Work]:
        """Work that is due now, for every repo; call once per main-loop tick (cheap
        when idle: no file system access unless events are pending)."""
        work: list[Work] = []
        now = self.clock()
        for repo, state in list(self._repos.items()):
            full = self._full_reason(repo, state, now)
            if full:
                state.held_full = state.held_full or full
            state.held |= state.watcher.take_due()
            if not (state.held or state.held_full) or self._gate_holds(repo, state):
                continue
            if state.holding_ended:  # the tree is final: late paths need no more debounce
                state.held |= state.watcher.take_all()
                state.holding_ended = False
            if state.held_full:
                log.info("rescan_due", repo=str(repo), reason=state.held_full)
                work.append(Work(repo, "full"))
                state.last_full = now
            if state.held:
                burst = self._in_burst(state, now, len(state.held))
                work.append(Work(repo, "paths", frozenset(state.held), state.watcher.identity, burst))
            state.held, state.held_full = set(), None
        return work

    def _in_burst(self, state: _Repo, now: float, handed: int) -> bool:
        """Whether ``repo`` is in a burst of changes (an archive extracted, files
        generated): more than :data:`BURST_PATHS` paths handed out in the last
        :data:`BURST_S` seconds or waiting in the debouncer. Its small batches stay
        in the live lane, but their new files are queued behind saves."""
        state.recent.append((now, handed))
        while state.recent and state.recent[0][0] < now - BURST_S:
            state.recent.popleft()
        return bool(sum(n for _, n in state.recent) + state.watcher.pending() > BURST_PATHS)

    def _full_reason(self, repo: Path, state: _Repo, now: float) -> str | None:
        """Why ``repo`` needs a full scan now (root replaced, restart, lost events,
        ignore rules, reconcile)."""
        watcher = state.watcher
        root = watcher.check_root() if not state.missing else None
        if root is not None:
            return self._root_changed(repo, state, now, root)
        if state.gate.take_git_dir_changed() and watcher.outside_git_dir != state.gate.outside_git_dir():
            # A worktree's git dir moved or appeared: watch it instead (events of
            # the restart gap are covered by the rescan).
            watcher.outside_git_dir = state.gate.outside_git_dir()
            watcher.stop()
            return self._restart(repo, state, now, died=False) and "git_dir_changed"
        if watcher.degraded and now >= state.limits_check_at:
            state.limits_check_at = now + RESTART_RETRY_S
            if watcher.limits_raised():  # the admin raised the limit: inotify again
                watcher.stop()
                return self._restart(repo, state, now, died=False) and "inotify_limits_raised"
        if watcher.take_limit_hit():  # logged by the watcher; it polls once restarted
            watcher.stop()
            watcher.start()
            return "inotify_limit"
        if not watcher.is_alive():
            return self._restart(repo, state, now)
        if watcher.take_rescan():
            return "events_lost"
        if watcher.gitignore_changed():
            return "gitignore_changed"
        if self.watch.reconcile_s and now - state.last_full >= self.watch.reconcile_s:
            state.last_full = now
            return "reconcile"
        return None

    def _root_changed(self, repo: Path, state: _Repo, now: float, how: str) -> str | None:
        """The tree at ``repo`` is not the watched one any more (``missing``,
        ``replaced``) or was moved and is back (``moved``): drop what was seen
        in the old tree, re-watch what is at the path, and rescan it."""
        dropped = len(state.held) + (0 if how == "moved" else state.watcher.discard())
        log.error("repo_moved", repo=str(repo), now=how, dropped_events=dropped)
        state.held, state.held_full = set(), None
        if how == "moved":  # the same tree: its events were filed right; a rescan covers the gap
            return "root_moved_back"
        state.watcher.stop()
        state.missing = True  # until a directory at the path is watched ("repo_back")
        state.retry_at = now + RESTART_RETRY_S if how == "missing" else now
        return self._restart(repo, state, now, died=False) and "root_replaced"

    def _restart(self, repo: Path, state: _Repo, now: float, died: bool = True) -> str | None:
        """Start the watcher again (``died``: it stopped by itself, which is logged);
        returns the full-scan reason, or None if the root cannot be watched yet."""
        if now < state.retry_at:
            return None
        if died and not state.missing:
            log.error("watcher_died", repo=str(repo), degraded=state.watcher.degraded)
        state.gate.refresh()  # a new tree: its git directory may differ, or exist now
        state.gate.take_git_dir_changed()
        state.watcher.outside_git_dir = state.gate.outside_git_dir()
        try:
            state.watcher.start()
        except OSError as exc:
            self._mark_missing(repo, state, now, exc)
            return None
        if state.missing:
            state.missing = False
            log.info("repo_back", repo=str(repo))
        return "watcher_restarted"

    def _mark_missing(self, repo: Path, state: _Repo, now: float, exc: OSError) -> None:
        """The root cannot be watched (deleted, unmounted): one error log, then
        a quiet retry every RESTART_RETRY_S seconds."""
        state.retry_at = now + RESTART_RETRY_S
        if not state.missing:
            state.missing = True
            log.error("repo_unwatchable", repo=str(repo), error=str(exc), retry_in_s=RESTART_RETRY_S)

    def _gate_holds(self, repo: Path, state: _Repo) -> bool:
        """True while git rewrites ``repo``'s tree; logs the start and end of each hold."""
        reason = state.gate.busy()
        if reason:
            if state.holding is None:
                log.info("git_operation_hold", repo=str(repo), reason=reason, held=len(state.held))
            state.holding = reason
            return True
        if state.holding is not None:
            log.info("git_operation_settled", repo=str(repo), paths=len(state.held),
                     head_changed=state.gate.take_head_changed())
            state.holding, state.holding_ended = None, True
        return False

    def next_due_s(self) -> float | None:
        """Seconds until :meth:`poll` has something to do (a path due, a held
        batch to re-check against the git gate, a missing repo to retry, a
        reconcile), None if nothing is scheduled. File events also wake the
        caller through ``on_activity``, so it may sleep until then."""
        now, dues = self.clock(), []
        for state in self._repos.values():
            if state.held or state.held_full:
                dues.append(GATE_RECHECK_S)
            due = state.watcher.next_due_s()
            if due is not None:
                dues.append(due)
            if state.missing:
                dues.append(state.retry_at - now)
            if self.watch.reconcile_s:
                dues.append(state.last_full + self.watch.reconcile_s - now)
        return max(0.0, min(dues)) if dues else None

    def holding(self) -> str | None:
        """For STATUS: which repos hold changes while git runs, e.g.
        ``holding 30 changes while git runs in repo (index.lock)``; else None."""
        held = [(p, r) for p, r in self._repos.items() if r.holding is not None]
        if not held:
            return None
        return "; ".join(f"holding {len(r.held)} changes while git runs in {p.name} ({r.holding})" for p, r in held)

    def health(self) -> str | None:
        """Watchdog health check: None while every watcher thread is alive."""
        dead = [str(p) for p, r in self._repos.items() if not r.watcher.is_alive() and not r.missing]
        return f"watcher thread dead: {', '.join(dead)}" if dead else None

    def states(self) -> dict[Path, str]:
        """Per repo, the ``status --json`` ``state``: ``missing`` (no directory at
        the path, or it cannot be watched), ``polling`` (inotify limits), else ``ok``."""
        return {p: "missing" if r.missing else "polling" if r.watcher.degraded else "ok"
                for p, r in self._repos.items()}

    def degraded(self) -> list[str]:
        """One note per repo watched in a degraded mode, e.g.
        ``degraded: polling /path (inotify watch limit)``; empty when all is well."""
        notes = [f"degraded: repo missing {p}" for p, r in self._repos.items() if r.missing]
        return notes + [f"degraded: polling {p} ({r.watcher.degraded})"
                        for p, r in self._repos.items() if r.watcher.degraded and not r.missing]
