"""Is a git operation running in a repo? Decided from files, never by running git.

A checkout, merge, rebase or cherry-pick rewrites the work tree over a while;
indexing it half-way would enqueue jobs for intermediate content. git marks
such operations in its directory (read in git's source and docs,
``Documentation/git-*.txt`` and ``lockfile.c``):

* ``index.lock`` / ``HEAD.lock``: taken for the whole of a checkout, reset,
  merge or commit step, removed (renamed over ``index``/``HEAD``) at its end;
* ``rebase-merge/``, ``rebase-apply/``, ``MERGE_HEAD``, ``CHERRY_PICK_HEAD``,
  ``REVERT_HEAD``: a multi-step operation is under way; between its steps the
  locks are briefly absent.

:class:`GitGate` says "busy" while a lock exists, while events under ``.git/``
came in the last ``settle_s`` (HEAD just changed, a lock was just released),
or while an operation marker exists and ``.git/`` saw an event in the last
:data:`STATE_QUIET_S` seconds. A paused operation (a merge conflict being
resolved, a rebase stopped for editing) is quiet, so the user's saves then flow
again. A lock held longer than :data:`MAX_HOLD_S` is treated as stale (a
crashed git leaves ``index.lock`` behind), so the daemon never stalls on it.

Where the git directory is, is a fact that changes: a plain directory becomes a
repo (``git init``, a clone into the watched path, ``git worktree add`` writing
a ``.git`` file that points elsewhere), and submodules come and go. The gate
looks it up again (:meth:`GitGate.refresh`) on every event on ``.git`` or
``.gitmodules`` and whenever the watcher restarts; each submodule's git
directory (``.git/modules/NAME``, or wherever its ``.git`` file points) is
checked for locks and markers too, since a ``git submodule update`` rewrites
files of the watched tree under its own locks.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

LOCK_FILES = ("index.lock", "HEAD.lock")
STATE_MARKERS = ("rebase-merge", "rebase-apply", "MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD")
#: Quiet seconds after which a multi-step operation's marker no longer holds events.
STATE_QUIET_S = 2.0
#: Seconds after which a hold ends even with a lock present (stale lock).
MAX_HOLD_S = 120.0
#: Default quiet seconds after the last ``.git/`` event before the repo counts as settled.
SETTLE_S = 0.3


def git_dir_of(root: Path) -> Path | None:
    """The git directory of the work tree ``root``: ``root/.git`` if a directory,
    the target of a ``gitdir: PATH`` file (worktrees, submodules), else None."""
    dot_git = Path(root) / ".git"
    if dot_git.is_dir():
        return dot_git
    try:
        text = dot_git.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    target = Path(text[len("gitdir:"):].strip())
    return target if target.is_absolute() else (Path(root) / target).resolve()


_SUBMODULE_PATH = re.compile(r"^\s*path\s*=\s*(.+?)\s*$", re.MULTILINE)


def submodule_git_dirs(root: Path) -> list[Path]:
    """Git directories of the submodules listed in ``root/.gitmodules`` (``path =``
    lines) that are checked out (their ``.git`` file or directory exists)."""
    try:
        text = (Path(root) / ".gitmodules").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found = (git_dir_of(Path(root) / rel) for rel in _SUBMODULE_PATH.findall(text))
    return [git_dir for git_dir in found if git_dir is not None]


class GitGate:
    """Whether events of one repo must be held because git is rewriting its tree.

    Args:
        root: The work tree.
        settle_s: Quiet seconds after the last ``.git/`` event (seconds).
        clock: Monotonic clock in seconds.

    Thread-safe: :meth:`note_event` is called from the watcher's thread,
    :meth:`busy` from the daemon's main loop.
    """

    def __init__(self, root: Path, settle_s: float = SETTLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root, self.settle_s, self._clock = Path(root), settle_s, clock
        self.git_dir: Path | None = None
        self._git_dirs: tuple[Path, ...] = ()  # the repo's, then its submodules'
        self._git_dir_changed = False
        self._lock = threading.Lock()
        self._stale_logged: set[Path] = set()
        self._last_event = float("-inf")
        self._hold_since: float | None = None
        self.head_changed = False
        self.refresh()

    def refresh(self) -> bool:
        """Look up the git directory and the submodules' again (a few ``stat`` calls and
        reads of ``.git`` files and ``.gitmodules``). Returns True if the repo's own git
        directory changed (logged as ``git_dir_changed``)."""
        git_dir = git_dir_of(self.root)
        dirs = tuple(dict.fromkeys([*([git_dir] if git_dir else []), *submodule_git_dirs(self.root)]))
        with self._lock:
            changed, self.git_dir, self._git_dirs = git_dir != self.git_dir, git_dir, dirs
            self._git_dir_changed |= changed
        if changed:
            log.info("git_dir_changed", repo=str(self.root), git_dir=str(git_dir) if git_dir else None,
                     submodules=len(dirs) - (1 if git_dir else 0))
        return changed

    def note_event(self, rel: str) -> None:
        """Record an event on ``rel`` (a path under ``.git/``, relative to the work tree;
        ``.git`` or ``.gitmodules`` itself makes the gate look its git directories up again)."""
        with self._lock:
            self._last_event = self._clock()
            if rel in (".git/HEAD", ".git/HEAD.lock"):
                self.head_changed = True
        if rel in (".git", ".gitmodules"):
            self.refresh()

    def busy(self) -> str | None:
        """Why events must be held now (``index.lock``, ``settling``, ``rebase-merge``...),
        or None when the repo is settled. Costs a few ``stat`` calls; call it only when
        events are pending. Starts/ends the hold clock used for the stale-lock cap."""
        reason = self._reason()
        now = self._clock()
        with self._lock:
            if reason is not None and reason != "settling":
                # Settle after the last moment git was seen busy too: events written just
                # before a lock went may reach us after the lock's removal was seen.
                self._last_event = max(self._last_event, now)
            if reason is None:
                self._hold_since = None
                return None
            if self._hold_since is None:
                self._hold_since = now
            held_s = now - self._hold_since
        if held_s > MAX_HOLD_S:
            log.warning("git_hold_expired", repo=str(self.root), reason=reason, held_s=round(held_s, 1))
            with self._lock:
                self._hold_since = None
            return None
        return reason

    def _log_stale(self, path: Path, age_s: float) -> None:
        with self._lock:
            if path in self._stale_logged:
                return
            self._stale_logged.add(path)
        log.warning("git_lock_stale", path=str(path), age_s=round(age_s), hint="remove it if no git runs")

    def take_git_dir_changed(self) -> bool:
        """True once after :meth:`refresh` found another git directory."""
        with self._lock:
            flag, self._git_dir_changed = self._git_dir_changed, False
        return flag

    def outside_git_dir(self) -> str | None:
        """The repo's git directory if it is not inside the work tree (a worktree's
        or submodule's ``.git`` file points there), else None."""
        git_dir = self.git_dir
        if git_dir is None or git_dir.parent == self.root:
            return None
        return str(git_dir)

    def take_head_changed(self) -> bool:
        """True once after ``HEAD`` was rewritten (a checkout or a commit)."""
        with self._lock:
            flag, self.head_changed = self.head_changed, False
        return flag

    def _reason(self) -> str | None:
        git_dirs = self._git_dirs
        if not git_dirs:
            return None
        for git_dir in git_dirs:
            lock = self._fresh_lock(git_dir)
            if lock:
                return lock
        with self._lock:
            quiet_s = self._clock() - self._last_event
        if quiet_s < self.settle_s:
            return "settling"
        if quiet_s < STATE_QUIET_S:
            for git_dir in git_dirs:
                for name in STATE_MARKERS:
                    if os.path.lexists(git_dir / name):
                        return name
        return None

    def _fresh_lock(self, git_dir: Path) -> str | None:
        for name in LOCK_FILES:
            try:
                age_s = time.time() - os.lstat(git_dir / name).st_mtime
            except OSError:
                continue
            # A lock older than MAX_HOLD_S was left by a crashed git: judged by
            # the file's own age, so it never delays a later save again.
            if age_s <= MAX_HOLD_S:
                return name
            self._log_stale(git_dir / name, age_s)
        return None
