"""Benchmark of search on stores of 10k and 100k spans of real code (the Python standard library).

Build: the running interpreter's standard library (tests excluded) is split
into spans once; each store holds copies of it under distinct repos (copy k is
a directory of hard links to the stdlib's files, or copies with their mtimes,
so freshness checks and ``serve``'s scan see real, unchanged files), with
copy k > 0 made distinct by a ``# copy k`` comment on each span's last line, so
every span has its own content hash. Spans go in through ``Store.put_file``
(the FTS index is maintained by the store's commit hook, as in the daemon);
every span hash gets a random 768-dim float32 vector via ``put_embeddings``.

Measure: in a fresh child process per store (so its RSS is the search
process's), 100 queries per mode -- half identifier-like (a span name's
parts, "read config file"), half natural language (a docstring's first
sentence) -- p50/p95 latency of lexical, semantic and hybrid search,
excluding the query embedding (the embedder returns a ready vector); the cold
first semantic query (matrix load); RSS; and the matrix-vector product of
float32, float16 and int8 matrices of the 100k store. Also: build time and
index size on disk (dbstat by table when SQLite has it).

Usage: ``.venv/bin/python bench/search.py [--sizes 10000,100000] [--out bench/RESULTS-search.md]``
(about two minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from llmc_rag_service.enrich.embed_text import INPUT_VERSION
from llmc_rag_service.index import spans as spans_mod
from llmc_rag_service.models import Span
from llmc_rag_service.store import vectors
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.fts import identifier_parts
from llmc_rag_service.store.secret_audit import reread_files_for

import search_fresh  # bench/search_fresh.py, beside this file

STDLIB = Path(sysconfig.get_paths()["stdlib"])
DIM = 768
EMBED = "bench-embed"
_SKIP = ("test/", "site-packages/", "idlelib/idle_test/", "tkinter/test/", "unittest/test/", "lib2to3/tests/")


def stdlib_spans() -> list[tuple[str, object, list[Span]]]:
    """``(relpath, stat, spans)`` of every non-test .py file of the standard library, sorted by path."""
    out = []
    for path in sorted(STDLIB.rglob("*.py")):
        rel = path.relative_to(STDLIB).as_posix()
        if rel.startswith(_SKIP) or "/tests/" in rel or path.is_symlink():
            continue
        try:
            spans = spans_mod.split_file(rel, path.read_bytes(), max_file_bytes=1 << 20)
        except spans_mod.SkipFile:
            continue
        out.append((rel, path.stat(), spans))
    return out


def link_tree(root: Path, relpaths: list[str]) -> None:
    """``root/rel`` for each stdlib file: a hard link (same inode, size and mtime), or a copy keeping the mtime."""
    for rel in relpaths:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(STDLIB / rel, target)
        except OSError:
            shutil.copy2(STDLIB / rel, target)


def _copy(span: Span, k: int) -> Span:
    return span if k == 0 else Span(span.kind, span.name, span.start_line, span.end_line,
                                     f"{span.text}  # copy {k}", span.language)


def build(db_path: Path, tmp: Path, target: int, files: list) -> dict:
    """A store of ``target`` spans (copies of ``files``) with one random vector per span hash."""
    started = time.perf_counter()
    store, total, k = Store(db_path), 0, 0
    # What serve records once it has cut spans with the default secrets.allow ([]): without
    # it, serve's first start would read and cut every file again (store/secret_audit.py).
    reread_files_for(store, hashlib.sha256(json.dumps([]).encode()).hexdigest())
    while total < target:
        root = tmp / f"copy{k}"
        link_tree(root, [rel for rel, _, _ in files])
        repo_id = store.repo_id(str(root))
        for start in range(0, len(files), 100):
            with store.write() as tx:
                for rel, st, spans in files[start:start + 100]:
                    take = [_copy(s, k) for s in spans[:target - total]]
                    store.put_file(tx, repo_id, rel, size=st.st_size, mtime_ns=st.st_mtime_ns,
                                   content_hash=f"{k}:{rel}", language="python", skipped=None, spans=take)
                    total += len(take)
            if total >= target:
                break
        k += 1
    spans_s = time.perf_counter() - started
    hashes = [r[0] for r in store.conn.execute("SELECT DISTINCT span_hash FROM spans")]
    rng = np.random.default_rng(1)
    for start in range(0, len(hashes), 5000):
        part = hashes[start:start + 5000]
        matrix = rng.standard_normal((len(part), DIM), dtype=np.float32)
        vectors.put_embeddings(store, [(h, EMBED, INPUT_VERSION, v) for h, v in zip(part, matrix)])
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    sizes = table_sizes(store)
    store.close()
    return {"spans": total, "copies": k, "vectors": len(hashes), "build_spans_s": spans_s,
            "build_total_s": time.perf_counter() - started, "db_mb": db_path.stat().st_size / 2**20, **sizes}


def table_sizes(store: Store) -> dict:
    """MB on disk of the FTS index and of the embeddings (needs SQLite's dbstat; {} without it)."""
    try:
        rows = store.conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
    except Exception:
        return {}
    by = {name: size / 2**20 for name, size in rows}
    return {"fts_mb": sum(v for n, v in by.items() if n.startswith("span_fts")),
            "embeddings_mb": sum(v for n, v in by.items() if n.startswith("embeddings") or "embeddings" in n)}


def make_queries(files: list, n: int = 100, seed: int = 5) -> list[str]:
    """Half span-name queries ("read config file"), half docstring first sentences."""
    rng = random.Random(seed)
    names = sorted({s.name.split(".")[-1] for _, _, spans in files for s in spans if s.kind in ("function", "method")})
    idents = [" ".join(identifier_parts(n)) for n in rng.sample(names, n // 2)]
    sentences = []
    for _, _, spans in files:
        for s in spans:
            doc = s.text.split('"""')
            if len(doc) >= 3 and 20 < len(doc[1].strip().split(".")[0]) < 120:
                sentences.append(doc[1].strip().split(".")[0])
    return idents + rng.sample(sorted(set(sentences)), n - n // 2)


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"p50_ms": 1000 * statistics.median(ordered), "p95_ms": 1000 * ordered[int(0.95 * (len(ordered) - 1))]}


def rss_mb() -> dict:
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def measure(db_path: str, queries: list[str], compare_dtypes: bool) -> dict:
    """The child process: latencies per mode, cold load, RSS; optionally the dtype comparison."""
    from llmc_rag_service.search import SearchSettings, open_store, search

    conn = open_store(db_path)
    settings = SearchSettings("bench-chat", EMBED, INPUT_VERSION)
    def vector_of(text: str) -> np.ndarray:  # the embedder: a ready random vector per text (search sends query_text)
        return np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)).standard_normal(DIM)

    out: dict = {"baseline_rss": rss_mb()}
    started = time.perf_counter()
    search(conn, queries[0], settings, embed_query=vector_of, mode="semantic")
    out["cold_semantic_s"] = time.perf_counter() - started
    for mode in ("lexical", "semantic", "hybrid"):
        times = []
        for q in queries:
            t = time.perf_counter()
            result = search(conn, q, settings, embed_query=vector_of, mode=mode)
            times.append(time.perf_counter() - t)
            assert result.degraded is None, result.degraded
        out[mode] = percentiles(times)
    out["rss"] = rss_mb()
    if compare_dtypes:
        out["dtypes"] = compare(conn, [vector_of(q) for q in queries[:40]])
    return out


def compare(conn, qvecs: list) -> dict:
    """Memory and matrix-vector time of the three in-memory representations."""
    from llmc_rag_service.search import semantic

    result = {}
    for dtype in ("float32", "float16", "int8"):
        index = semantic.VectorIndex(dtype)
        index.reserve(vectors.count(conn, EMBED, INPUT_VERSION), DIM)
        for hashes, rows in vectors.iter_embeddings(conn, EMBED, INPUT_VERSION):
            index.add(hashes, rows)
        times = []
        for q in qvecs:
            q = (q / np.linalg.norm(q)).astype(np.float32)
            t = time.perf_counter()
            index.scores(q)
            times.append(time.perf_counter() - t)
        result[dtype] = {"mb": index.nbytes / 2**20, **percentiles(times)}
        del index
    return result


NOTE = ("Choice: int8 with one float32 scale per row is the in-memory format (search/semantic.py "
        "VECTOR_DTYPE): a quarter of float32's memory for well under twice its time, cosine error ~1e-3; "
        "float16 halves memory but numpy has no fast half-precision product, so it is the slowest. The product "
        "uses numpy's einsum, not BLAS: OpenBLAS's threads on busy cores made it 2-4x slower. The cold first "
        "semantic query reads the store's packs (store/vector_packs.py: the int8 rows as blobs of 1,024 vectors, "
        "kept by the writer) and the few rows written after them; before packs it read every row "
        "(1.3-1.9 s at 100k). A long-lived process (MCP server) then only appends vectors written since "
        "(the cache checks an O(1) stamp per query).")


def fresh_report(spans: int, f: dict) -> list[str]:
    """The section of bench/search_fresh.py's measures."""
    def cell(d: dict) -> str:
        return f"{d['p50_ms']:.1f} / {d['p95_ms']:.1f} ms"
    lines = [f"A user's view at {spans:,} spans (bench/search_fresh.py; one new process per query, "
             f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end):", "",
             "| measure | p50 / p95 |", "|---|---|",
             f"| hybrid search call in a new process (pack load + lexical + semantic + fusion; query vector ready) "
             f"| {cell(f['fresh']['search'])} |",
             f"| that whole process (interpreter start, imports, open, search) | {cell(f['fresh']['process'])} |",
             f"| `llmc-rag search --json` end to end (query embedded by the emulator) | {cell(f['cli'])} |",
             f"| query embedding, one /api/embed to the emulator, hashed 768 dims | {cell(f['embed_hashed'])} |"]
    if "embed_wordllama" in f:
        lines.append(f"| query embedding, one /api/embed to the emulator, WordLlama 256 dims "
                     f"| {cell(f['embed_wordllama'])} |")
    serve = f["serve"]
    lines += ["", f"`llmc-rag serve` on this store (vectors packed; chat model absent, so it scans, queues and "
              f"waits): catch-up scans done after {serve['scanned_s']:.0f} s; RSS {serve['rss_mb']:.0f} MB, "
              f"peak {serve['hwm_mb']:.0f} MB (target <= 250 MB).", ""]
    return lines


