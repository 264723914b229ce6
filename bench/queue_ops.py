"""Cost of the queue operations a restart and a scan pay, on a store of ``--files`` one-span files.

The store is filled through the store API (``put_file`` + the scans' ``QueueSet``,
then every job answered: enrichments through ``complete_pending``, vectors through
``store_vectors``), so it looks like a daemon's store after a finished backfill, with
embeddings on. Then, each timed (median of ``--repeat``):

* ``enqueue`` of one new span (a save) and of 500 (a scan's batch), the statements
  inside the transaction (the commit is the same either way);
* ``enqueue_missing`` on the unchanged tree (what every full scan, so every restart, pays);
* ``counts()`` of the enrichment and the embedding queue (what STATUS reads).

Usage (from the repo root): ``python bench/queue_ops.py [--files 100000] [--repeat 5]``.
Prints a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from llmc_rag_service.enrich.embed_text import INPUT_VERSION
from llmc_rag_service.models import Enrichment, Span
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.embed_jobs import EmbedQueue
from llmc_rag_service.store.jobs import PRIORITY_BACKFILL, PRIORITY_LIVE, JobQueue, QueueSet

ANSWER = Enrichment("Multiplies x.", ["x"], ["x times n"], [], [], "f(2)")


def _span(i: int) -> Span:
    return Span("function", f"f{i}", 1, 2, f"def f{i}(x):\n    return x * {i}\n", "python")


def fill(store: Store, queues: QueueSet, enrich: JobQueue, embed: EmbedQueue, files: int) -> None:
    """``files`` one-span files, every job answered (a finished backfill)."""
    repo = store.repo_id("/bench/repo")
    for start in range(0, files, 2000):
        with store.write() as tx:
            spans = [_span(i) for i in range(start, min(files, start + 2000))]
            for span in spans:
                store.put_file(tx, repo, f"m{span.name}.py", size=40, mtime_ns=1, content_hash=span.span_hash,
                               language="python", skipped=None, spans=[span])
            queues.enqueue(tx, [s.span_hash for s in spans], PRIORITY_BACKFILL)
    while True:
        pending = enrich.pending_after(0, 5000)
        if not pending:
            break
        enrich.complete_pending({span_hash: ANSWER for _, span_hash in pending})
    while True:
        jobs = embed.claim_many(2000)
        if not jobs:
            break
        embed.store_vectors([(j, [0.5, 0.25, 0.125, 1.0], True) for j in jobs])


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall milliseconds of ``fn()`` (or of the seconds it returns)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        took = fn()
        times.append((took if isinstance(took, float) else time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "llmc-rag.db")
        enrich = JobQueue(store, "test-model")
        embed = EmbedQueue(store, "nomic-embed-text", INPUT_VERSION, "test-model")
        queues = QueueSet(enrich, embed)
        started = time.perf_counter()
        fill(store, queues, enrich, embed, args.files)
        fill_s = time.perf_counter() - started
        extra = iter(range(args.files, args.files + 10_000_000))

        def enqueue(count: int, priority: int) -> Callable[[], float]:
            def run() -> float:
                hashes = [_span(next(extra)).span_hash for _ in range(count)]
                with store.write() as tx:
                    started = time.perf_counter()
                    queues.enqueue(tx, hashes, priority)
                    return time.perf_counter() - started  # the statements, not the commit
            return run

        def missing() -> None:
            with store.write() as tx:
                queues.enqueue_missing(tx)

        rows = [("enqueue_missing, unchanged tree (every full scan)", timed(missing, args.repeat)),
                ("counts(), enrichment queue", timed(enrich.counts, args.repeat)),
                ("counts(), embedding queue", timed(embed.counts, args.repeat)),
                ("enqueue, one span (a save; statements only)", timed(enqueue(1, PRIORITY_LIVE), args.repeat * 10)),
                ("enqueue, 500 spans (a scan batch; statements only)", timed(enqueue(500, PRIORITY_BACKFILL),
                                                                            args.repeat * 2))]
        store.close()
    print(f"store: {args.files} files/spans, every job done (filled in {fill_s:.1f} s); load {os.getloadavg()[0]:.2f}")
    print("| operation | median ms |")
    print("|---|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
