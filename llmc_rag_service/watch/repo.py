"""Watch a repository with watchdog (inotify) and hand out debounced batches of changed paths.

Shape: ``RepoWatcher.start()`` → watchdog's threads call ``_on_event`` → each
relevant relpath goes into a :class:`Debouncer` → the caller's loop calls
``take_due()`` (paths to re-stat), ``take_rescan()`` (events may be lost: rescan
the repo and, if ``is_alive()`` is False, ``stop()`` + ``start()`` the watcher)
and ``gitignore_changed()`` (rules changed: rescan).

Facts about watchdog 7.1 on inotify (read in its source) this module relies on:
- the kernel mask follows ``event_filter``; leaving out opened / closed-no-write
  events means the daemon's own reads of watched files produce no events;
- a save by rename (JetBrains, atomic replace) delivers the new content as the
  ``dest_path`` of a move, so both ends of a move are reported;
- an inotify queue overflow is only logged (``watchdog.observers.inotify_c``:
  "Inotify queue overflowed; filesystem events were lost"), never dispatched, so
  :class:`_LostEventsHandler` turns that log record into the rescan flag;
- a recursive watch adds one kernel watch per directory, even below ignored ones,
  and silently skips a subdirectory it cannot watch: ``observers.py`` prunes
  ignored directories and reports kernel watch limits. On a limit (ENOSPC,
  ``fs.inotify.max_user_watches``) the repo is watched by the polling observer
  instead (one error logged with the sysctl hint; :attr:`RepoWatcher.degraded`).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from watchdog.events import (
    DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileAttribEvent, FileClosedEvent,
    FileCreatedEvent, FileDeletedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver

from llmc_rag_service.index.ignore import RepoIgnore
from llmc_rag_service.index.scanner import RootId, root_identity
from llmc_rag_service.watch import observers
from llmc_rag_service.watch.debounce import Debouncer
from llmc_rag_service.watch.observers import LIMIT_ERRNOS, make_inotify_observer, make_polling_observer

log = structlog.get_logger(__name__)

#: Event kinds listened to. No FileOpenedEvent / FileClosedNoWriteEvent: those are our own reads.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent, FileDeletedEvent,
    FileMovedEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent,
]
STOP_TIMEOUT_S = 5.0
#: Seconds between snapshots when a repo is watched by polling (inotify limits hit).
POLL_INTERVAL_S = 2.0
_WATCHDOG_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")
_INFO_EXCLUDE = ".git/info/exclude"
_WATCHED_GIT_DIRS = frozenset({".git", ".git/info"})


class _LostEventsHandler(logging.Handler):
    """Turns watchdog's overflow / watch-rebuild-failure log records into rescan flags.

    The record names no repo; it is logged on the observer's inotify reader thread,
    so it goes to the watcher owning that thread, or to every watcher if none does.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._watchers: set[RepoWatcher] = set()
        self._members = threading.Lock()

    def register(self, watcher: RepoWatcher, on: bool) -> None:
        with self._members:
            (self._watchers.add if on else self._watchers.discard)(watcher)
        for name in _WATCHDOG_LOGGERS:
            logger = logging.getLogger(name)
            if self not in logger.handlers:
                logger.addHandler(self)
            if logger.getEffectiveLevel() > logging.WARNING:
                logger.setLevel(logging.WARNING)  # a quieter root level must not hide an overflow

    def emit(self, record: logging.LogRecord) -> None:
        text = str(record.msg)
        if "overflow" not in text.lower() and not text.startswith("Unable to rebuild"):
            return
        with self._members:
            watchers = list(self._watchers)
        owners = [w for w in watchers if w._reader_thread_id() == record.thread]
        for watcher in owners or watchers:
            watcher._request_rescan("inotify_overflow")


_LOST_EVENTS = _LostEventsHandler()


class _Handler(FileSystemEventHandler):
    """Forwards every event to the watcher; an error there means events may be lost."""

    def __init__(self, watcher: RepoWatcher) -> None:
        self._watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._watcher._on_event(event)
        except Exception:  # an escaping exception would kill the observer thread
            self._watcher._request_rescan("handler_error")
            log.exception("watch_event_failed", root=self._watcher.root_str, fs_event=repr(event))


