"""The pipeline parts for one config, shared by ``serve`` and ``enrich``.

:class:`Engine` owns the store, the job queue, the Ollama client, the worker
pool and one :class:`~llmc_rag_service.scanner.Scanner` per repo. It knows
nothing of signals, systemd or watching: ``daemon.py`` and ``oneshot.py``
drive it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import structlog

from llmc_rag_service.config import Config, RepoConfig
from llmc_rag_service.enrichment import span_char_budget
from llmc_rag_service.ollama import OllamaClient
from llmc_rag_service.queue import JobQueue
from llmc_rag_service.scanner import Scanner
from llmc_rag_service.store import Store
from llmc_rag_service.workers import WorkerPool

log = structlog.get_logger(__name__)


class Engine:
    """Store + queue + client + workers + scanners for ``config``.

    Args:
        config: Validated config.
        on_change: Called after job outcomes and host state changes.

    Raises:
        sqlite3.Error: the store cannot be opened or migrated.
    """

    def __init__(self, config: Config, on_change: Callable[[], None] = lambda: None):
        self.config, self.on_change = config, on_change
        self.store = Store(config.db_path)
        self.queue = JobQueue(self.store, config.ollama.model, config.queue.max_attempts)
        recovered = self.queue.recover()
        if recovered:
            log.info("jobs_recovered", count=recovered, reason="left running by a dead process")
        self.client = OllamaClient(config.ollama)
        self.pool = WorkerPool(self.store, self.queue, self.client, on_change)
        self.scanners: dict[Path, Scanner] = {}
        self.set_repos(config.repos)

    def scanner_for(self, repo: RepoConfig) -> Scanner:
        return Scanner(self.store, self.queue, repo.path, repo.exclude,
                       max_file_bytes=self.config.watch.max_file_bytes,
                       max_span_chars=span_char_budget(self.config.ollama.options))

    def set_repos(self, repos: Iterable[RepoConfig]) -> tuple[list[Path], list[Path]]:
        """Make the scanners match ``repos``; returns (added, removed) paths."""
        wanted = {r.path: r for r in repos}
        removed = [p for p in self.scanners if p not in wanted]
        for path in removed:
            del self.scanners[path]
        added = [p for p in wanted if p not in self.scanners]
        for path in added:
            self.scanners[path] = self.scanner_for(wanted[path])
        return added, removed

    def replace_client(self, config: Config, grace_s: float) -> None:
        """Swap in new Ollama/queue settings: drain the pool, start a new one."""
        self.pool.stop(grace_s)
        self.client.close()
        self.config = config
        self.queue = JobQueue(self.store, config.ollama.model, config.queue.max_attempts)
        self.client = OllamaClient(config.ollama)
        self.pool = WorkerPool(self.store, self.queue, self.client, self.on_change)
        for scanner in self.scanners.values():
            scanner.queue = self.queue
        self.pool.start()

    def last_error(self) -> str | None:
        """The current Ollama problem (unreachable, model missing), or None."""
        return self.pool.host.error

    def hung(self) -> str | None:
        """Watchdog health check: a reason if a request is past its deadline."""
        return self.pool.hung()

    def counts(self) -> dict[str, int]:
        """Queue counts plus the number of requests in flight."""
        return {**self.queue.counts(), "in_flight": self.pool.in_flight}

    def close(self, grace_s: float) -> int:
        """Stop the workers (bounded by ``grace_s``), close client and store.
        Returns the number of running jobs returned to pending."""
        returned = self.pool.stop(grace_s)
        self.client.close()
        self.store.close()
        return returned

    def status_line(self, activity: str | None = None) -> str:
        """The one-line STATUS text, e.g. ``enriching: 812 pending, 4 in
        flight, 37 done, 2 failed; ollama ok`` or ``waiting: ollama
        unreachable at URL: connection refused; retry in 20 s``.

        ``activity`` (e.g. ``scanning 2 repos``) is prepended when given.
        """
        c = self.counts()
        host = self.pool.host
        pending = c["pending"] + c["running"]
        work = f"{pending} pending, {c['in_flight']} in flight, {c['done']} done, {c['failed']} failed"
        if host.state == "unreachable":
            head = "waiting"
            tail = f"ollama unreachable at {self.config.ollama.url}: {host.error}; retry in {host.retry_in_s():.0f} s"
        elif host.state == "model_missing":
            head = "waiting"
            tail = f"model {self.config.ollama.model} missing, run: ollama pull {self.config.ollama.model}"
        else:
            head = "enriching" if pending else "idle"
            tail = "ollama ok"
        if activity:
            head = f"{activity}, {head}"
        return f"{head}: {work}; {tail}"
