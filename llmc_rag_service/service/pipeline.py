"""The pipeline parts for one config, shared by ``serve`` and ``enrich``.

:class:`Engine` owns the store, the job queue, the Ollama client, the worker
pool and one :class:`~llmc_rag_service.index.scanner.Scanner` per repo. It knows
nothing of signals, systemd or watching: ``daemon.py`` and ``oneshot.py``
drive it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import structlog

from llmc_rag_service.config import Config, RepoConfig
from llmc_rag_service.enrich.prompt import span_char_budget
from llmc_rag_service.enrich.ollama import OllamaClient
from llmc_rag_service.store.jobs import JobQueue
from llmc_rag_service.index.scanner import Scanner
from llmc_rag_service.store.db import Store
from llmc_rag_service.enrich.workers import Host, WorkerPool

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
        self.clients: list[OllamaClient] = []
        self._retired: list[tuple[WorkerPool, list[OllamaClient]]] = []  # pools retired by reloads
        self.pool = self._new_pool()
        self.scanners: dict[Path, Scanner] = {}
        self.set_repos(config.repos)

    def _new_pool(self) -> WorkerPool:
        """Fresh clients (one per host of ``ollama.hosts`` or ``ollama.url``) and a pool over them."""
        self.clients = [OllamaClient(self.config.ollama, host) for host in self.config.ollama.all_hosts()]
        return WorkerPool(self.store, self.queue, self.clients, self.on_change)

    @property
    def client(self) -> OllamaClient:
        """The first host's client (with one host, the only one)."""
        return self.clients[0]

    def warm_up(self) -> None:
        """Optionally ask every host to load the model now, without waiting (see WorkerPool.warm_up)."""
        self.pool.warm_up()

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

    def replace_client(self, config: Config) -> None:
        """Swap in new Ollama/queue settings without waiting: the old pool is
        retired (its requests in flight finish and store their results in the
        background), a new one starts at once, and spans without an enrichment
        for the (possibly new) model are queued."""
        self.pool.retire()
        self._retired.append((self.pool, self.clients))
        self._reap()
        self.config = config
        self.queue = JobQueue(self.store, config.ollama.model, config.queue.max_attempts)
        self.pool = self._new_pool()
        for scanner in self.scanners.values():
            scanner.queue = self.queue
        with self.store.write() as tx:
            queued = self.queue.enqueue_missing(tx)
        if queued:
            log.info("jobs_queued", count=queued, trigger="config_changed")
        self.pool.start()

    def last_error(self) -> str | None:
        """The current Ollama problem (unreachable, model missing, quarantined),
        or None; with several hosts, each down host's ``url: error``."""
        down = [h for h in self.pool.hosts if h.state != "ok"]
        if len(self.pool.hosts) == 1:
            return down[0].error if down else None
        return "; ".join(f"{h.url}: {h.error}" for h in down) or None

    def ollama_down(self) -> str | None:
        """None while some host can take work; else the first host's state
        (``unreachable``, ``model_missing`` or ``quarantined``), or ``busy``
        when every host's last answer was 503 (its queue is full)."""
        hosts = self.pool.hosts
        if any(h.state == "ok" and not h.busy for h in hosts):
            return None
        return next((h.state for h in hosts if h.state != "ok"), "busy")

    def hung(self) -> str | None:
        """Watchdog health check: a reason if a request is past its deadline
        or a worker thread died."""
        return self.pool.hung() or self.pool.dead()

    def counts(self) -> dict[str, int]:
        """Queue counts plus the number of requests in flight."""
        return {**self.queue.counts(), "in_flight": self.pool.in_flight}

    def close(self, grace_s: float) -> int:
        """Stop the workers (bounded by ``grace_s``), close client and store.
        Returns the number of running jobs returned to pending."""
        returned = self.pool.stop(grace_s)
        self._retired.append((self.pool, self.clients))
        self._reap()
        if self._retired:
            # A worker still inside a request after the grace would get an
            # unmapped "client has been closed" error; its client is left to
            # the garbage collector (the job is already back in the queue).
            log.warning("workers_still_busy", count=sum(p.busy_threads() for p, _ in self._retired))
        self.store.close()
        return returned

    def _reap(self) -> None:
        """Close the clients of retired pools whose last request has ended."""
        for pool, clients in list(self._retired):
            if not pool.busy_threads():
                for client in clients:
                    client.close()
                self._retired.remove((pool, clients))

    def status_line(self, activity: str | None = None) -> str:
        """The one-line STATUS text, e.g. ``enriching: 812 pending, 4 in
        flight, 37 done, 2 failed; ollama ok`` or ``waiting: ollama
        unreachable at URL: connection refused; retry in 20 s``. With several
        hosts the tail lists each: ``ollama 1/2 ok: a:11434 ok, b:11434
        unreachable (connection refused), retry in 20 s``.

        ``activity`` (e.g. ``scanning 2 repos``) is prepended when given.
        """
        self._reap()
        c = self.counts()
        pending = c["pending"] + c["running"]
        # "pending" counts jobs waiting; those being answered are "in flight".
        work = f"{c['pending']} pending, {c['in_flight']} in flight, {c['done']} done, {c['failed']} failed"
        hosts = self.pool.hosts
        head = "waiting" if self.ollama_down() else "enriching" if pending else "idle"
        if len(hosts) == 1:
            tail = self._host_status(hosts[0])
        else:
            ok = sum(h.state == "ok" for h in hosts)
            tail = f"ollama {ok}/{len(hosts)} ok: " + ", ".join(self._host_brief(h) for h in hosts)
        if activity:
            head = f"{activity}, {head}"
        return f"{head}: {work}; {tail}"

    def _host_status(self, host: Host) -> str:
        model = self.config.ollama.model
        if host.state == "ok" and host.busy:
            return f"ollama busy at {host.url} (503, its queue is full); {host.busy} in a row"
        if host.state == "ok":
            return "ollama ok"
        if host.state == "model_missing":
            return f"model {model} missing, run: ollama pull {model}"
        return f"ollama {host.state} at {host.url}: {host.error}; retry in {host.retry_in_s():.0f} s"

    @staticmethod
    def _host_brief(host: Host) -> str:
        name = host.url.split("://", 1)[-1]
        if host.state == "ok":
            return f"{name} ok"
        return f"{name} {host.state} ({(host.error or '')[:60]}), retry in {host.retry_in_s():.0f} s"
