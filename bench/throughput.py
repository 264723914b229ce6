"""Throughput of the real pipeline against the Ollama emulator: does it keep every slot busy?

An emulator with ``slots`` generation slots (OLLAMA_NUM_PARALLEL) and a fixed
generation latency per request has a capacity of ``slots / latency`` answers
per second. The pipeline (Pipeline: store, queue, scanner, worker pool, client)
runs with ``ollama.concurrency = slots`` on a temp repo of one-function files
(one span, one job each), enough for about ``--seconds`` of work at capacity.
The ratio achieved / capacity shows the gaps between one answer and the next
request; the target is >= 0.95 in every cell. "mean server time" is how long
the emulator took per request (latency plus its own overhead); "slots busy" the
share of slot time spent answering, so 1 - slots busy is the time lost between
one answer and the next request. "CPU ms/job" is the pipeline process's CPU
time (every thread, user + system) per job while it worked: the product's own
work per job, which the machine's load does not change (with ``--emulator
thread`` it includes the emulator's). "load" is the 1-minute load average after
the cell: on a shared machine the ratio falls when other processes take the CPU.

The emulator runs in its own process by default (``--emulator process``): at
16 slots and 50 ms it answers 320 streamed requests a second, and in the
pipeline's process it would compete with it for the GIL, so the table would
measure the emulator as much as the product. ``--emulator thread`` runs it in
process, as the tests do.

Usage (from the repo root): ``python bench/throughput.py [--cells 4x0.2 4x0.05 16x0.05] [--seconds 4]``.
Prints a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Iterator

from llmc_rag_service.service.pipeline import Pipeline
from llmc_rag_service.logs import configure_logging
from llmc_rag_service.testing.repos import make_config, write_tree
from llmc_rag_service.testing.emulator import OllamaEmulator


def _stats(emu: OllamaEmulator, cpu_s: float | None = None) -> dict[str, Any]:
    """What the table needs from the emulator: per-request server seconds, the
    peak in flight, and (own process) the CPU seconds it used."""
    served = [r.t_end - r.t_start for r in emu.requests if r.path == "/api/chat" and r.t_end]
    return {"served_s": served, "peak": emu.in_flight_max.get("test-model", 0), "cpu_s": cpu_s}


def _serve(conn: Connection, slots: int, latency_s: float) -> None:
    """Child process: run an emulator, send its URL, and its stats once told to stop."""
    configure_logging("warning", "console", stream=sys.stderr)
    with OllamaEmulator(num_parallel=slots, latency_s=latency_s) as emu:
        conn.send(emu.url)
        conn.recv()  # "go": the pipeline starts its workers
        started = time.process_time()
        conn.recv()  # "stop"
        conn.send(_stats(emu, time.process_time() - started))


@contextlib.contextmanager
def emulator(slots: int, latency_s: float, mode: str) -> Iterator[tuple[str, Callable[[], None], dict[str, Any]]]:
    """An emulator in this process (``thread``) or its own (``process``); yields
    ``(url, go, stats)``: call ``go()`` when the measured work starts; ``stats``
    is filled in (``served_s``, ``peak``, ``cpu_s`` of the emulator's process
    since ``go``, None in process) on exit."""
    stats: dict[str, Any] = {}
    if mode == "thread":
        with OllamaEmulator(num_parallel=slots, latency_s=latency_s) as emu:
            yield emu.url, lambda: None, stats  # type: ignore[misc]
            stats.update(_stats(emu))
        return
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child, slots, latency_s), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the emulator process did not start within 30 s")
        yield parent.recv(), lambda: parent.send("go"), stats
        parent.send("stop")
        stats.update(parent.recv())
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def run_once(slots: int, latency_s: float, seconds: float, mode: str, extra: int = 0) -> dict[str, Any]:
    """Enrich about ``seconds`` of work through the pipeline; returns the table row values."""
    capacity = slots / latency_s
    jobs = slots * max(4, math.ceil(capacity * seconds / slots))
    with tempfile.TemporaryDirectory() as tmp, emulator(slots, latency_s, mode) as (url, go, stats):
        root = Path(tmp) / "repo"
        root.mkdir()
        write_tree(root, {f"m{i}.py": f"def f{i}(x):\n    return x * {i}\n" for i in range(jobs)})
        config = make_config(Path(tmp), url, [root], ollama={"concurrency": slots + extra, "timeout_s": 60},
                             logging={"level": "warning"})
        pipeline = Pipeline(config)
        try:
            pipeline.scan_all()
            queued = pipeline.counts()["pending"]
            go()
            started, cpu_started = time.monotonic(), time.process_time()
            pipeline.start_workers()
            while pipeline.finished() < queued:
                time.sleep(0.005)  # a benchmark's polling loop (in memory, no store read), not a test
            wall_s, cpu_s = time.monotonic() - started, time.process_time() - cpu_started
            done = pipeline.counts()["done"]
        finally:
            pipeline.close(5.0)
    served = stats["served_s"]
    return {"jobs": done, "slots": slots, "concurrency": slots + extra, "latency_s": latency_s, "wall_s": wall_s,
            "rate": done / wall_s, "capacity": capacity, "ratio": done / wall_s / capacity, "peak": stats["peak"],
            "cpu_ms": cpu_s * 1000 / max(1, done),
            "emu_ms": None if stats["cpu_s"] is None else stats["cpu_s"] * 1000 / max(1, len(served)),
            # Share of slot time the server spent answering: 1 - this = client-side gaps.
            "busy": sum(served) / (wall_s * slots), "served_s": sum(served) / max(1, len(served))}


def _cell(text: str) -> tuple[int, float]:
    slots, _, latency = text.partition("x")
    return int(slots), float(latency)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cells", type=_cell, nargs="+", default=[(4, 0.2), (4, 0.05), (16, 0.05)],
                        help="SLOTSxLATENCY_S, e.g. 16x0.05")
    parser.add_argument("--seconds", type=float, default=4.0, help="work per cell at capacity, seconds")
    parser.add_argument("--emulator", choices=("process", "thread"), default="process")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell")
    parser.add_argument("--extra", type=int, nargs="+", default=[0],
                        help="ollama.concurrency = slots + EXTRA (each value a row): requests waiting in the server's queue")
    args = parser.parse_args(argv)
    configure_logging("warning", "console", stream=sys.stderr)
    print("| jobs | slots | concurrency | latency s | wall s | achieved /s | capacity /s | ratio | peak in flight "
          "| mean server time s | slots busy | CPU ms/job | emulator CPU ms/req | load |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (slots, latency_s), extra in [(cell, extra) for cell in args.cells for extra in args.extra]:
        for _ in range(args.repeat):
            r = run_once(slots, latency_s, args.seconds, args.emulator, extra)
            emu_ms = "-" if r["emu_ms"] is None else f"{r['emu_ms']:.2f}"
            print(f"| {r['jobs']} | {r['slots']} | {r['concurrency']} | {r['latency_s']:g} | {r['wall_s']:.2f} "
                  f"| {r['rate']:.2f} | {r['capacity']:.2f} | {r['ratio']:.3f} | {r['peak']} | {r['served_s']:.3f} "
                  f"| {r['busy']:.3f} | {r['cpu_ms']:.2f} | {emu_ms} | {os.getloadavg()[0]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