def report(rows: list[tuple[dict, dict]]) -> str:
    lines = ["# Search benchmarks", "", "## Speed (bench/search.py)", "",
             f"Corpus: Python {sys.version.split()[0]} standard library (tests excluded), copied under distinct "
             f"repos; {DIM}-dim random vectors, one per span hash; in-memory vectors int8 (see below). "
             "Latency excludes the query embedding (the embedder returns a ready vector); 100 queries per mode, "
             "half identifier-like, half docstring sentences; one warm child process per store. "
             f"Machine: {os.cpu_count()} cores shared with other work, load average {os.getloadavg()[0]:.1f} "
             "at the end of the run (numbers are pessimistic when it is above the core count).", "",
             "| spans | vectors | build (spans / total) | db size | FTS | embeddings | lexical p50 / p95 | "
             "semantic p50 / p95 | hybrid p50 / p95 | cold first semantic query | search RSS (peak) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b, m in rows:
        lines.append(
            f"| {b['spans']:,} | {b['vectors']:,} | {b['build_spans_s']:.0f} s / {b['build_total_s']:.0f} s | "
            f"{b['db_mb']:.0f} MB | {b.get('fts_mb', float('nan')):.0f} MB | {b.get('embeddings_mb', float('nan')):.0f} MB | "
            + " | ".join(f"{m[k]['p50_ms']:.1f} / {m[k]['p95_ms']:.1f} ms" for k in ("lexical", "semantic", "hybrid"))
            + f" | {m['cold_semantic_s']:.2f} s | {m['rss']['VmRSS']:.0f} MB ({m['rss']['VmHWM']:.0f} MB) |")
    big = rows[-1]
    lexical_ok = big[1]["lexical"]["p95_ms"] <= 30
    hybrid_ok = big[1]["hybrid"]["p95_ms"] <= 100
    lines += ["", f"Targets at {big[0]['spans']:,} spans: lexical p95 <= 30 ms: "
              f"{'ok' if lexical_ok else 'MISSED'}; hybrid p95 <= 100 ms: {'ok' if hybrid_ok else 'MISSED'}.", ""]
    if "fresh" in big[0]:
        lines += fresh_report(big[0]["spans"], big[0]["fresh"])
    if "dtypes" in big[1]:
        lines += [f"In-memory matrix at {big[0]['vectors']:,} x {DIM} (matrix-vector product for one query, 40 queries):", "",
                  "| dtype | memory | p50 | p95 |", "|---|---|---|---|"]
        for dtype, d in big[1]["dtypes"].items():
            lines.append(f"| {dtype} | {d['mb']:.0f} MB | {d['p50_ms']:.1f} ms | {d['p95_ms']:.1f} ms |")
        lines += ["", NOTE]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--out", default="bench/RESULTS-search.md")
    parser.add_argument("--fresh", type=int, default=30,
                        help="queries for the new-process, CLI, embedding and serve measures of the largest store "
                             "(bench/search_fresh.py; 0: skip them)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # child mode: DB path
    parser.add_argument("--queries", help=argparse.SUPPRESS)
    parser.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, json.loads(Path(args.queries).read_text()), args.compare)))
        return
    files = stdlib_spans()
    queries = make_queries(files)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        Path(tmp, "queries.json").write_text(json.dumps(queries))
        sizes = [int(s) for s in args.sizes.split(",")]
        for size in sizes:
            work = Path(tmp, str(size))
            work.mkdir()
            built = build(work / "llmc-rag.db", work, size, files)
            print(f"built {size}: {built}", file=sys.stderr)
            child = [sys.executable, str(Path(__file__).resolve()), "--measure", str(work / "llmc-rag.db"),
                     "--queries", str(Path(tmp, "queries.json"))] + (["--compare"] if size == sizes[-1] else [])
            measured = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
            print(f"measured {size}: {measured}", file=sys.stderr)
            if size == sizes[-1] and args.fresh:
                repos = [work / f"copy{k}" for k in range(built["copies"])]
                built["fresh"] = search_fresh.measure_all(work, repos, queries[:args.fresh], DIM)
            rows.append((built, measured))
    text = report(rows)
    out = Path(args.out)
    kept = out.read_text().partition("\n## Retrieval quality")[1:] if out.exists() else ("", "")
    out.write_text(text + "".join(kept))  # bench/search_quality.py's section stays
    print(text)


if __name__ == "__main__":
    main()
