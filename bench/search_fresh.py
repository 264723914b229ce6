"""Search as a user meets it, on a store built by bench/search.py: new processes, the CLI, the query's embedding, serve.

Measures, for one store:

* **fresh process**: a new Python process per query opens the store and runs
  one hybrid search with a ready query vector (the query embedding excluded):
  p50/p95 of that search call (pack load + lexical + semantic + fusion), and of
  the whole process (interpreter start and imports included);
* **CLI end to end**: ``llmc-rag search --json QUERY`` as a subprocess against
  the Ollama emulator in its own process (``/api/embed`` of the query included);
* **query embedding**: the CLI's query embedder (one ``POST /api/embed``)
  against the emulator, hashed (768 dims) and, with the ``[wordllama]``
  extra, WordLlama (256 dims), p50/p95;
* **serve RSS**: ``llmc-rag serve`` on the store (chat model absent, so it
  scans, queues and waits), RSS after its catch-up scans and its peak.

Used by ``bench/search.py`` for its largest store; ``--child`` is its own child mode.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

EMBED = "bench-embed"
CHAT = "bench-chat"


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"p50_ms": 1000 * statistics.median(ordered), "p95_ms": 1000 * ordered[int(0.95 * (len(ordered) - 1))]}


def child(db_path: str, query: str, dim: int) -> None:
    """One fresh process's search: prints ``{"search_s"}`` (hybrid, a ready vector)."""
    from llmc_rag_service.enrich.embed_text import INPUT_VERSION
    from llmc_rag_service.search import SearchSettings, open_store, search

    vector = np.random.default_rng(len(query)).standard_normal(dim)
    started = time.perf_counter()
    conn = open_store(db_path)
    result = search(conn, query, SearchSettings(CHAT, EMBED, INPUT_VERSION), embed_query=lambda t: vector, mode="hybrid")
    elapsed = time.perf_counter() - started
    assert result.degraded is None, result.degraded
    print(json.dumps({"search_s": elapsed}))


def fresh_searches(db_path: Path, queries: list[str], dim: int) -> dict:
    """p50/p95 of the search call and of the whole process, one new process per query."""
    search_s, process_s = [], []
    for query in queries:
        started = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child", str(db_path), query, str(dim)],
                             check=True, capture_output=True, text=True).stdout
        process_s.append(time.perf_counter() - started)
        search_s.append(json.loads(out)["search_s"])
    return {"search": percentiles(search_s), "process": percentiles(process_s)}


class Emulator:
    """``python -m llmc_rag_service.testing`` on a free port in its own process; ``url`` once listening."""

    def __init__(self, *extra: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "llmc_rag_service.testing", "--port", "0",
                                      "--model", "no-chat-model", "--embed-latency-s", "0", *extra],
                                     stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().split()[-1]  # type: ignore[union-attr]

    def __enter__(self) -> "Emulator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def write_config(work: Path, url: str, repos: list[Path], embed_model: str = EMBED) -> Path:
    """A config for the store in ``work`` (``work/llmc-rag.db``) and its repos, against ``url``."""
    path = work / f"config-{embed_model}.yaml"
    path.write_text(json.dumps({  # JSON is YAML
        "state_dir": str(work), "repos": [{"path": str(r)} for r in repos],
        "ollama": {"url": url, "model": CHAT}, "search": {"embed_model": embed_model},
        "logging": {"level": "info", "format": "json"}}))
    return path


def cli_searches(config: Path, queries: list[str]) -> dict:
    """p50/p95 wall time of ``llmc-rag search --json QUERY`` processes (query embedding included)."""
    times = []
    for query in queries:
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "llmc_rag_service", "search", "-c", str(config), "--json",
                              "--", query], check=True, capture_output=True, text=True).stdout
        times.append(time.perf_counter() - started)
        assert json.loads(out)["degraded"] is None, out[:300]
    return percentiles(times)


def embed_latency(config: Path, queries: list[str]) -> dict:
    """p50/p95 of the CLI's query embedder (one /api/embed request each), after one warm-up."""
    from llmc_rag_service.config import load_config
    from llmc_rag_service.search.cli_view import query_embedder

    config_ = load_config(config)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its per-request INFO lines (wordllama turns INFO on)
    embed = query_embedder(config_)
    assert embed is not None
    embed("warm up")
    times = []
    for query in queries:
        started = time.perf_counter()
        embed(query)
        times.append(time.perf_counter() - started)
    return percentiles(times)


def _memory_mb(pid: int) -> dict:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def serve_rss(config: Path, repos: int, log: Path, settle_s: float = 5.0, deadline_s: float = 600.0) -> dict:
    """RSS of ``llmc-rag serve`` once every repo's catch-up scan is done and ``settle_s`` passed; its peak."""
    started = time.monotonic()
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "llmc_rag_service", "serve", "-c", str(config)],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        while log.read_bytes().count(b'"scan_done"') < repos:
            if proc.poll() is not None or time.monotonic() - started > deadline_s:
                raise RuntimeError(f"serve ended or took too long; see {log}")
            time.sleep(0.5)  # a benchmark's polling loop
        scanned_s = time.monotonic() - started
        time.sleep(settle_s)
        memory = _memory_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    return {"scanned_s": scanned_s, "rss_mb": memory["VmRSS"], "hwm_mb": memory["VmHWM"]}


def measure_all(work: Path, repos: list[Path], queries: list[str], dim: int) -> dict:
    """Every measure of the module docstring on the store in ``work``."""
    out: dict = {"fresh": fresh_searches(work / "llmc-rag.db", queries, dim)}
    print(f"fresh: {out['fresh']}", file=sys.stderr, flush=True)
    with Emulator("--embed-model", EMBED) as emu:
        config = write_config(work, emu.url, repos)
        out["cli"] = cli_searches(config, queries)
        out["embed_hashed"] = embed_latency(config, queries)
        print(f"cli/embed: {out}", file=sys.stderr, flush=True)
        out["serve"] = serve_rss(config, len(repos), work / "serve.log")
    print(f"serve: {out['serve']}", file=sys.stderr, flush=True)
    try:
        import wordllama  # noqa: F401  (the [wordllama] extra)
    except ImportError:
        return out
    with Emulator("--embedder", "wordllama") as emu:
        out["embed_wordllama"] = embed_latency(write_config(work, emu.url, repos, "wordllama-256"), queries)
    return out


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(__doc__)
