"""Retrieval quality of search on code nobody here wrote: documented functions of the Python standard library.

Build: every non-test module of the running interpreter's standard library is
copied into a temp repo with the docstrings of its functions and methods
removed (a body that was only a docstring becomes ``pass``), then scanned
into a store by the real scanner. Queries: the first sentence of a removed
docstring (5 to 40 words; dunder methods skipped); the answer is the span of
that function (its name in its file must be unique). A seeded sample of
:data:`QUERIES` queries is asked in each mode.

Vectors: :func:`llmc_rag_service.testing.vectors.hashed_embedding` (a hashed
bag of identifier parts, the emulator's ``/api/embed``) of each span's name
and code, 768 dims; the query is embedded the same way. This measures the
search machinery (query parsing, BM25 weights, fusion), not a real model.

Reports MRR@10 and Recall@10 (and @1) per mode. Usage:
``.venv/bin/python bench/search_quality.py [--queries 400] [--out bench/RESULTS-search.md]``
(replaces its section of that file; about a minute).
"""

from __future__ import annotations

import argparse
import ast
import random
import re
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from llmc_rag_service.index.scanner import Scanner
from llmc_rag_service.logs import configure_logging
from llmc_rag_service.search import SearchSettings, open_store, search
from llmc_rag_service.store import vectors
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.jobs import JobQueue
from llmc_rag_service.store.searchview import export_rows
from llmc_rag_service.testing.vectors import hashed_embedding

STDLIB = Path(sysconfig.get_paths()["stdlib"])
QUERIES = 400
DIM = 768
EMBED = "hashed-bow"
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


def evaluate(conn, settings, cases, mode: str) -> dict:
    reciprocal, hit1, hit10, started = 0.0, 0, 0, time.perf_counter()
    for path, name, query in cases:
        hits = search(conn, query, settings, embed_query=lambda t: hashed_embedding(t, DIM), mode=mode, limit=10).hits
        rank = next((i for i, h in enumerate(hits, 1) if (h.path, h.name) == (path, name)), None)
        if rank:
            reciprocal += 1 / rank
            hit1 += rank == 1
            hit10 += 1
    n = len(cases)
    return {"mrr": reciprocal / n, "r1": hit1 / n, "r10": hit10 / n, "ms": 1000 * (time.perf_counter() - started) / n}


def build(work: Path, n_queries: int) -> tuple[list, int]:
    """The stripped corpus, its store with vectors, and the sampled cases, under ``work``."""
    root = work / "stdlib"
    candidates = build_corpus(root)
    store = Store(work / "llmc-rag.db")
    Scanner(store, JobQueue(store, "bench-chat"), root).full_scan()
    counts: dict = {}
    for r in export_rows(store.conn, "bench-chat"):
        counts[(r["path"], r["name"])] = counts.get((r["path"], r["name"]), 0) + 1
    cases = [c for c in candidates if counts.get((c[0], c[1])) == 1]
    cases = random.Random(11).sample(cases, min(n_queries, len(cases)))
    texts = {r["span_hash"]: f"{r['name']}\n{r['text']}" for r in export_rows(store.conn, "bench-chat")}
    vectors.put_embeddings(store, [(h, EMBED, 1, hashed_embedding(t, DIM)) for h, t in texts.items()])
    store.close()
    return cases, len(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=QUERIES)
    parser.add_argument("--out", default="bench/RESULTS-search.md")
    args = parser.parse_args()
    configure_logging("warning", "json")
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        cases, spans = build(Path(tmp), args.queries)
        conn = open_store(Path(tmp, "llmc-rag.db"))
        settings = SearchSettings("bench-chat", EMBED, 1)
        results = {mode: evaluate(conn, settings, cases, mode) for mode in ("lexical", "semantic", "hybrid")}
        conn.close()
    text = report(results, len(cases), spans)
    out = Path(args.out)
    previous = out.read_text().split("\n## Retrieval quality")[0] if out.exists() else ""
    out.write_text(previous.rstrip("\n") + "\n\n" + text)
    print(text)


def report(results: dict, n: int, spans: int) -> str:
    lines = ["## Retrieval quality (bench/search_quality.py)", "",
             f"Python {sys.version.split()[0]} standard library, docstrings removed from the indexed code; "
             f"{n} queries = a removed docstring's first sentence, answer = that function's span; "
             f"{spans:,} distinct spans; vectors = hashed bag of identifier parts ({DIM} dims, the emulator's). "
             "No enrichments (the summary fields are empty), so this is code-only retrieval.", "",
             "| mode | MRR@10 | Recall@1 | Recall@10 | ms/query |", "|---|---|---|---|---|"]
    for mode, r in results.items():
        lines.append(f"| {mode} | {r['mrr']:.3f} | {r['r1']:.3f} | {r['r10']:.3f} | {r['ms']:.1f} |")
    verdict = "beats" if results["hybrid"]["mrr"] > results["lexical"]["mrr"] else "does NOT beat"
    lines += ["", f"Hybrid {verdict} lexical-only on MRR@10. The emulator's vectors are a hashed bag of "
              "the same words BM25 already sees (plus character trigrams), without BM25's inverse document "
              "frequency, so they add little evidence that the lexical list lacks: fusion mostly trades a few "
              "lexical top-1 answers for consensus picks. Hybrid search exists for a real embedding model "
              "(paraphrase, synonyms), which cannot be loaded offline here; with one, rerun this benchmark."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
