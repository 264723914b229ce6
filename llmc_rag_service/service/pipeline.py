"""The one wiring of the pipeline, used by ``serve``, ``enrich``, tests and benchmarks.

:class:`Pipeline` owns, for one config: the store, the job queue, the Ollama
clients and worker pool (``enrich/``), one scanner per repo and the scan
scheduler thread (``index/``), and the watchers (``watch/``). It knows nothing
of signals or systemd: :mod:`~llmc_rag_service.service.daemon` and
:mod:`~llmc_rag_service.service.oneshot` drive it, and callers use its methods
instead of reaching into its parts.

Threads
-------
* the caller's thread (the daemon's main loop, or ``enrich``'s wait loop):
  calls :meth:`Pipeline.drain_events`, the views (:meth:`counts`,
  :meth:`status_line`, :meth:`health`) and :meth:`apply_config`. It owns
  ``config``, ``scanners`` and the watch set; nothing else writes them.
* ``scan-scheduler`` (one thread, :class:`~llmc_rag_service.index.scheduler.ScanScheduler`):
  runs every scan, one at a time; reads ``scanners`` through a lookup (a dict
  read, atomic under the GIL; a repo removed by a reload is simply skipped).
* ``worker-N`` (``ollama.concurrency`` threads per host,
  :class:`~llmc_rag_service.enrich.workers.WorkerPool`): claim jobs, call
  Ollama, store results. Their shared counters (``done``, ``failed``, host
  states) are written under the pool's lock.
* ``worker-N`` of the embedding lane (``search.embed_model`` set;
  :class:`~llmc_rag_service.service.embed_lane.EmbedLane`): claim ``embed``
  jobs in batches, call ``/api/embed``, store vectors; counters under its
  pool's lock. An enrichment stored wakes them (the span is embedded again).
* watchdog observer threads (one per repo, inside ``watchdog``): only put
  events into the debouncers, under each debouncer's lock.
* team mode (``team.postgres`` set): ``team-feeder`` looks queued jobs up in
  the team cache and stores teammates' results; the cache's own threads
  (``llmc-team`` maintenance, ``llmc-team-listen``) renew claims, drain the
  outbox and hear publications (:mod:`~llmc_rag_service.service.teamgate`).
* The store gives each thread its own SQLite connection; every write is one
  ``BEGIN IMMEDIATE`` transaction, so threads never share a cursor.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import structlog

from llmc_rag_service.clock import SYSTEM, Clock
from llmc_rag_service.config import Config, RepoConfig, SecretsConfig
from llmc_rag_service.enrich.embed_text import INPUT_VERSION
from llmc_rag_service.enrich.ollama import OllamaClient
from llmc_rag_service.enrich.outages import HostOutages
from llmc_rag_service.enrich.prompt import chat_client, span_char_budget
from llmc_rag_service.enrich.workers import WorkerPool
from llmc_rag_service.index.redact import Redactor
from llmc_rag_service.index.scanner import Scanner
from llmc_rag_service.index.scheduler import ScanScheduler
from llmc_rag_service.models import Enrichment
from llmc_rag_service.service.embed_lane import EmbedLane
from llmc_rag_service.service.notify import Degraded
from llmc_rag_service.service.statusline import render
from llmc_rag_service.service.teamgate import TeamGate
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.faults import StoreBusy, StoreUnusable
from llmc_rag_service.store.secret_audit import reread_files_for
from llmc_rag_service.store.jobs import JobQueue, QueueSet
from llmc_rag_service.team.errors import TeamError
from llmc_rag_service.team.settings import TeamSettings, redact_dsn
from llmc_rag_service.watch.watchset import WatchSet, Work

log = structlog.get_logger(__name__)

#: Seconds a reload's store write may wait for the write lock on the main loop's
#: thread (another process may hold it for long); a busy store is tried again.
RELOAD_STORE_WAIT_S = 2.0
#: Seconds each store write of a stop (running jobs back to pending, the last
#: meta) may wait for the write lock: past it, jobs still marked running name
#: this process and the next start returns them.
STOP_STORE_WAIT_S = 2.0


class Pipeline:
    """Store + queue + Ollama clients + workers + scanners + scan scheduler +
    watchers for ``config`` (see the module docstring for its threads).

    Args:
        config: Validated config.
        on_change: Called (from any thread) after job outcomes, host state
            changes and scans: "the STATUS line may have changed".
        on_activity: Called (from an observer thread) when a file event arrives.
        settle_s: Quiet seconds after a ``.git/`` event before held events go
            out (tests shorten it); default the git gate's.
        poll_interval_s: Snapshot interval of the polling fallback, seconds.
        team_settings: Team cache timeouts and lease (tests shorten them);
            default: the library's, with ``team.lease_s``.
        clock: Time of the job queue, the workers and the watchers (tests pass
            a manual one; see :mod:`llmc_rag_service.clock`).

    Nothing runs until :meth:`start_workers`, :meth:`start_scheduler` or
    :meth:`watch` is called; :meth:`close` stops what was started.

    Raises:
        StoreUnusable: the store cannot be opened or migrated (corrupt,
            another application's, read-only, full).
        sqlite3.OperationalError: the store is locked past every wait.
    """

    def __init__(self, config: Config, on_change: Callable[[], None] = lambda: None,
                 on_activity: Callable[[], None] | None = None, *,
                 settle_s: float | None = None, poll_interval_s: float | None = None, clock: Clock = SYSTEM,
                 team_settings: TeamSettings | None = None):
        self.config, self.on_change, self.clock = config, on_change, clock
        self.store = Store(config.db_path)
        self.queue = JobQueue(self.store, config.ollama.model, config.queue.max_attempts, clock)
        recovered = self.queue.recover(every_kind=True)
        if recovered:
            log.info("jobs_recovered", count=recovered, reason="left running by a dead process")
        self.redactor = self._redactor_for(config.secrets)
        self._team_settings = team_settings
        self.team_error: str | None = None
        self.team = self._new_team(config)
        self.clients: list[OllamaClient] = []
        self._retired: list[tuple[WorkerPool, list[OllamaClient]]] = []  # pools retired by reloads
        self._embeds_on = False  # the embedding lane's workers were started (start_embeddings)
        self.embeds: EmbedLane | None = None
        self.outages = HostOutages()  # both lanes' pools: one error line per host outage
        self.pool = self._new_pool()
        self.scanners: dict[Path, Scanner] = {}
        self.set_repos(config.repos)
        self.scheduler = ScanScheduler(self.scanners.get, on_jobs=self._on_jobs, on_change=on_change)
        watch_args = {} if settle_s is None else {"settle_s": settle_s}
        self.watches = WatchSet(config.watch, poll_interval_s=poll_interval_s, on_activity=on_activity,
                                clock=clock, **watch_args)
        self._workers_on = False
        self._missing_due = self._missing_warned = False  # see queue_missing()

    def _new_pool(self) -> WorkerPool:
        """Fresh clients (one per host of ``ollama.hosts`` or ``ollama.url``) and a
        pool over them; the embedding lane anew (None when ``search.embed_model`` is null)."""
        self.clients = [chat_client(self.config.ollama, host) for host in self.config.ollama.all_hosts()]
        model = self.config.search.embed_model
        team = self.team.embed_gate(model, INPUT_VERSION) if self.team is not None and model else None
        self.embeds = EmbedLane(self.store, self.config, self.on_change, self.clock, team,
                                self.outages) if model else None
        # A stored enrichment improves the span's embedded text: re-embed it (same transaction).
        self.queue.on_result = self.embeds.queue.refresh if self.embeds else None
        return WorkerPool(self.store, self.queue, self.clients, self._on_outcome, clock=self.clock,
                          gate=self.team, redact_answer=self.redact_answer, outages=self.outages)

    def _scan_queue(self) -> QueueSet:
        """What scans fill: the enrichment queue and, when on, the embedding queue."""
        return QueueSet(self.queue, self.embeds.queue if self.embeds else None)

    def _on_outcome(self) -> None:
        self.on_change()
        if self.embeds:
            self.embeds.pool.notify_work()

    def _redactor_for(self, secrets: SecretsConfig) -> Redactor:
        """The secret redaction for ``secrets.allow`` (one, shared by every scanner
        and worker: one verdict cache). When the list differs from the one the
        stored spans were cut with, every file is read and cut again by its next scan."""
        redactor = Redactor(secrets.allow)
        allow_key = hashlib.sha256(json.dumps(list(secrets.allow)).encode()).hexdigest()
        marked = reread_files_for(self.store, allow_key)
        if marked:  # a new store has nothing to read again: no line that says something changed
            log.info("files_marked_for_reread", reason="secrets.allow changed", files=marked)
        return redactor

    def redact_answer(self, enrichment: Enrichment, path: str, first_line: int) -> tuple[Enrichment, int]:
        """The workers' answer redaction (``enrich/`` may not import ``index/``):
        see :meth:`~llmc_rag_service.index.redact.Redactor.redact_enrichment`."""
        return self.redactor.redact_enrichment(enrichment, path, first_line)

    def _on_jobs(self) -> None:
        self.pool.notify_work()
        if self.embeds:
            self.embeds.pool.notify_work()
        if self.team is not None:
            self.team.notify_queued()

    def _new_team(self, config: Config) -> TeamGate | None:
        """The team gate for ``config.team`` (not started), or None: team mode
        off, or the ``[postgres]`` extra missing (said once; the daemon works alone)."""
        self.team_error = None
        if config.team.postgres is None:
            return None
        settings = self._team_settings or TeamSettings(lease_s=config.team.lease_s)
        try:
            # _on_outcome: a teammate's enrichment stored re-queues the span's embedding (wake that lane).
            return TeamGate(config.team.postgres, self.store, self.queue, settings, self._on_outcome,
                            on_work=lambda: self.pool.notify_work(), clock=self.clock)
        except TeamError as err:
            self.team_error = str(err)
            log.error("team_unreachable", url=redact_dsn(config.team.postgres), kind=err.kind, error=str(err))
            return None


    @property
    def client(self) -> OllamaClient:
        """The first host's client (with one host, the only one)."""
        return self.clients[0]

    # -- running ----------------------------------------------------------
    def start_workers(self, embeddings: bool = True) -> None:
        """Start the worker threads (and team mode's): queued jobs go to Ollama from now on.
        ``embeddings=False`` leaves the embedding lane for :meth:`start_embeddings`."""
        self._workers_on = True
        if self.team is not None:
            self.team.start()
        self.pool.start()
        if embeddings:
            self.start_embeddings()

    def start_embeddings(self) -> None:
        """Start the embedding lane's workers, once (a no-op without ``search.embed_model``)."""
        if self.embeds and not self._embeds_on:
            self._embeds_on = True
            self.embeds.pool.start()

    def start_scheduler(self) -> None:
        """Start the scan-scheduler thread (needed by :meth:`watch` and :meth:`drain_events`)."""
        self.scheduler.start()

    def watch(self, repos: Iterable[RepoConfig] | None = None, *, catch_up: bool = True,
              on_repo: Callable[[int, int, Path], None] = lambda i, n, path: None,
              stop: Callable[[], bool] = lambda: False) -> None:
        """Watch each repo (returns once its watches are in place), then queue
        its catch-up scan on the scheduler unless ``catch_up`` is False.
        ``on_repo(i, n, path)`` is called before each (1-based); once ``stop()``
        is true no further repo is started (SIGTERM during a long start)."""
        chosen = list(self.config.repos if repos is None else repos)
        for i, repo in enumerate(chosen, 1):
            if stop():
                log.info("watch_start_stopped", remaining=len(chosen) - i + 1)
                return
            on_repo(i, len(chosen), repo.path)
            started = time.monotonic()
            self.watches.start(repo.path, self.scanners[repo.path].ignore)
            log.info("repo_watched", repo=str(repo.path), duration_s=round(time.monotonic() - started, 3))
            # A missing root was said once (repo_unwatchable); its full scan comes when it is back.
            if catch_up and self.watches.states().get(repo.path) != "missing":
                self.scheduler.put_full(repo.path)

    def drain_events(self) -> list[Work]:
        """Hand the watchers' due work to the scheduler; returns it. Call once per loop turn."""
        work = self.watches.poll()
        for item in work:
            self.scheduler.put(item)
        return work

    def scan_all(self) -> None:
        """Full scan of every repo now, on the caller's thread (``enrich``)."""
        for scanner in self.scanners.values():
            scanner.full_scan()

    def requeue_failed(self) -> int:
        """Give the dead-lettered jobs of this config's repos a fresh start; returns how many."""
        repo_ids = [s.repo_id for s in self.scanners.values()]
        return self.queue.requeue_failed(repo_ids) + (self.embeds.queue.requeue_failed(repo_ids) if self.embeds else 0)

    def next_due_s(self) -> float | None:
        """Seconds until watcher work is due (None: nothing pending)."""
        return self.watches.next_due_s()

    def activity(self) -> str | None:
        """What the scheduler and watchers are doing, e.g. ``scanning repo`` or a git hold."""
        activity = self.scheduler.busy
        if self.scheduler.items.qsize() and not activity:
            activity = "scanning"
        holding = self.holding()
        if holding:
            activity = f"{activity}, {holding}" if activity else holding
        return activity

    def health(self) -> dict[str, Callable[[], str | None]]:
        """The watchdog health checks: name -> check (None when healthy, else the reason)."""
        return {
            "watchers": self.watches.health,
            "indexer": lambda: None if self.scheduler.is_alive() else "scan scheduler thread died",
            "workers": self.hung,
            "store": self.store_health,
            "team": lambda: self.team.health() if self.team is not None else None,
        }

    def store_health(self) -> str | None:
        """Watchdog check of the store: None while a write can be taken; a
        pausing fault (disk full, read-only) or the write lock held by another
        process as :class:`Degraded` (work waits and resumes by itself; a
        restart would not help, and a lock held past WatchdogSec must not get
        the daemon killed); else the reason."""
        reason = self.store.writable()  # also notices when a paused store can write again
        fault = self.store.fault
        if fault is not None:
            return Degraded(str(fault)) if fault.pauses else str(fault)
        if isinstance(reason, StoreBusy):
            return Degraded(str(reason))
        return reason

    def store_fault(self) -> StoreUnusable | None:
        """The store fault in force (work is paused while it lasts), or None."""
        return self.store.fault

    def check_store(self) -> None:
        """Raise the fatal store fault in force: the state file deleted,
        replaced (its identity is checked now) or corrupt.

        Raises:
            StoreUnusable: ``StoreReplaced`` or ``StoreCorrupt``.
        """
        self.store.check()

    def apply_config(self, old: Config, new: Config) -> dict[str, list[str]]:
        """Apply ``new`` over ``old`` (a reload): Ollama/queue settings (a new
        client and worker pool), repos, watch settings and ``secrets.allow`` (every
        repo restarted, its files cut again). A repo whose scanner or watcher
        settings changed is restarted: stopped, then added anew.
        Returns what changed: ``sections``, ``added``, ``removed``, ``restarted``."""
        if new.team != old.team:
            self.replace_team(new)
        if new.ollama != old.ollama or new.queue != old.queue or new.search != old.search or new.team != old.team:
            self.replace_client(new)
        self.config = new
        sections = [name for name in ("ollama", "queue", "search", "watch", "logging", "team", "secrets")
                    if getattr(new, name) != getattr(old, name)]
        if new.secrets != old.secrets:
            self.redactor = self._redactor_for(new.secrets)
        rebuild_all = (new.watch != old.watch or new.ollama.options != old.ollama.options
                       or new.secrets != old.secrets)
        old_repos = {r.path: r for r in old.repos}
        restart = [r.path for r in new.repos if r.path in old_repos and (rebuild_all or old_repos[r.path] != r)]
        kept = [r for r in new.repos if r.path in old_repos and r.path not in restart]
        _, removed = self.set_repos(kept, RELOAD_STORE_WAIT_S)
        for path in removed:
            self.watches.stop(path)
        self.watches.watch = new.watch
        added, _ = self.set_repos(new.repos, RELOAD_STORE_WAIT_S)
        self.drop_nested(new.repos, RELOAD_STORE_WAIT_S)
        self.watch([r for r in new.repos if r.path in added])
        gone = [p for p in removed if p not in restart]
        return {"sections": sections, "added": [str(p) for p in added if p not in restart],
                "removed": [str(p) for p in gone], "restarted": [str(p) for p in restart]}

    def warm_up(self) -> None:
        """Optionally ask every host to load the model now, without waiting (see WorkerPool.warm_up)."""
        self.pool.warm_up()

    def scanner_for(self, repo: RepoConfig) -> Scanner:
        return Scanner(self.store, self._scan_queue(), repo.path, repo.exclude,  # type: ignore[arg-type]
                       max_file_bytes=self.config.watch.max_file_bytes,
                       max_span_chars=span_char_budget(self.config.ollama.options), redactor=self.redactor)

    def set_repos(self, repos: Iterable[RepoConfig],
                  busy_timeout_s: float | None = None) -> tuple[list[Path], list[Path]]:
        """Make the scanners match ``repos``; returns (added, removed) paths. A
        new repo's row waits at most ``busy_timeout_s`` for the write lock (a
        reload: :data:`RELOAD_STORE_WAIT_S`, on the main loop's thread)."""
        wanted = {r.path: r for r in repos}
        removed = [p for p in self.scanners if p not in wanted]
        for path in removed:
            del self.scanners[path]
        added = [p for p in wanted if p not in self.scanners]
        for path in added:
            self.store.repo_id(path, busy_timeout_s)  # the scanner then finds its row
            self.scanners[path] = self.scanner_for(wanted[path])
        return added, removed

    def drop_nested(self, repos: Iterable[RepoConfig], busy_timeout_s: float | None = None) -> None:
        """Drop from the store each repo no longer configured that lies inside a
        configured one (see Store.drop_repos_inside): the outer repo's scan indexes its files now."""
        for path in self.store.drop_repos_inside([r.path for r in repos], busy_timeout_s):
            log.info("nested_repo_dropped", repo=str(path), reason="not configured; inside a configured repo")

    def replace_client(self, config: Config) -> None:
        """Swap in new Ollama/queue settings without waiting: the old pool is
        retired (its requests in flight finish and store their results in the
        background), a new one starts at once, and spans without an enrichment
        for the (possibly new) model are queued."""
        for pool, clients in self._lanes():
            pool.retire()
            self._retired.append((pool, clients))
        self.reap_retired()
        self.config = config
        self.queue = JobQueue(self.store, config.ollama.model, config.queue.max_attempts, self.clock)
        if self.team is not None:
            self.team.queue = self.queue
        self.pool = self._new_pool()
        scan_queue = self._scan_queue()
        for scanner in self.scanners.values():
            scanner.queue = scan_queue  # type: ignore[assignment]
        if self.team is not None and self._workers_on:
            self.team.start()
        for pool, _ in self._lanes():
            pool.start()
        # After the new pools run (a store held by another process must not leave
        # none), and never a long wait on the main loop's thread: queue_missing()
        # tries again every loop turn while the store is busy.
        self._missing_due = True
        self.queue_missing()

    def queue_missing(self) -> None:
        """If a reload left it due: queue the spans without an enrichment for the
        (possibly new) model, waiting at most :data:`RELOAD_STORE_WAIT_S` for the
        store's write lock; when it is busy, the daemon's next loop turn tries again."""
        if not self._missing_due:
            return
        try:
            with self.store.write(busy_timeout_s=RELOAD_STORE_WAIT_S) as tx:
                queued = self._scan_queue().enqueue_missing(tx)
        except (sqlite3.OperationalError, StoreUnusable) as exc:
            if not self._missing_warned:  # once per wait, not every loop turn
                log.warning("jobs_not_queued_yet", trigger="config_changed", error=str(exc))
                self._missing_warned = True
            return
        self._missing_due = self._missing_warned = False
        if queued:
            log.info("jobs_queued", count=queued, trigger="config_changed")
            for pool, _ in self._lanes():
                pool.notify_work()  # idle workers would look again only after IDLE_CLAIM_WAIT_S

    def _lanes(self) -> list[tuple[WorkerPool, list[OllamaClient]]]:
        """The worker pools in force with their clients: enrichment's, then embedding's."""
        return [(self.pool, self.clients)] + ([(self.embeds.pool, self.embeds.clients)] if self.embeds else [])

    def replace_team(self, config: Config) -> None:
        """Close the team gate and make one for ``config.team`` (a reload);
        results of requests still in flight wait in the outbox for the new one.
        Call :meth:`replace_client` next: the new pool must use the new gate."""
        if self.team is not None:
            self.team.close()
        self.team = self._new_team(config)

    def last_error(self) -> str | None:
        """The current Ollama problem (unreachable, model missing, quarantined),
        or None; with several hosts, each down host's ``url: error``; with
        enrichment fine, the embedding lane's problem (``embeddings: ...``)."""
        down = [h for h in self.pool.hosts if h.state != "ok"]
        if len(self.pool.hosts) == 1 and down:
            return down[0].error
        chat = "; ".join(f"{h.url}: {h.error}" for h in down) or None
        embed_down = [h for h in self.embeds.pool.hosts if h.state != "ok"] if self.embeds else []
        return chat or (f"embeddings: {embed_down[0].error}" if embed_down else None)

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
        return self.pool.hung() or self.pool.dead() or (self.embeds.hung() if self.embeds else None)

    def counts(self) -> dict[str, int]:
        """Queue counts plus the number of requests in flight."""
        return {**self.queue.counts(), "in_flight": self.pool.in_flight}

    def in_flight(self) -> int:
        """Requests being answered now, all hosts together (reads no store)."""
        return self.pool.in_flight

    def finished(self) -> int:
        """Jobs (enrichment and embedding) this pipeline finished (done, dead-lettered,
        or taken from the team cache) since it started."""
        return sum(self.finished_per_lane())

    def finished_per_lane(self) -> tuple[int, int]:
        """(enrichment jobs, embedding jobs) this pipeline finished since it
        started, as :meth:`finished` counts them."""
        enriched = self.pool.done + self.pool.failed + (self.team.hits if self.team is not None else 0)
        return enriched, self.embeds.finished() if self.embeds else 0

    def embed_counts(self) -> dict[str, int] | None:
        """The embedding lane's counts (see :meth:`EmbedLane.counts`), None when it is off."""
        return self.embeds.counts() if self.embeds else None

    def embeds_left(self) -> int:
        """Embedding jobs still to do that can be done: 0 when the lane is off or
        its model is missing (nothing to wait for until someone pulls it)."""
        if self.embeds is None or self.embeds.state() == "model_missing":
            return 0
        return self.embeds.remaining()

    def embeds_down(self) -> str | None:
        """Why no host can embed now (as :meth:`ollama_down`), None when it can or the lane is off."""
        return self.embeds.state() if self.embeds else None

    def team_status(self) -> dict[str, Any] | None:
        """Team mode's ``{url, reachable, hits, published, outbox, deferred,
        last_error, queries, embed_hits, embed_published}`` (see :meth:`TeamGate.status`), or None when it is off."""
        if self.config.team.postgres is None:
            return None
        if self.team is None:  # the [postgres] extra is missing
            return {"url": redact_dsn(self.config.team.postgres), "reachable": False, "hits": 0, "published": 0,
                    "outbox": 0, "deferred": 0, "last_error": self.team_error, "queries": 0, "embed_hits": 0,
                    "embed_published": 0}
        return self.team.status()

    def flush_team(self) -> int:
        """Publish what waits in the team outbox now if the database answers
        (``TeamCache.flush``); returns what still waits (0 with team mode off)."""
        return self.team.cache.flush() if self.team is not None else 0

    def set_meta(self, busy_timeout_s: float | None = None, **values: str | None) -> None:
        """Record daemon facts (``daemon_pid``, ``daemon_status``…) for ``status``
        to read, waiting at most ``busy_timeout_s`` seconds for the write lock.

        Raises:
            sqlite3.OperationalError: the store is locked past the wait.
            StoreUnusable: the store cannot take the write (full, replaced…).
        """
        self.store.set_meta(busy_timeout_s=busy_timeout_s, **values)

    def holding(self) -> str | None:
        """The git hold in force, e.g. ``holding 30 changes while git runs in repo``, or None."""
        return self.watches.holding()

    def degraded(self) -> list[str]:
        """The watchers' degraded notes (``degraded: polling /repo (…)``)."""
        return self.watches.degraded()

    def repo_states(self) -> dict[str, str]:
        """Repo path -> ``ok`` | ``missing`` | ``polling`` (``status --json`` ``state``)."""
        return {str(path): state for path, state in self.watches.states().items()}

    def close(self, grace_s: float, join_s: float = 5.0, meta: dict[str, str | None] | None = None) -> int:
        """Stop in a fixed order: watchers, the scheduler (waiting up to
        ``join_s`` seconds for its current file), the workers (in-flight
        requests of every lane get ``grace_s`` seconds from here, together: one
        deadline, not one grace per lane), ``meta`` written to the store, then
        clients and store closed. Returns the number of running jobs returned
        to pending."""
        grace_ends = time.monotonic() + (grace_s if self._workers_on else 0.0)
        self.watches.stop_all()
        if self.scheduler.is_alive():
            self.scheduler.stop()
            self.scheduler.join(join_s)
            if self.scheduler.is_alive():
                log.warning("indexer_still_running", waited_s=join_s)
        returned = 0
        for pool, clients in self._lanes():
            try:
                returned += pool.stop(grace_ends, STOP_STORE_WAIT_S)
            except (StoreUnusable, sqlite3.Error) as exc:
                # Jobs still marked running name this process: the next start
                # returns them to pending (the pid is dead by then).
                log.warning("jobs_not_returned", error=str(exc))
            self._retired.append((pool, clients))
        if self.team is not None:
            self.team.close()
        self.reap_retired()
        if self._retired:
            # A worker still inside a request after the grace would get an
            # unmapped "client has been closed" error; its client is left to
            # the garbage collector (the job is already back in the queue).
            log.warning("workers_still_busy", count=sum(p.busy_threads() for p, _ in self._retired))
        if meta and (self.store.fault is None or self.store.fault.pauses):
            try:
                self.store.set_meta(STOP_STORE_WAIT_S, **meta)
            except (StoreUnusable, sqlite3.Error) as exc:
                log.warning("meta_not_stored", error=str(exc))
        self.store.close()
        if self.store.dropped:  # the old file's WAL must not be replayed into the new one
            log.info("stale_wal_moved", path=str(self.store.path), moved_to=self.store.dropped)
        return returned

    def reap_retired(self) -> None:
        """Close the clients of retired pools whose last request has ended (the
        daemon's loop calls this every turn: an idle daemon computes no STATUS,
        and a reload's old connections must not stay open until the next job)."""
        for pool, clients in list(self._retired):
            if not pool.busy_threads():
                for client in clients:
                    client.close()
                self._retired.remove((pool, clients))

    def status_line(self, activity: str | None = None) -> str:
        """The one-line STATUS text (see :func:`~llmc_rag_service.service.statusline.render`);
        ``activity`` (e.g. ``scanning repo``) is prepended when given, and
        before it ``paused: <reason>; `` while a store fault lasts (e.g. ``paused:
        no space for the state in /var/lib/llmc-rag (12.0 KiB free): …``)."""
        if self.embeds is None:
            left, note = 0, None
        else:  # one count of the embedding jobs for both parts
            remaining = self.embeds.remaining()
            left = 0 if self.embeds.state() == "model_missing" else remaining
            note = self.embeds.note(remaining)
        text = render(self.counts(), self.pool.hosts, self.config.ollama.model, self.ollama_down(), activity,
                      left, note, team=self.team_status())
        fault = self.store.fault
        return f"paused: {fault.reason}; {text}" if fault is not None else text
