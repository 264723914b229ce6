"""The two watchdog observers a repo can be watched with, both skipping ignored directories.

* :func:`make_inotify_observer`: inotify, one kernel watch per directory. Ignored
  directories (``node_modules``, ``.git/*`` ...) get no watch: watchdog 7.1 adds one
  per directory even below ignored ones, so the watch group's private
  ``_add_all_callbacks`` is overridden. A watch that cannot be added because of
  the kernel's limits (ENOSPC: ``fs.inotify.max_user_watches``; EMFILE:
  ``fs.inotify.max_user_instances``) is reported to ``on_limit``: watchdog 7.1
  itself silently skips a subdirectory it cannot watch, leaving it unwatched.
  The root's own IN_MOVE_SELF / IN_DELETE_SELF is reported to ``on_root_gone``.
* :func:`make_polling_observer`: the fallback when inotify limits are hit; a
  snapshot of the tree every ``interval_s``, listing no ignored directory.
"""

from __future__ import annotations

import errno
from typing import Any
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
OnRootGone = Callable[[], None]

#: The kernel's inotify limits (Linux proc(5)): read again while a repo polls, so a
#: raised limit brings inotify back without a restart.
LIMIT_FILES = ("/proc/sys/fs/inotify/max_user_watches", "/proc/sys/fs/inotify/max_user_instances")


def inotify_limits() -> tuple[int, ...]:
    """``(max_user_watches, max_user_instances)``; 0 for a value that cannot be read."""
    values = []
    for name in LIMIT_FILES:
        try:
            with open(name, encoding="ascii") as fh:
                values.append(int(fh.read().strip()))
        except (OSError, ValueError):
            values.append(0)
    return tuple(values)


try:  # watchdog 7.x inotify internals, for pruning; absent on other platforms/versions
    from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup
    from watchdog.observers.inotify_c import InotifyConstants

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
        on_root_gone: OnRootGone = field(default=lambda: None)

        def on_event(self, event: Any) -> None:  # as watchdog's, plus the root's own move/delete
            # watchdog 7.1 ignores IN_MOVE_SELF ("todo") and its IN_DELETE_SELF stops the
            # emitter; either way the watched tree is no longer the one at the path.
            if (event.is_move_self or event.is_delete_self) and \
                    self._active_callbacks_by_watch.get(event.wd) == self.path:
                self.on_root_gone()
            super().on_event(event)

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
        def __init__(self, *args: object, prune: Prune, on_limit: OnLimit, on_root_gone: OnRootGone,
                     **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self._prune, self._on_limit, self._on_root_gone = prune, on_limit, on_root_gone

        def get_event_mask_from_filter(self) -> Any:  # plus IN_MOVE_SELF, which watchdog never asks for
            mask = super().get_event_mask_from_filter()
            return mask | InotifyConstants.IN_MOVE_SELF

        def on_thread_start(self) -> None:  # as InotifyEmitter's, with the pruning group
            self._inotify = _PrunedWatchGroup(
                self._inotify_fd, os.fsencode(self.watch.path), is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink, prune=self._prune, on_limit=self._on_limit,
                on_root_gone=self._on_root_gone)


def make_inotify_observer(prune: Prune, on_limit: OnLimit, on_root_gone: OnRootGone = lambda: None) -> BaseObserver:
    """A recursive inotify observer that adds no kernel watch below dirs where
    ``prune(abs_path)``, calls ``on_limit(exc)`` when a watch hits a kernel limit,
    and ``on_root_gone()`` when the watched root itself is moved or deleted
    (IN_MOVE_SELF / IN_DELETE_SELF on its watch: the watch follows the inode, while
    results are filed under the path).

    Without watchdog 7.x's inotify internals, the plain ``Observer()`` (no pruning,
    limit errors on subdirectories unseen).
    """
    if not CAN_PRUNE:
        log.warning("watch_prune_unavailable", reason="no watchdog 7.x inotify internals")
        return Observer()
    observer = InotifyObserver()
    observer._emitter_class = _PrunedEmitter
    observer._emitter_kwargs = {**observer._emitter_kwargs, "prune": prune, "on_limit": on_limit,
                                "on_root_gone": on_root_gone}
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
