"""All repos' watchers, as the daemon sees them: start/stop per repo, and one
``poll()`` per main-loop tick that turns file events into indexer work.

The daemon knows nothing of watchdog, debouncing, lost events or git state:
it calls :meth:`Watching.poll` and hands each :class:`Work` item to the
indexer. A watcher whose thread died is restarted here and its repo rescanned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from llmc_rag_service.config import WatchConfig
from llmc_rag_service.ignore import RepoIgnore
from llmc_rag_service.watcher import RepoWatcher

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Work:
    """Indexer work for one repo: ``kind`` is ``full`` (rescan the repo) or
    ``paths`` (re-check ``paths``, relative POSIX paths)."""

    repo: Path
    kind: str
    paths: frozenset[str] = frozenset()


class Watching:
    """The watchers of every repo.

    Args:
        watch: ``watch`` config (debounce and max delay in milliseconds).
    """

    def __init__(self, watch: WatchConfig):
        self.watch = watch
        self.watchers: dict[Path, RepoWatcher] = {}
        self._ignores: dict[Path, RepoIgnore] = {}

    def start(self, repo: Path, ignore: RepoIgnore) -> None:
        """Start watching ``repo`` (its ignore rules are shared with its scanner)."""
        self._ignores[repo] = ignore
        watcher = RepoWatcher(repo, ignore, debounce_ms=self.watch.debounce_ms, max_delay_ms=self.watch.max_delay_ms)
        watcher.start()
        self.watchers[repo] = watcher

    def stop(self, repo: Path) -> None:
        """Stop watching ``repo`` (bounded)."""
        watcher = self.watchers.pop(repo, None)
        self._ignores.pop(repo, None)
        if watcher:
            watcher.stop()

    def stop_all(self) -> None:
        for repo in list(self.watchers):
            self.stop(repo)

    def poll(self) -> list[Work]:
        """Work that is due now, for every repo; call once per main-loop tick."""
        work: list[Work] = []
        for repo, watcher in list(self.watchers.items()):
            if not watcher.is_alive():
                log.error("watcher_died", repo=str(repo))
                ignore = self._ignores[repo]
                self.stop(repo)
                self.start(repo, ignore)
                work.append(Work(repo, "full"))
                continue
            if watcher.take_rescan() or watcher.gitignore_changed():
                work.append(Work(repo, "full"))
            due = watcher.take_due()
            if due:
                work.append(Work(repo, "paths", frozenset(due)))
        return work

    def health(self) -> str | None:
        """Watchdog health check: None while every watcher thread is alive."""
        dead = [str(p) for p, w in self.watchers.items() if not w.is_alive()]
        return f"watcher thread dead: {', '.join(dead)}" if dead else None

    def degraded(self) -> list[str]:
        """Human notes on repos watched in a degraded mode (none yet)."""
        return []