class RepoWatcher:
    """Debounced, coalesced changed relpaths of one repo (POSIX, relative to ``root``).

    Threads: watchdog's observer threads feed it; one caller thread takes from it.
    ``clock`` (monotonic seconds) times the debounce; the polling fallback's
    snapshots and ``stop()``'s bound stay on real time (they are watchdog's threads).
    """

    def __init__(self, root: Path, ignore: RepoIgnore, *, debounce_ms: int = 500,
                 max_delay_ms: int = 5000, poll_interval_s: float = POLL_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root_str = os.path.abspath(root)
        self._ignore = ignore
        self._debouncer = Debouncer(debounce_ms, max_delay_ms, clock)
        self._lock = threading.Lock()
        self._observer: BaseObserver | None = None
        self._rescan = False
        # .gitignore edits, debounced like paths: one save's several events flag it once.
        self._gitignore = Debouncer(debounce_ms, max_delay_ms, clock)
        self._death_reported = False
        self._poll_interval_s = poll_interval_s
        self._limit_error: OSError | None = None
        self._limits_when_hit: tuple[int, ...] = ()
        #: Why the repo is watched by polling (e.g. the inotify watch limit), else None.
        self.degraded: str | None = None
        #: Events seen under .git/ (not reported as changes).
        self.git_event_count = 0
        #: Called with the relpath of each event under .git/ (watchdog's thread): git gating.
        self.on_git_event: Callable[[str], None] | None = None
        #: Called (watchdog's thread, no args) when an event needs the caller's loop (the
        #: first pending path, a .git event, the root moved): it otherwise sleeps while
        #: nothing is due.
        self.on_activity: Callable[[], None] | None = None
        #: (st_dev, st_ino) of the root directory when watching started: the tree the
        #: kernel watches follow, whatever is at the path later.
        self.identity: RootId | None = None
        self._root_gone = False  # the root's watch saw its own move or deletion
        #: The repo's git directory when it lies outside the root (a worktree's or
        #: submodule's ``.git`` file points there): watched too, its events reported
        #: as ``.git/NAME``. Set before :meth:`start`; a change needs a restart.
        self.outside_git_dir: str | None = None

    def start(self) -> None:
        """Start watching (recursive, ignored dirs pruned); no-op if alive.

        On an inotify limit (ENOSPC/EMFILE), logs one error with the sysctl hint and
        watches by polling from then on (:attr:`degraded` says so).
        Raises OSError if the root cannot be watched (missing, not a dir).
        """
        if self.is_alive():
            return
        self.stop()  # a dead observer's leftovers
        if self.degraded is None:
            try:
                self._start_observer(lambda: make_inotify_observer(self._prune, self._on_limit, self._on_root_gone))
                if self._limit_error is None:
                    return
            except OSError as exc:
                if exc.errno not in LIMIT_ERRNOS:
                    raise
                self._limit_error = exc
            self.stop()
            self._degrade(self._limit_error)
        self._start_observer(lambda: make_polling_observer(self._prune, self._poll_interval_s))

    def _start_observer(self, make: Callable[[], BaseObserver]) -> None:
        """Make an observer with ``make`` once the root is a directory, schedule
        and start it. An observer that could not be scheduled is stopped before
        the error is raised: watchdog 7's InotifyObserver starts its inotify
        reader thread (and opens an inotify fd and a pipe) when it is made, so a
        root retried while missing leaked one of each per try."""
        identity = root_identity(self.root_str)
        if identity is None:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", self.root_str)
        with self._lock:
            self.identity, self._root_gone = identity, False
        observer = make()
        try:
            observer.schedule(_Handler(self), self.root_str, recursive=True, event_filter=EVENT_FILTER)
            if self.outside_git_dir and os.path.isdir(self.outside_git_dir):
                observer.schedule(_Handler(self), self.outside_git_dir, recursive=False, event_filter=EVENT_FILTER)
        except BaseException:
            observer.stop()  # never started: stop() only releases what making it took
            raise
        with self._lock:
            self._observer, self._death_reported = observer, False
        _LOST_EVENTS.register(self, on=True)
        try:
            observer.start()
        except Exception:
            self.stop()
            raise
        log.info("watch_started", root=self.root_str, mode="polling" if self.degraded else "inotify")

    def check_root(self) -> str | None:
        """Whether the path still holds the watched tree (one ``stat``): None if so,
        ``missing`` (moved away or deleted), ``replaced`` (another directory is there
        now, e.g. ``mv repo repo.bak && mkdir repo``), or ``moved`` (the root was
        moved but the same tree is back at the path). Clears the self-move flag."""
        with self._lock:
            gone, self._root_gone = self._root_gone, False
            identity = self.identity
        if identity is None:
            return None
        now = root_identity(self.root_str)
        if now is None:
            return "missing"
        if now != identity:
            return "replaced"
        return "moved" if gone else None

    def discard(self) -> int:
        """Drop every pending event (they belong to a tree no longer at the path);
        returns how many paths were dropped."""
        self._gitignore.take_all()
        return len(self._debouncer.take_all())

    def _on_root_gone(self) -> None:
        with self._lock:
            self._root_gone = True
        activity = self.on_activity
        if activity is not None:
            activity()

    def take_limit_hit(self) -> bool:
        """True once if inotify hit a kernel limit while running (a new directory could
        not be watched): the caller restarts the watcher, which then polls, and rescans."""
        with self._lock:
            hit = self._limit_error is not None and self.degraded is None
        if hit:
            self._degrade(self._limit_error)
        return hit

    def _on_limit(self, exc: OSError) -> None:
        with self._lock:
            self._limit_error = self._limit_error or exc

    def limits_raised(self) -> bool:
        """While polling: True once the kernel's inotify limits were raised since the
        limit was hit (``sysctl fs.inotify.max_user_watches=...``); then
        :attr:`degraded` is cleared, so the next :meth:`start` tries inotify again."""
        if self.degraded is None or observers.inotify_limits() <= self._limits_when_hit:
            return False
        log.info("inotify_limits_raised", root=self.root_str, limits=observers.inotify_limits())
        with self._lock:
            self.degraded, self._limit_error = None, None
        return True

    def _degrade(self, exc: OSError | None) -> None:
        self._limits_when_hit = observers.inotify_limits()
        which = "instance" if exc is not None and exc.errno == errno.EMFILE else "watch"
        sysctl = f"fs.inotify.max_user_{which}es" if which == "watch" else "fs.inotify.max_user_instances"
        self.degraded = f"inotify {which} limit"
        log.error("inotify_limit_reached", root=self.root_str, error=str(exc), fallback="polling",
                  poll_interval_s=self._poll_interval_s,
                  hint=f"raise it: sysctl {sysctl}={524288 if which == 'watch' else 1024}")

    def stop(self) -> None:
        """Stop the observer and join its threads, waiting at most STOP_TIMEOUT_S in total."""
        with self._lock:
            observer, self._observer = self._observer, None
        _LOST_EVENTS.register(self, on=False)
        if observer is None:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        # watchdog's stop() joins its emitters without a timeout: run it aside.
        stopper = threading.Thread(target=observer.stop, name="watch-stop", daemon=True)
        stopper.start()
        stopper.join(STOP_TIMEOUT_S)
        if observer.ident is not None:
            observer.join(max(0.0, deadline - time.monotonic()))
        if stopper.is_alive() or observer.is_alive():
            log.error("watch_stop_timeout", root=self.root_str, timeout_s=STOP_TIMEOUT_S)
        else:
            log.info("watch_stopped", root=self.root_str)

    def is_alive(self) -> bool:
        """True while the observer thread and its emitter threads run."""
        observer = self._observer
        return (observer is not None and observer.is_alive()
                and all(e.is_alive() for e in list(observer.emitters)))

    def take_due(self) -> set[str]:
        """Relpaths due now (may no longer exist, or be directories: the caller re-stats)."""
        return self._debouncer.due()

    def pending(self) -> int:
        """How many paths wait in the debouncer."""
        return self._debouncer.pending()

    def take_all(self) -> set[str]:
        """Every pending relpath, due or not (a git operation settled: the tree is final)."""
        return self._debouncer.take_all()

    def next_due_s(self) -> float | None:
        """Seconds until the next path or ``.gitignore`` change is due (for the
        caller's wait), None if none is pending."""
        dues = [d for d in (self._debouncer.next_due_s(), self._gitignore.next_due_s()) if d is not None]
        return min(dues, default=None)

    def take_rescan(self) -> bool:
        """True once after events may have been lost: inotify overflow, handler error, or
        the observer died while started (then the caller also stops and restarts it)."""
        with self._lock:
            if self._observer is not None and not self._death_reported and not self.is_alive():
                self._death_reported = self._rescan = True
                log.error("watch_died", root=self.root_str)
            flag, self._rescan = self._rescan, False
        return flag

    def gitignore_changed(self) -> bool:
        """True once after a .gitignore in the repo changed and its events went quiet for
        the debounce time (rules already invalidated).

        On True the kernel watches are re-armed, so directories the new rules un-ignore are
        watched; the caller rescans the repo, which also covers events during the re-arm.
        """
        flag = bool(self._gitignore.due())
        with self._lock:
            running = self._observer is not None
        if flag and running:
            self.stop()
            self.start()
        return flag

    def _request_rescan(self, reason: str) -> None:
        with self._lock:
            self._rescan = True
        log.warning("watch_rescan_needed", root=self.root_str, reason=reason)

    def _reader_thread_id(self) -> int | None:
        reader = getattr(self._observer, "_inotify_fd", None)  # watchdog 7.x InotifyFD thread
        return getattr(reader, "ident", None)

    def _rel(self, path: bytes | str) -> str | None:
        path = os.fsdecode(path)
        if not path.startswith(self.root_str + os.sep):
            outside = self.outside_git_dir
            if outside and path.startswith(outside + os.sep):  # a worktree's own git dir
                return ".git/" + path[len(outside) + 1:]
            return None
        return path[len(self.root_str) + 1:].replace(os.sep, "/")

    def _prune(self, path: bytes) -> bool:
        # .git itself stays watched (index.lock, HEAD), and .git/info (the exclude
        # file is an ignore rule); the other subdirs of .git do not.
        rel = self._rel(path)
        return rel is not None and rel not in _WATCHED_GIT_DIRS and self._ignore.is_ignored(rel, is_dir=True)

    def _on_event(self, event: FileSystemEvent) -> None:
        if event.is_synthetic:  # per-file events of a dir move: the dir itself is reported
            return
        wake = False
        for path in (event.src_path, event.dest_path):
            rel = self._rel(path) if path else None
            if rel is None:
                continue
            if rel == ".git" or rel.startswith(".git/"):
                if rel == _INFO_EXCLUDE:
                    wake |= self._rules_changed(rel)
                self._on_git_event(rel)
                wake = True
                continue
            if rel == ".gitignore" or rel.endswith("/.gitignore"):
                wake |= self._rules_changed(rel)
            elif rel == ".gitmodules":
                self._on_git_event(rel)  # submodules added or removed: the gate looks again
            elif event.is_directory:
                self._ignore.forget(rel)  # a directory moved in may bring other .gitignore files
            elif self._debouncer.touch(rel):
                # Pending already, so not ignored when its first event came (the
                # scanner checks again): during an extraction of thousands of files
                # this thread must keep up, or a save's events queue behind theirs.
                continue
            if not self._ignore.is_ignored(rel, is_dir=event.is_directory):
                # Only the first pending path needs to wake the caller: a later one is
                # never due before the paths already waiting (see Debouncer).
                wake |= self._debouncer.add(rel)
        activity = self.on_activity
        if wake and activity is not None:
            activity()

    def _rules_changed(self, rel: str) -> bool:
        self._ignore.invalidate()
        return self._gitignore.add(rel)

    def _on_git_event(self, rel: str) -> None:
        """Not reported as a change: counted and passed to :attr:`on_git_event`."""
        self.git_event_count += 1
        listener = self.on_git_event
        if listener is not None:
            listener(rel)
