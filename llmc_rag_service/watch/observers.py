"""The two watchdog observers a repo can be watched with, both skipping ignored directories.

* :func:`make_inotify_observer`: inotify, one kernel watch per directory. Ignored
  directories (``node_modules``, ``.git/*`` ...) get no watch: watchdog 7.1 adds one
  per directory even below ignored ones, so the watch group's private
  ``_add_all_callbacks`` is overridden. A watch that cannot be added because of
  the kernel's limits (ENOSPC: ``fs.inotify.max_user_watches``; EMFILE:
  ``fs.inotify.max_user_instances``) is reported to ``on_limit``: watchdog 7.1
  itself silently skips a subdirectory it cannot watch, leaving it unwatched.
* :func:`make_polling_observer`: the fallback when inotify limits are hit; a
  snapshot of the tree every ``interval_s``, listing no ignored directory.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import structlog
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

log = structlog.get_logger(__name__)

#: errno values meaning "inotify cannot watch more here": fall back to polling.
LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE})
Prune = Callable[[bytes], bool]
OnLimit = Callable[[OSError], None]

try:  # watchdog 7.x inotify internals, for pruning; absent on other platforms/versions
    from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup

    CAN_PRUNE = all(hasattr(InotifyWatchGroup, a) for a in ("_add_all_callbacks", "_add_callback"))
except Exception:  # ImportError, or watchdog's UnsupportedLibcError off Linux
    CAN_PRUNE = False

if CAN_PRUNE:

    @dataclass
    class _PrunedWatchGroup(InotifyWatchGroup):
        """InotifyWatchGroup that adds no kernel watch to dirs where ``prune(abs_path)``
        and reports watch-limit errors to ``on_limit``."""

        prune: Prune = field(default=lambda _path: False)
        on_limit: OnLimit = field(default=lambda _exc: None)

        def _add_all_callbacks(self, path: bytes) -> None:
            if path != self.path and self.prune(path):
                return
            self._add_callback(path)
            if not (self.is_recursive and os.path.isdir(path)):
                return
            for top, dirnames, _ in os.walk(path):  # never follows symlinks
                dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(top, d))
                               and not self.prune(os.path.join(top, d))]
                for name in dirnames:
                    self._add_callback(os.path.join(top, name))

        def _add_callback(self, path: bytes) -> None:  # as watchdog's, plus on_limit
            try:
                wd = self._inotify_fd.add_callback(path, self.event_mask, self._callback, self._id)
            except OSError as exc:
                if exc.errno in LIMIT_ERRNOS:
                    self.on_limit(exc)
                # A vanished subdirectory is fine; the root must be watched.
                if path == self.path:
                    raise
                return
            self._active_callbacks_by_path[path] = wd
            self._active_callbacks_by_watch[wd] = path

    class _PrunedEmitter(InotifyEmitter):
        def __init__(self, *args: object, prune: Prune, on_limit: OnLimit, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self._prune, self._on_limit = prune, on_limit

        def on_thread_start(self) -> None:  # as InotifyEmitter's, with the pruning group
            self._inotify = _PrunedWatchGroup(
                self._inotify_fd, os.fsencode(self.watch.path), is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink, prune=self._prune, on_limit=self._on_limit)


def make_inotify_observer(prune: Prune, on_limit: OnLimit) -> BaseObserver:
    """A recursive inotify observer that adds no kernel watch below dirs where
    ``prune(abs_path)`` and calls ``on_limit(exc)`` when a watch hits a kernel limit.

    Without watchdog 7.x's inotify internals, the plain ``Observer()`` (no pruning,
    limit errors on subdirectories unseen).
    """
    if not CAN_PRUNE:
        log.warning("watch_prune_unavailable", reason="no watchdog 7.x inotify internals")
        return Observer()
    observer = InotifyObserver()
    observer._emitter_class = _PrunedEmitter
    observer._emitter_kwargs = {**observer._emitter_kwargs, "prune": prune, "on_limit": on_limit}
    return observer


def make_polling_observer(prune: Prune, interval_s: float) -> BaseObserver:
    """A polling observer snapshotting the tree every ``interval_s`` seconds; directories
    where ``prune(abs_path)`` are not listed (so not stat'ed either)."""

    def listdir(path: str | None) -> Iterator[os.DirEntry[str]]:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and prune(os.fsencode(entry.path)):
                    continue
                yield entry

    return PollingObserverVFS(os.lstat, listdir, polling_interval=interval_s)
