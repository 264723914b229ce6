"""Throughput of the real pipeline against the Ollama emulator: does it keep every slot busy?

An emulator with ``--slots`` generation slots (OLLAMA_NUM_PARALLEL) and a fixed
generation latency per request has a capacity of ``slots / latency`` answers
per second. The pipeline (Pipeline: store, queue, scanner, worker pool, client)
runs with ``ollama.concurrency = slots`` on a temp repo of ``--jobs``
one-function files (one span, one job each). The ratio achieved / capacity
shows the gaps between one answer and the next request; the target is >= 0.95.
"mean server time" is how long the emulator took per request (latency plus its
own overhead); "slots busy" the share of slot time spent answering, so
1 - slots busy is the time lost between one answer and the next request.

Usage (from the repo root): ``python bench/throughput.py [--jobs 400] [--slots 4] [--latency-s 0.2 0.05]``.
Prints a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


from llmc_rag_service.service.pipeline import Pipeline
from llmc_rag_service.logs import configure_logging
from llmc_rag_service.testing.repos import make_config, write_tree
from llmc_rag_service.testing.emulator import OllamaEmulator


def run_once(jobs: int, slots: int, latency_s: float) -> dict:
    """Enrich ``jobs`` spans through the pipeline; returns the table row values."""
    with tempfile.TemporaryDirectory() as tmp, OllamaEmulator(num_parallel=slots, latency_s=latency_s) as emu:
        root = Path(tmp) / "repo"
        root.mkdir()
        write_tree(root, {f"m{i}.py": f"def f{i}(x):\n    return x * {i}\n" for i in range(jobs)})
        config = make_config(Path(tmp), emu.url, [root], ollama={"concurrency": slots, "timeout_s": 60},
                             logging={"level": "warning"})
        pipeline = Pipeline(config)
        try:
            pipeline.scan_all()
            queued = pipeline.counts()["pending"]
            started = time.monotonic()
            pipeline.start_workers()
            while pipeline.counts()["done"] + pipeline.counts()["failed"] < queued:
                time.sleep(0.01)  # a benchmark's polling loop, not a test
            wall_s = time.monotonic() - started
            done = pipeline.counts()["done"]
        finally:
            pipeline.close(5.0)
    capacity = slots / latency_s
    served_s = [r.t_end - r.t_start for r in emu.requests if r.path == "/api/chat" and r.t_end]
    return {"jobs": done, "slots": slots, "latency_s": latency_s, "wall_s": wall_s,
            "rate": done / wall_s, "capacity": capacity, "ratio": done / wall_s / capacity,
            "peak": emu.in_flight_max.get("test-model", 0),
            # Share of slot time the server spent answering: 1 - this = client-side gaps.
            "busy": sum(served_s) / (wall_s * slots), "served_s": sum(served_s) / max(1, len(served_s))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--latency-s", type=float, nargs="+", default=[0.2, 0.05])
    args = parser.parse_args(argv)
    configure_logging("warning", "console", stream=sys.stderr)
    print("| jobs | slots | latency s | wall s | achieved /s | capacity /s | ratio | peak in flight "
          "| mean server time s | slots busy |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for latency_s in args.latency_s:
        r = run_once(args.jobs, args.slots, latency_s)
        print(f"| {r['jobs']} | {r['slots']} | {r['latency_s']:g} | {r['wall_s']:.2f} | {r['rate']:.2f} "
              f"| {r['capacity']:.2f} | {r['ratio']:.3f} | {r['peak']} | {r['served_s']:.3f} "
              f"| {r['busy']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
