"""Retrieval quality of search on code nobody here wrote: documented functions of the Python standard library.

Build: every non-test module of the running interpreter's standard library is
copied into a temp repo with the docstrings of its functions and methods
removed (a body that was only a docstring becomes ``pass``). Queries: the
first sentence of a removed docstring (5 to 40 words; dunder methods
skipped); the answer is the span of that function (its name in its file must
be unique). A seeded sample of :data:`QUERIES` cases is split in two halves:
``tune`` (the only half looked at while choosing the search's settings) and
``held-out`` (reported, never tuned on).

The product path, end to end: the Ollama emulator runs in its own process
(``python -m llmc_rag_service.testing --embedder E``); the real
:class:`~llmc_rag_service.service.pipeline.Pipeline` scans the repo and its
embedding lane sends every span to ``/api/embed`` and stores the vectors;
each query then goes through ``search``'s CLI path
(:func:`~llmc_rag_service.search.cli_view.run_search`: the query embedded by
one ``/api/embed`` request, then lexical, semantic or hybrid ranking). The
chat model is not installed, so no enrichment lands: this is code-only
retrieval (no summaries). Embedders: ``hashed`` (the emulator's hashed bag of
identifier parts, 768 dims) and ``wordllama`` (a real learned model, 256 dims,
extra ``[wordllama]``).

Reports MRR@10, Recall@1 and Recall@10 per embedder, mode and half. Usage:
``.venv/bin/python bench/search_quality.py [--queries 400] [--embedders hashed,wordllama]
[--out bench/RESULTS-search.md]`` (replaces its section of that file; a few minutes).
"""

from __future__ import annotations

import argparse
import ast
import io
import os
import random
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from llmc_rag_service.logs import configure_logging
from llmc_rag_service.search import open_store
from llmc_rag_service.search.cli_view import run_search
from llmc_rag_service.service.pipeline import Pipeline
from llmc_rag_service.store.searchview import export_rows
from llmc_rag_service.testing.repos import make_config

STDLIB = Path(sysconfig.get_paths()["stdlib"])
QUERIES = 400
MODELS = {"hashed": ("nomic-embed-text", "hashed bag of identifier parts, 768 dims"),
          "wordllama": ("wordllama-256", "WordLlama l2_supercat, 256 dims, a real learned model")}
MODES = ("lexical", "semantic", "hybrid")
_SKIP = ("test/", "site-packages/", "idlelib/idle_test/", "tkinter/test/", "unittest/test/", "lib2to3/tests/")


def first_sentence(doc: str) -> str:
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    return re.split(r"(?<=[.!?])\s", paragraph, maxsplit=1)[0].rstrip(".")


def strip_docstrings(source: str) -> tuple[str, list[tuple[str, str]]]:
    """The source without function docstrings, and ``(qualified name, first sentence)`` of each."""
    tree = ast.parse(source)
    lines, cuts, found = source.splitlines(keepends=True), [], []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(child)
                if doc is not None:
                    body = child.body[0]
                    cuts.append((body.lineno, body.end_lineno, len(child.body) == 1, body.col_offset))
                    if not child.name.startswith("__"):
                        found.append((prefix + child.name, first_sentence(doc)))

    visit(tree, "")
    for start, end, only, col in sorted(cuts, reverse=True):
        lines[start - 1:end] = [" " * col + "pass\n"] if only else []
    return "".join(lines), found


