"""Team mode: cache latency, and how many requests and queries a team of daemons costs.

Three parts, each printing a markdown table:

1. **Latency** — one TeamCache on loopback against a table of ``--rows``
   enrichments: p50/p95 of ``lookup`` (all hits, all misses), ``claim`` and
   ``publish``, per batch of ``--batch`` keys. Target: lookup p95 <= 5 ms per
   batch of 100.
2. **Outage** (only with the throwaway cluster) — the server stopped: cost of
   the first operation, of the following ones, and time to recover and drain
   the outbox after it starts again.
3. **Team** — 1, 2 and 4 daemons enrich the same ``--spans`` distinct span
   keys against one Ollama emulator (``--slots`` slots, ``--latency-s`` per
   answer). Reported: total chat requests (target: = distinct spans, + <= 1 %
   on lease expiry), duplicates, wall time until every daemon has every
   result, and database statements per enriched span; with ``serve`` daemons
   also the ``/api/embed`` inputs in total against the distinct texts, and the
   vectors each daemon took from the team cache (``--no-embed``: embeddings off).

``--daemon serve`` (the default) runs real daemons: one ``llmc-rag serve``
process per copy of a real code base of over 2,000 spans (the standard
library's ``email``, ``json`` and ``asyncio``), each with its own state dir
(``bench/team_serve.py``). ``--daemon simulated`` runs a
:class:`SimulatedDaemon` instead: threads that follow the flow of
``llmc_rag_service/team/cache.py`` on ``--spans`` synthetic keys, without
store, scans or prompts (the team cache's cost alone).

Usage (from the repo root): ``python bench/team.py [--daemon serve|simulated] [--daemons 1 2 4] [--dsn DSN]``;
``--parts latency outage team`` picks parts.
Without ``--dsn`` a throwaway cluster is started (llmc_rag_service.testing.postgres).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import random
import statistics
import threading
import time
from collections.abc import Callable
from typing import Protocol

from team_serve import EMBED_MODEL, serve_team_run

import httpx

from llmc_rag_service.enrich.prompt import InvalidAnswer, validate_fields
from llmc_rag_service.logs import configure_logging
from llmc_rag_service.models import Enrichment
from llmc_rag_service.team.cache import TeamCache
from llmc_rag_service.team.keys import EnrichmentKey
from llmc_rag_service.team.settings import TeamSettings
from llmc_rag_service.testing.emulator import OllamaEmulator
from llmc_rag_service.testing.postgres import PostgresCluster

MODEL = "test-model"


def validate_enrichment(fields: object) -> Enrichment | None:
    """The product's schema check as TeamCache's ``validate``."""
    try:
        return validate_fields(fields)
    except InvalidAnswer:
        return None


def enrichment(n: int) -> Enrichment:
    return Enrichment(summary=f"Adds {n}.", inputs=["x"], outputs=[f"x + {n}"], side_effects=[], pitfalls=[],
                      usage=f"f(1) == {1 + n}")


def keys_of(n: int, salt: str = "") -> list[EnrichmentKey]:
    return [EnrichmentKey(hashlib.sha256(f"{salt}{i}".encode()).hexdigest(), MODEL, 1) for i in range(n)]


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``, in the values' unit."""
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def fresh_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` (dropping an old one) through ``admin_dsn``; returns its DSN."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(**{**conninfo_to_dict(admin_dsn), "dbname": name})


# -- part 1: latency -----------------------------------------------------------------
def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    """Wall milliseconds of ``rounds`` calls of ``fn``."""
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def latency(dsn: str, rows: int, batch: int, rounds: int) -> list[dict]:
    cache = TeamCache(dsn, validate=validate_enrichment, producer="bench")
    try:
        present = keys_of(rows)
        for i in range(0, rows, 1000):
            cache.publish([(k, enrichment(j)) for j, k in enumerate(present[i:i + 1000], start=i)])
        absent = keys_of(rows, salt="absent")
        rng = random.Random(1)
        sample = lambda ks: rng.sample(ks, batch)  # noqa: E731
        fresh = iter(keys_of((rounds + 20) * batch * 2, salt="fresh"))
        next_batch = lambda: [next(fresh) for _ in range(batch)]  # noqa: E731
        cases = {
            "lookup (hits)": lambda: cache.lookup(sample(present)),
            "lookup (misses)": lambda: cache.lookup(sample(absent)),
            "claim": lambda: cache.claim(next_batch()),
            "publish": lambda: cache.publish([(k, enrichment(0)) for k in next_batch()]),
        }
        table = []
        for name, fn in cases.items():
            timed(fn, 20)  # warm-up: connections, prepared statements
            ms = timed(fn, rounds)
            table.append({"operation": name, "batch": batch, "rows": rows, "p50_ms": pct(ms, 50),
                          "p95_ms": pct(ms, 95), "max_ms": max(ms)})
        return table
    finally:
        cache.close()


# -- part 2: an outage ---------------------------------------------------------------------
def outage(cluster: PostgresCluster, dsn: str, rounds: int) -> list[dict]:
    """What a stopped server costs the caller: the first operation (bounded by
    the timeouts), the ones after it (breaker open), and the time to recover
    once it is back (probe backoff, then the outbox drains)."""
    cache = TeamCache(dsn, validate=validate_enrichment, producer="bench")
    keys = keys_of(100, salt="outage")
    try:
        cache.start()
        cache.check()
        cache.lookup(keys)
        cluster.stop()
        first = timed(lambda: cache.lookup(keys), 1)
        later = timed(lambda: cache.lookup(keys), rounds)
        publish = timed(lambda: cache.publish([(k, enrichment(0)) for k in keys]), 1)
        started = time.monotonic()
        cluster.start()
        recovered = cache.health.wait_until(True, timeout_s=120)
        recover_s = time.monotonic() - started
        while cache.status()["outbox"] and time.monotonic() - started < 120:
            time.sleep(0.01)  # a benchmark's polling loop, not a test
        drained_s = time.monotonic() - started
    finally:
        cache.close()
    return [{"first op ms": first[0], "later ops p95 ms": pct(later, 95), "publish to outbox ms": publish[0],
             "recovered": recovered, "recover s": recover_s, "outbox drained s": drained_s}]


# -- part 3: a team of daemons ------------------------------------------------------------
class Daemon(Protocol):
    """What the team benchmark needs of one daemon."""

    def start(self) -> None: ...
    def wait_done(self, timeout_s: float) -> bool: ...
    def stop(self) -> int:
        """Stop; returns the database statements this daemon sent."""


class SimulatedDaemon:
    """``workers`` threads enriching ``keys`` through the flow below, each request a real ``/api/chat``
    to the emulator (the span hash as the prompt, so duplicates can be counted there).

    The flow (the one proposed for the daemon, see ``team/cache.py``): look every key up once as
    jobs are queued; a worker claims its next ``claim_batch`` keys in one statement, skipping keys
    whose publication it already heard (NOTIFY); claimed keys are sent and published one by one;
    the rest are fetched later in one lookup per ``fetch_batch``, and what is still missing then
    is waited for (``wait_for``) up to the defer deadline, then claimed again.
    """

    def __init__(self, dsn: str, ollama_url: str, keys: list[EnrichmentKey], workers: int, settings: TeamSettings,
                 seed: int, claim_batch: int = 8, fetch_batch: int = 100):
        self.cache = TeamCache(dsn, validate=validate_enrichment, producer=f"sim{seed}", settings=settings,
                               on_published=self._heard)
        self.url, self.settings = ollama_url, settings
        self.claim_batch, self.fetch_batch = claim_batch, fetch_batch
        self.todo = collections.deque(random.Random(seed).sample(keys, len(keys)))
        self.heard: set[str] = set()
        self.later: list[EnrichmentKey] = []
        self.lock = threading.Lock()
        self.remaining = len(keys)
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def start(self) -> None:
        self.cache.start()
        hits = self.cache.lookup(list(self.todo))  # as jobs are queued: one statement per batch
        self._finish(len(hits))
        self.todo = collections.deque(k for k in self.todo if k not in hits)
        for t in self.threads:
            t.start()

    def wait_done(self, timeout_s: float) -> bool:
        return self.done.wait(timeout_s)

    def stop(self) -> int:
        self.done.set()
        for t in self.threads:
            t.join(10)
        self.cache.close()
        return self.cache.db.queries

    def _heard(self, span_hash: str | None) -> None:
        if span_hash:
            with self.lock:
                self.heard.add(span_hash)

    def _finish(self, n: int) -> None:
        with self.lock:
            self.remaining -= n
            if self.remaining <= 0:
                self.done.set()

    def _next_keys(self) -> list[EnrichmentKey]:
        """Up to ``claim_batch`` keys to claim; keys a teammate published go to ``later``."""
        out: list[EnrichmentKey] = []
        while len(out) < self.claim_batch:
            try:
                key = self.todo.popleft()
            except IndexError:
                break
            with self.lock:
                published = key.span_hash in self.heard
                if published:
                    self.later.append(key)
            if not published:
                out.append(key)
        return out

    def _fetch(self, force: bool) -> None:
        """Look up the keys set aside, once there are ``fetch_batch`` of them (or ``force``)."""
        with self.lock:
            if not self.later or (len(self.later) < self.fetch_batch and not force):
                return
            batch, self.later = self.later, []
        found = self.cache.lookup(batch)
        missing = [k for k in batch if k not in found]
        if missing:
            found.update(self.cache.wait_for(missing, time.monotonic() + self.settings.defer_deadline_s))
        self._finish(len(found))
        self.todo.extend(k for k in batch if k not in found)  # a holder's lease ran out: claim again

    def _work(self) -> None:
        with httpx.Client(timeout=60) as http:
            while not self.done.is_set():
                keys = self._next_keys()
                if not keys:
                    self._fetch(force=True)
                    if not self.todo:
                        return
                    continue
                claimed = self.cache.claim(keys)
                with self.lock:
                    self.later.extend(k for k in keys if k not in claimed)
                for key in sorted(claimed):
                    http.post(self.url + "/api/chat", json={
                        "model": MODEL, "stream": False,
                        "messages": [{"role": "user", "content": key.span_hash}]}).raise_for_status()
                    self.cache.publish([(key, enrichment(0))])
                    self._finish(1)
                self._fetch(force=False)


def team_run(dsn: str, daemons: int, spans: int, slots: int, latency_s: float, workers: int) -> dict:
    keys = keys_of(spans, salt=f"team{daemons}-")
    settings = TeamSettings(lease_s=30.0)
    with OllamaEmulator(num_parallel=slots, latency_s=latency_s) as emu:
        team = [SimulatedDaemon(dsn, emu.url, keys, workers, settings, seed=i) for i in range(daemons)]
        started = time.monotonic()
        for d in team:
            d.start()
        finished = all(d.wait_done(600) for d in team)
        wall_s = time.monotonic() - started
        queries = sum(d.stop() for d in team)
        prompts = [r.json["messages"][0]["content"] for r in emu.requests if r.path == "/api/chat" and r.json]
    counts = collections.Counter(prompts)
    return {"daemons": daemons, "spans": spans, "requests": len(prompts), "distinct": len(counts),
            "duplicates": len(prompts) - len(counts), "finished": finished, "wall_s": wall_s,
            "queries_per_span": queries / spans}


def team_part(args: argparse.Namespace, admin: str, daemons: int) -> dict:
    """One row of part 3: ``daemons`` real or simulated daemons on a fresh database."""
    name = f"llmc_bench_team{daemons}"
    dsn = fresh_database(admin, name)
    if args.daemon == "serve":
        return serve_team_run(dsn, daemons, args.slots, args.latency_s, args.workers, args.embed_model)
    return team_run(dsn, daemons, args.spans, args.slots, args.latency_s, args.workers)


def markdown(rows: list[dict], floats: str = "{:.2f}") -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(floats.format(v) if isinstance(v, float) else str(v) for v in row.values())
                     + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="an existing PostgreSQL (a database 'llmc_bench_*' is created in it)")
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--spans", type=int, default=2000)
    parser.add_argument("--daemons", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workers", type=int, default=4, help="worker threads per daemon (ollama.concurrency)")
    parser.add_argument("--slots", type=int, default=4, help="emulator generation slots (OLLAMA_NUM_PARALLEL)")
    parser.add_argument("--latency-s", type=float, default=0.01)
    parser.add_argument("--daemon", choices=("serve", "simulated"), default="serve",
                        help="real llmc-rag serve processes on copies of a real code base, or simulated daemons")
    parser.add_argument("--no-embed", dest="embed_model", action="store_const", const=None, default=EMBED_MODEL,
                        help="serve daemons without embeddings (search.embed_model null)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the rows of serve daemons with team mode off")
    parser.add_argument("--parts", nargs="+", choices=("latency", "outage", "team"),
                        default=["latency", "outage", "team"])
    args = parser.parse_args()
    configure_logging("warning", "console")
    cluster = None if args.dsn else PostgresCluster()
    try:
        if cluster:
            cluster.start()
        admin = args.dsn or cluster.dsn()
        if "latency" in args.parts:
            print("## Latency (loopback)\n")
            print(markdown(latency(fresh_database(admin, "llmc_bench_latency"), args.rows, args.batch, args.rounds)))
        if cluster and "outage" in args.parts:
            print("\n## Server stopped, then started again (default timeouts: connect 3 s, statement 3 s)\n")
            print(markdown(outage(cluster, fresh_database(admin, "llmc_bench_outage"), args.rounds)))
        if "team" in args.parts:
            print(f"\n## Team of {args.daemon} daemons (emulator: {args.slots} slots, {args.latency_s} s per answer, "
                  f"{args.workers} workers per daemon)\n")
            rows = [team_part(args, admin, n) for n in args.daemons]
            if args.daemon == "serve" and args.baseline:
                rows += [serve_team_run(None, n, args.slots, args.latency_s, args.workers, args.embed_model)
                         for n in sorted({min(args.daemons), max(args.daemons)})]
            print(markdown(rows))
    finally:
        if cluster:
            cluster.close()


if __name__ == "__main__":
    main()
