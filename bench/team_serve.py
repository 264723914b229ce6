"""Team mode with real daemons: N ``llmc-rag serve`` processes on copies of one real code base.

Used by ``bench/team.py --daemon serve`` (part 3). Each daemon is a real
``llmc-rag serve`` subprocess with its own state dir and its own copy of the
code base (the standard library's ``email``, ``json``, ``asyncio`` and
``http`` packages, over 2,000 spans), ``team.postgres`` pointing at the bench
database, all against one in-process Ollama emulator. Measured:

* requests: ``/api/chat`` requests the emulator received, against the distinct
  spans (target: equal, + <= 1 % on lease expiry);
* wall s: from starting the processes until every daemon's store has every span
  enriched (``status --json``), scans included;
* queries per span: statements all daemons sent to the team database
  (``status --json``'s ``team.queries``, counted by each daemon, probes and the
  listener included) per distinct span — the extra load team mode puts on PostgreSQL;
* hits: jobs each daemon took from the team cache (``status --json``'s ``team.hits``);
* with embeddings on (``search.embed_model``, the default): ``/api/embed``
  inputs the emulator received in total against the distinct texts among them
  (each span is embedded as code alone, then again with its enrichment's
  summary once that lands), and the vectors each daemon took from the team
  cache (``team.embed_hits``). Target: inputs = distinct texts (claims split
  the texts between daemons started together).

Baseline rows run the same daemons with team mode off.
"""

from __future__ import annotations

import collections
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmc_rag_service.service.pipeline import Pipeline
from llmc_rag_service.service.status import status_report
from llmc_rag_service.testing.emulator import OllamaEmulator
from llmc_rag_service.testing.repos import make_config

#: The real code base: standard-library packages, copied without their tests.
SOURCES = ("email", "json", "asyncio", "http")
#: The embedding model the daemons use (installed in the emulator), unless ``--no-embed``.
EMBED_MODEL = "nomic-embed-text"
#: Longest a run may take before the benchmark gives up, seconds.
RUN_TIMEOUT_S = 900.0


def copy_code_base(dest: Path) -> Path:
    """Copy :data:`SOURCES` under ``dest`` (the same relative paths in every copy)."""
    for name in SOURCES:
        package = Path(importlib.import_module(name).__file__).parent
        shutil.copytree(package, dest / name, ignore=shutil.ignore_patterns("__pycache__", "test", "tests"))
    return dest


def count_work(home: Path, url: str) -> tuple[int, int]:
    """(spans, distinct spans) of the code base: one scan into a scratch store, no request sent."""
    config = make_config(home, url, [copy_code_base(home / "repo")], logging={"level": "warning"})
    pipeline = Pipeline(config)
    try:
        pipeline.scan_all()
        return status_report(config)["totals"]["spans"], pipeline.counts()["pending"]
    finally:
        pipeline.close(0.0)


class ServeDaemon:
    """One ``llmc-rag serve`` on its own copy of the code base and its own state dir."""

    def __init__(self, home: Path, url: str, dsn: str | None, concurrency: int, embed_model: str | None):
        self.home = home
        repo = copy_code_base(home / "repo")
        self.config = make_config(home, url, [repo], team={"postgres": dsn}, search={"embed_model": embed_model},
                                  ollama={"concurrency": concurrency}, logging={"level": "warning", "format": "json"})
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "llmc_rag_service", "serve", "-c", str(self.config.source)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.home / "serve.log", "ab"),
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def report(self) -> dict:
        return status_report(self.config)

    def done(self, spans: int) -> bool:
        """Every span enriched and, with embeddings on, embedded with no embedding
        job left (the daemon's STATUS says ``idle``)."""
        report = self.report()
        totals, status = report["totals"], report["daemon"]["status"] or ""
        embedded = not self.config.search.embed_model or (totals["embedded"] == spans and status.startswith("idle:"))
        return totals["spans"] == spans and totals["pending"] == 0 and embedded

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def serve_team_run(dsn: str | None, daemons: int, slots: int, latency_s: float, concurrency: int,
                   embed_model: str | None = EMBED_MODEL) -> dict:
    """One run of ``daemons`` serve processes (``dsn`` None: team mode off, the
    baseline; ``embed_model`` None: no embeddings); returns a row of the results table."""
    embed_models = [embed_model] if embed_model else []
    with OllamaEmulator(num_parallel=slots, latency_s=latency_s, embed_models=embed_models) as emu, \
            tempfile.TemporaryDirectory(prefix="llmc-bench-team-") as tmp:
        spans, distinct = count_work(Path(tmp) / "count", emu.url)
        team = [ServeDaemon(Path(tmp) / f"dev{i}", emu.url, dsn, concurrency, embed_model) for i in range(daemons)]
        started = time.monotonic()
        for daemon in team:
            daemon.start()
        pending = list(team)
        while pending and time.monotonic() - started < RUN_TIMEOUT_S:
            pending = [d for d in pending if not d.done(spans)]
            time.sleep(0.1)  # a benchmark's polling loop, not a test
        wall_s = time.monotonic() - started
        teams = [d.report()["team"] or {} for d in team]
        codes = [d.stop() for d in team]
        hits, queries = [t.get("hits", 0) for t in teams], sum(t.get("queries", 0) for t in teams)
        prompts = [r.json["messages"][-1]["content"] for r in emu.requests if r.path == "/api/chat" and r.json]
        inputs = [t for r in emu.requests if r.path == "/api/embed" and r.json for t in r.json.get("input") or []]
    duplicates = sum(n - 1 for n in collections.Counter(prompts).values())
    embeds = {"embed inputs": len(inputs), "embed distinct": len(set(inputs)),
              "embed extra %": 100.0 * (len(inputs) - len(set(inputs))) / max(1, len(set(inputs))),
              "embed hits per daemon": "/".join(str(t.get("embed_hits", 0)) for t in teams) if dsn else "-"}
    return {"daemons": daemons if dsn else f"{daemons} (team off)", "spans": spans, "distinct": distinct,
            "requests": len(prompts),
            "duplicates": duplicates, "extra %": 100.0 * (len(prompts) - distinct) / distinct,
            "finished": not pending and codes == [0] * daemons, "wall s": wall_s,
            "hits per daemon": "/".join(map(str, hits)) if dsn else "-",
            "queries per span": queries / distinct if dsn else "-", **(embeds if embed_model else {})}