def build_corpus(root: Path) -> list[tuple[str, str, str]]:
    """Write the stripped modules under ``root``; ``(path, name, query)`` candidates."""
    out = []
    for path in sorted(STDLIB.rglob("*.py")):
        rel = path.relative_to(STDLIB).as_posix()
        if rel.startswith(_SKIP) or "/tests/" in rel or path.is_symlink():
            continue
        try:
            stripped, found = strip_docstrings(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(stripped, encoding="utf-8")
        out += [(rel, name, q) for name, q in found if 5 <= len(q.split()) <= 40]
    return out


class Emulator:
    """``python -m llmc_rag_service.testing --embedder E`` on a free port, in its own process (as Ollama is)."""

    def __init__(self, embedder: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmc_rag_service.testing", "--port", "0", "--model", "no-chat-model",
             "--embedder", embedder, "--embed-model", MODELS[embedder][0], "--embed-latency-s", "0"],
            stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().split()[-1]  # type: ignore[union-attr]  # "... listening on URL"

    def __enter__(self) -> "Emulator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def index(work: Path, root: Path, url: str, model: str):
    """Scan ``root`` and embed every span through the pipeline (unless ``work`` has
    its store already, from an earlier run with ``--work``); the config used."""
    config = make_config(work, url, [root], search={"embed_model": model}, logging={"level": "error"})
    if config.db_path.exists():
        return config
    pipeline = Pipeline(config)
    try:
        pipeline.scan_all()
        queued = pipeline.embed_counts()["pending"]  # type: ignore[index]
        pipeline.start_workers()
        while pipeline.embeds.finished() < queued:  # type: ignore[union-attr]
            time.sleep(0.05)  # a benchmark's polling loop, not a test
    finally:
        pipeline.close(5.0)
    return config


def answerable(config, candidates: list, n_queries: int) -> list:
    """The seeded sample of candidates whose (path, name) is one span of the store."""
    conn = open_store(config.db_path)
    counts: dict = {}
    for r in export_rows(conn, config.ollama.model):
        counts[(r["path"], r["name"])] = counts.get((r["path"], r["name"]), 0) + 1
    conn.close()
    cases = [c for c in candidates if counts.get((c[0], c[1])) == 1]
    return random.Random(11).sample(cases, min(n_queries, len(cases)))


def evaluate(config, cases: list, mode: str) -> dict:
    """MRR@10, Recall@1/@10 and ms per query (including the query's /api/embed request) of one mode."""
    reciprocal, hit1, hit10, started, degraded = 0.0, 0, 0, time.perf_counter(), 0
    for path, name, query in cases:
        result = run_search(config, query, mode=mode, limit=10, repo=None, path=None, language=None, kind=None,
                            err=io.StringIO())
        degraded += result.degraded is not None
        rank = next((i for i, h in enumerate(result.hits, 1) if (h.path, h.name) == (path, name)), None)
        if rank:
            reciprocal += 1 / rank
            hit1 += rank == 1
            hit10 += 1
    n = len(cases)
    if degraded:
        raise RuntimeError(f"{degraded} {mode} searches were degraded to lexical")
    return {"mrr": reciprocal / n, "r1": hit1 / n, "r10": hit10 / n, "ms": 1000 * (time.perf_counter() - started) / n}


def halves(cases: list) -> dict:
    """``tune`` and ``held-out``: the sample split in two by a seeded shuffle."""
    shuffled = random.Random(29).sample(cases, len(cases))
    middle = len(shuffled) // 2
    return {"tune": shuffled[:middle], "held-out": shuffled[middle:]}


def run(embedder: str, tmp: Path, root: Path, candidates: list, n_queries: int,
        only: str | None = None) -> tuple[dict, int, int]:
    """``({half: {mode: scores}}, cases, spans)`` for one embedder (one half only if ``only``)."""
    with Emulator(embedder) as emu:
        work = tmp / embedder
        work.mkdir(exist_ok=True)
        config = index(work, root, emu.url, MODELS[embedder][0])
        cases = answerable(config, candidates, n_queries)
        results = {half: {mode: evaluate(config, part, mode) for mode in MODES}
                   for half, part in halves(cases).items() if only in (None, half)}
    conn = open_store(config.db_path)
    spans = conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
    conn.close()
    return results, len(cases), spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=QUERIES)
    parser.add_argument("--embedders", default="hashed,wordllama")
    parser.add_argument("--out", default="bench/RESULTS-search.md")
    parser.add_argument("--work", help="keep the corpus and stores in this directory and reuse them (for tuning)")
    parser.add_argument("--tune", action="store_true", help="evaluate the tune half only and write no report")
    args = parser.parse_args()
    configure_logging("warning", "json")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        work = Path(args.work or tmp)
        root = work / "stdlib"
        candidates = build_corpus(root)
        for embedder in args.embedders.split(","):
            results[embedder] = run(embedder, work, root, candidates, args.queries, "tune" if args.tune else None)
            print(embedder, results[embedder], file=sys.stderr, flush=True)
    if args.tune:
        return
    text = report(results)
    out = Path(args.out)
    previous = out.read_text().split("\n## Retrieval quality")[0] if out.exists() else ""
    out.write_text(previous.rstrip("\n") + "\n\n" + text)
    print(text)


BEFORE = ("What changed, chosen on the tune half: the embedded text (input version 2: the span's qualified "
          "name as words, then its code read as words, and the query read as words; version 1 was summary + raw "
          "code and the raw query) and RRF k = 10 (was 60). Before, on the tune half through the same path: "
          "hashed lexical 0.319 / hybrid 0.302 MRR@10 (Recall@10 0.515 / 0.480), WordLlama hybrid 0.297 / 0.530: "
          "hybrid was below lexical on MRR@10 with both. Semantic-only stays below lexical: the answer's name and "
          "code are what BM25 matches best on, and 256 averaged token vectors see less. Each half has 200 queries, "
          "so a difference of 0.01-0.02 MRR@10 is within the noise of one half; the held-out gains of both "
          "embedders point the same way as the tune half's.")


def report(results: dict) -> str:
    first = next(iter(results.values()))
    lines = ["## Retrieval quality (bench/search_quality.py)", "",
             f"Python {sys.version.split()[0]} standard library, docstrings removed from the indexed code; "
             f"{first[1]} queries = a removed docstring's first sentence, answer = that function's span; "
             f"{first[2]:,} spans. Indexed and searched through the product: the pipeline's embedding lane "
             "against the emulator's /api/embed in its own process, queries through the CLI's search path. "
             "No enrichments (no summaries): code-only retrieval. The cases are split in two seeded halves; "
             "settings were chosen looking at the tune half only, the held-out half was not looked at. "
             f"ms/query includes the query's /api/embed request. Load average {os.getloadavg()[0]:.1f} "
             f"on {os.cpu_count()} cores.", "",
             "| embedder | half | mode | MRR@10 | Recall@1 | Recall@10 | ms/query |", "|---|---|---|---|---|---|---|"]
    for embedder, (by_half, _, _) in results.items():
        for half, by_mode in by_half.items():
            for mode, r in by_mode.items():
                lines.append(f"| {embedder} ({MODELS[embedder][0]}) | {half} | {mode} | {r['mrr']:.3f} | {r['r1']:.3f} "
                             f"| {r['r10']:.3f} | {r['ms']:.1f} |")
    lines.append("")
    for embedder, (by_half, _, _) in results.items():
        h = by_half["held-out"]
        verdict = all(h["hybrid"][k] > h["lexical"][k] for k in ("mrr", "r10"))
        lines.append(f"- {embedder} ({MODELS[embedder][1]}), held-out half: hybrid "
                     f"{'beats' if verdict else 'does NOT beat'} lexical-only on both MRR@10 and Recall@10 "
                     f"({h['hybrid']['mrr'] - h['lexical']['mrr']:+.3f} MRR@10, "
                     f"{h['hybrid']['r10'] - h['lexical']['r10']:+.3f} Recall@10).")
    lines += ["", BEFORE]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
