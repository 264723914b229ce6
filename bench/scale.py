"""Scale benchmark: watching and indexing a 100,000-file tree with the real ``llmc-rag serve``.

For each tree (``bench/trees.py``: a generated monorepo-like tree, and the standard library
copied again and again under distinct paths):

1. cold scan + span cutting, in-process through the real pipeline (the repo's scanner,
   no LLM): spans/s per core (scan CPU seconds), and its ratio to tree-sitter's bare parse
   CPU of the same files (the same parser objects; files of other languages not counted);
   the split without the store (read, hash, decode, parse, cut) is reported too;
2. meanwhile every queued job is answered through the queue API (``claim``/``complete``,
   as a worker stores a model's answer; its CPU is subtracted from the scan's), so a
   restart has nothing to send.

With the generated tree (also a git repo with branches A and B, B changing one function in
10,000 files), the real ``serve`` process against the emulator (latency 0, 4 slots):

3. restart catch-up on the unchanged tree: process start -> ``scan_done``, requests sent
   in the 3 s after it (target 0), RSS after it;
4. idle CPU over ``--idle-s`` seconds (utime + stime of /proc/PID/stat);
5. ``--extract`` files extracted at once (tar) into the tree: the scan scheduler thread's
   CPU until they are all stored (/proc/PID/task/TID, the id from its start log line) and
   the whole process's CPU meanwhile (workers sending the new jobs included), and a save
   every 0.3 s meanwhile:
   save -> request latency at the emulator (target <= debounce + 150 ms);
6. ``git checkout B`` (10,000 files differ): requests sent == spans changed, time until the
   last one was answered; ``git checkout A``: requests (target 0), time to settle;
7. the same cold-scan/restart/RSS measures on a 10,000-file tree: cost per file at 10k vs 100k.

Usage: ``python bench/scale.py [--files 100000] [--small 10000] [--stdlib-files 100000]
[--extract 20000] [--checkout 10000] [--idle-s 60] [--work DIR] [--keep] [--prepare]
[--out bench/RESULTS-scale.md]`` (``--prepare``: only write the trees into ``--work``, for a
later run with the same arguments; the raw measures also go to ``--out`` with ``.json``).
Needs ``fs.inotify.max_user_watches`` above the tree's directory count (~11k at 100k files).
Prints a markdown table and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import yaml

from llmc_rag_service.config import load_config
from llmc_rag_service.logs import configure_logging
from llmc_rag_service.index.sources import language_for
from llmc_rag_service.index.spans import SkipFile, split_file
from llmc_rag_service.index.syntax import GRAMMARS, _parser_for
from llmc_rag_service.models import Enrichment
from llmc_rag_service.service.notify import child_env
from llmc_rag_service.service.pipeline import Pipeline
from llmc_rag_service.store.db import Store
from llmc_rag_service.testing.emulator import OllamaEmulator

try:
    from bench.trees import generated_tree, stdlib_tree, tree_stats
except ImportError:  # run as a script: bench/ is on sys.path
    from trees import generated_tree, stdlib_tree, tree_stats

DEBOUNCE_MS = 500
MODEL = "test-model"
_WAIT = threading.Event()  # never set: waits with a timeout
ANSWER = Enrichment(summary="bench", inputs=[], outputs=[], side_effects=[], pitfalls=[], usage="")


def wait_until(cond, timeout_s: float, what: str, step_s: float = 0.01):
    deadline = time.monotonic() + timeout_s
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s} s waiting for {what}")
        _WAIT.wait(step_s)
    return value


def note(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def git(root: Path, *args: str) -> str:
    """Run git in ``root``; its stdout."""
    return subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=b@b", *args], cwd=root, env=child_env(),
                          check=True, capture_output=True, text=True).stdout


def write_config(work: Path, url: str, root: Path) -> Path:
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(work / "state"), "repos": [{"path": str(root)}],
        "ollama": {"url": url, "model": MODEL, "concurrency": 4, "timeout_s": 120},
        "watch": {"debounce_ms": DEBOUNCE_MS, "reconcile_s": 0},
        "logging": {"level": "info", "format": "json"}}))
    return path


# -- in-process: cold scan, bare parse, fill ------------------------------------------

def bare_parse_cpu(root: Path, relpaths: list[str], chunk: int = 2000) -> tuple[float, float]:
    """(CPU s of tree-sitter parsing every parsed-language file, CPU s of split_file on every file);
    the files are read ``chunk`` at a time (a 100k-file stdlib copy is 1.2 GB), the reads not timed."""
    parse_s = split_s = 0.0
    for start in range(0, len(relpaths), chunk):
        datas = [(rel, (root / rel).read_bytes()) for rel in relpaths[start:start + chunk]]
        started = time.process_time()
        for rel, data in datas:
            language = language_for(rel)
            if language in GRAMMARS:
                _parser_for("cpp" if language == "c" and rel.endswith(".h") else language).parse(data)
        parse_s += time.process_time() - started
        started = time.process_time()
        for rel, data in datas:
            try:
                split_file(rel, data, max_file_bytes=1 << 20)
            except SkipFile:
                pass
        split_s += time.process_time() - started
    return parse_s, split_s


class Filler:
    """Answers every queued job through the queue API (``claim`` + ``complete``), as a
    worker would with a model's answer; called between the scan's files so the queue
    stays short (a claim costs more the more jobs are pending). Its own CPU is kept
    apart, to be subtracted from the scan's."""

    def __init__(self, pipeline: Pipeline, every: int = 16):
        self.pipeline, self.every, self.calls, self.filled, self.cpu_s = pipeline, every, 0, 0, 0.0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls % self.every == 0:
            self.drain()

    def drain(self) -> None:
        """Answer every waiting enrichment job, 500 per transaction (``complete_pending``,
        as results from the team cache are stored): a transaction per job made the
        answering of a 100k-file tree cost more than its scan."""
        started = time.process_time()
        queue = self.pipeline.queue
        while hashes := queue.upcoming(500):
            self.filled += len(queue.complete_pending({h: ANSWER for h in hashes}))
        self.cpu_s += time.process_time() - started


def cold_scan(config_path: Path, root: Path, relpaths: list[str], fill: bool) -> dict:
    config = load_config(config_path)
    pipeline = Pipeline(config)
    try:
        filler = Filler(pipeline)
        started, wall = time.process_time(), time.monotonic()
        result = pipeline.scanners[root].full_scan(between=filler if fill else None)
        cpu_s, wall_s = time.process_time() - started - filler.cpu_s, time.monotonic() - wall
        if fill:
            filler.drain()
        spans = pipeline.store.conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0]  # bench read-out
        note(f"cold scan: {result.seen} files, {spans} spans, {cpu_s:.1f} s CPU ({filler.cpu_s:.1f} s answering "
             f"{filler.filled} jobs kept apart), {wall_s:.1f} s wall")
    finally:
        pipeline.close(0)
    parse_s, split_s = bare_parse_cpu(root, relpaths)
    return {"files": len(relpaths), "spans": spans, "cpu_s": cpu_s, "wall_s": wall_s, "parse_s": parse_s,
            "split_s": split_s, "fill_cpu_s": filler.cpu_s}


# -- the serve process -------------------------------------------------------------------

class Serve:
    """``llmc-rag serve`` as a subprocess; its JSON log read incrementally."""

    def __init__(self, config: Path, log: Path):
        self.log, self._offset, self._events = log, 0, []
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "llmc_rag_service", "serve", "-c", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=open(log, "ab"), env=child_env())

    def events(self, name: str) -> list[dict]:
        with open(self.log, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        cut = chunk.rfind(b"\n") + 1
        self._offset += cut
        for line in chunk[:cut].decode("utf-8", "replace").splitlines():
            try:
                self._events.append(json.loads(line[line.index("{"):]))
            except ValueError:
                continue
        return [e for e in self._events if e.get("event") == name]

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def scheduler_cpu_s(self) -> float:
        """CPU seconds of the scan-scheduler thread (its id is in ``scan_scheduler_started``)."""
        tid = self.events("scan_scheduler_started")[0]["thread_id"]
        fields = Path(f"/proc/{self.proc.pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mb(self, key: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


class Chats:
    """The emulator's /api/chat requests, scanned from where the last look stopped."""

    def __init__(self, emu: OllamaEmulator):
        self.emu, self.seen = emu, 0

    def count(self) -> int:
        return sum(1 for r in list(self.emu.requests) if r.path == "/api/chat")

    def find(self, marker: str):
        requests = list(self.emu.requests)
        for index in range(self.seen, len(requests)):
            r = requests[index]
            if r.path == "/api/chat" and marker in r.json["messages"][-1]["content"]:
                return r
        return None


def save_latency(root: Path, chats: Chats, rel: str, k: int) -> float:
    marker = f"saved_{k}_{time.time_ns()}"
    t0 = time.monotonic()
    (root / rel).write_text(f"def saved_{k}(x):\n    return '{marker}'\n")
    request = wait_until(lambda: chats.find(marker), 60, marker, 0.003)
    return request.t_start - t0


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


# -- phases ----------------------------------------------------------------------------

def restart(config: Path, work: Path, emu: OllamaEmulator, name: str) -> tuple[Serve, dict]:
    before = Chats(emu).count()
    serve = Serve(config, work / f"{name}.log")
    done = wait_until(lambda: serve.events("scan_done"), 600, "catch-up scan_done", 0.02)[0]
    catch_up_s = time.monotonic() - serve.started
    _WAIT.wait(3.0)
    return serve, {"catch_up_s": catch_up_s, "scan_s": done["duration_s"], "scan_cpu_s": done.get("cpu_s"),
                   "requests": Chats(emu).count() - before, "rss_mb": serve.memory_mb()}


def extraction(serve: Serve, config: Path, root: Path, emu: OllamaEmulator, tarball: Path, count: int,
               save_rel: str) -> dict:
    chats = Chats(emu)
    chats.seen = len(emu.requests)
    store = Store(load_config(config).db_path)  # the bench reads how many extracted files are stored
    repo_id = store.repo_id(root)
    cpu0, sched0, t0 = serve.cpu_s(), serve.scheduler_cpu_s(), time.monotonic()
    tar = threading.Thread(target=lambda: subprocess.run(["tar", "-xf", str(tarball), "-C", str(root)], check=True))
    tar.start()
    latencies, k = [], 0
    while tar.is_alive() or len(store.files(repo_id, under="extracted")) < count:
        latencies.append(save_latency(root, chats, save_rel, k))
        k += 1
        _WAIT.wait(0.3)
        if time.monotonic() - t0 > 900:
            raise SystemExit("extraction not indexed after 900 s")
    indexed_s, cpu_process, cpu_sched = time.monotonic() - t0, serve.cpu_s() - cpu0, serve.scheduler_cpu_s() - sched0
    store.close()
    return {"indexed_s": indexed_s, "sched_cpu_s": cpu_sched, "process_cpu_s": cpu_process, "lat": latencies,
            "batches": len(serve.events("batch_indexed"))}


def checkout(serve: Serve, root: Path, emu: OllamaEmulator, branch: str, files: int, expected: int) -> dict:
    """``git checkout branch`` (``files`` files differ): settled when the scheduler indexed
    them all and ``expected`` requests arrived."""
    before, already = Chats(emu).count(), len(serve.events("batch_indexed"))
    t0 = time.monotonic()
    git(root, "checkout", "-q", branch)
    git_s = time.monotonic() - t0
    wait_until(lambda: sum(e["changed"] for e in serve.events("batch_indexed")[already:]) >= files, 900,
               f"{files} files re-indexed", 0.05)
    indexed_s = time.monotonic() - t0
    wait_until(lambda: Chats(emu).count() - before >= expected, 900, f"{expected} requests", 0.05)
    settle_s = time.monotonic() - t0
    _WAIT.wait(3.0)
    return {"git_s": git_s, "indexed_s": indexed_s, "settle_s": settle_s, "requests": Chats(emu).count() - before,
            "expected": expected}


# -- preparing trees ---------------------------------------------------------------------

def make_branches(root: Path, relpaths: list[str], count: int) -> tuple[int, str]:
    """Commit the tree as branch A; branch B changes one function in ``count`` .py files.
    Returns (spans of B not in A, a .py file for saves)."""
    git(root, "init", "-q", "-b", "A")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "A")
    git(root, "checkout", "-q", "-b", "B")
    py = [r for r in relpaths if r.endswith(".py")]
    chosen = py[:: max(1, len(py) // count)][:count]
    old_hashes, new_hashes = set(), set()
    for rel in chosen:
        text = (root / rel).read_text()
        new = re.sub(r"    return (\d+)\n", lambda m: f"    return {m.group(1)} + 1  # on B\n", text, count=1)
        old_hashes |= {s.span_hash for s in split_file(rel, text.encode(), max_file_bytes=1 << 20)}
        new_hashes |= {s.span_hash for s in split_file(rel, new.encode(), max_file_bytes=1 << 20)}
        (root / rel).write_text(new)
    git(root, "commit", "-q", "-am", "B")
    git(root, "checkout", "-q", "A")
    save_rel = next(r for r in py if r not in set(chosen))
    return len(new_hashes - old_hashes), save_rel


def make_tarball(work: Path, count: int) -> Path:
    """``count`` one-function files in ``extracted/dNNN/`` (100 per directory), as a tar."""
    src = work / "tar-src"
    for i in range(count):
        path = src / "extracted" / f"d{i // 100:03}" / f"x{i:05}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"def extracted_{i}(x):\n    return x * {i}\n")
    tarball = work / "extract.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(src / "extracted", arcname="extracted")
    shutil.rmtree(src)
    return tarball


# -- the runs ----------------------------------------------------------------------------

def prepare_tree(kind: str, files: int, root: Path, args, serve_phases: bool) -> tuple[list[str], dict, int, str]:
    """Write the tree (and its git branches): (relpaths, stats, spans changed by B, a file to save)."""
    started = time.monotonic()
    relpaths = generated_tree(root, files) if kind == "generated" else stdlib_tree(root, files)
    stats = tree_stats(root)
    note(f"{kind} tree: {stats['files']} files, {stats['dirs']} dirs, {stats['mb']:.0f} MB "
         f"in {time.monotonic() - started:.0f} s")
    changed = 0
    if serve_phases and args.checkout:
        changed, save_rel = make_branches(root, relpaths, args.checkout)
        note(f"branches A/B: B changes {args.checkout} files, {changed} spans")
    else:
        save_rel = next(r for r in relpaths if r.endswith(".py"))
    return relpaths, stats, changed, save_rel


def run_tree(kind: str, files: int, work: Path, args, serve_phases: bool, serve: bool = True) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    root, made = work / "repo", work / "tree.json"
    if made.exists():  # --prepare made it earlier (with these arguments): not regenerated
        prepared = json.loads(made.read_text())
        relpaths, stats, changed, save_rel = (prepared[k] for k in ("relpaths", "stats", "changed", "save_rel"))
    else:
        relpaths, stats, changed, save_rel = prepare_tree(kind, files, root, args, serve_phases)
        made.write_text(json.dumps({"relpaths": relpaths, "stats": stats, "changed": changed, "save_rel": save_rel}))
    if args.prepare:
        return {}
    out: dict = {"kind": kind, "tree": stats}
    with OllamaEmulator(models=[MODEL], latency_s=0.0) as emu:
        config = write_config(work, emu.url, root)
        out["cold"] = cold_scan(config, root, relpaths, fill=serve)
        if not serve:
            return out
        serve, out["restart"] = restart(config, work, emu, "serve-restart")
        note(f"restart: {out['restart']} load {os.getloadavg()[0]:.1f}")
        try:
            if serve_phases:
                out.update(serve_phases_run(serve, root, emu, work, args, save_rel, changed))
            elif args.idle_s:
                out.update(idle_run(serve, args.idle_s))
            out["hwm_mb"] = serve.memory_mb("VmHWM")
        finally:
            serve.stop()
    return out


def idle_run(serve: Serve, idle_s: float) -> dict:
    """CPU of the watching daemon over ``idle_s`` seconds, and its RSS."""
    cpu0 = serve.cpu_s()
    _WAIT.wait(idle_s)
    out = {"idle_cpu_s": serve.cpu_s() - cpu0, "rss_watching_mb": serve.memory_mb()}
    note(f"idle CPU {out['idle_cpu_s']:.3f} s over {idle_s} s, RSS {out['rss_watching_mb']:.0f} MB, "
         f"load {os.getloadavg()[0]:.1f}")
    return out


def serve_phases_run(serve: Serve, root: Path, emu: OllamaEmulator, work: Path, args, save_rel: str,
                     changed: int) -> dict:
    out: dict = {}
    chats = Chats(emu)
    chats.seen = len(emu.requests)
    out["idle_lat"] = [save_latency(root, chats, save_rel, k) for k in range(10)]
    _WAIT.wait(3.0)
    cpu0 = serve.cpu_s()
    _WAIT.wait(args.idle_s)
    out["idle_cpu_s"] = serve.cpu_s() - cpu0
    out["rss_watching_mb"] = serve.memory_mb()
    note(f"idle CPU {out['idle_cpu_s']:.3f} s over {args.idle_s} s, RSS {out['rss_watching_mb']:.0f} MB")
    if args.extract:
        tarball = make_tarball(work, args.extract)
        out["extract"] = extraction(serve, work / "config.yaml", root, emu, tarball, args.extract, save_rel)
        note(f"extraction: { {k: v for k, v in out['extract'].items() if k != 'lat'} }")
        wait_until(lambda: Chats(emu).count() >= args.extract, 900, "the extracted files' requests", 0.2)
    if args.checkout:
        _WAIT.wait(5.0)
        # The files git rewrites: a generated change may leave a file's text as it was.
        differ = len(git(root, "diff", "--name-only", "A", "B").splitlines())
        out["checkout_b"] = checkout(serve, root, emu, "B", differ, changed)
        note(f"checkout B: {out['checkout_b']}")
        out["checkout_a"] = checkout(serve, root, emu, "A", differ, 0)
        note(f"checkout A: {out['checkout_a']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000, help="the second size for the growth rows (0: skip)")
    parser.add_argument("--stdlib-files", type=int, default=100_000, help="0: skip the stdlib tree")
    parser.add_argument("--extract", type=int, default=20_000)
    parser.add_argument("--checkout", type=int, default=10_000)
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--prepare", action="store_true",
                        help="only write the trees into --work (kept); a later run with the same --work uses them")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS-scale.md"))
    args = parser.parse_args()
    configure_logging("warning", "console")  # the bench's own process: the emulator and the in-process scans
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    load = os.getloadavg()
    results = {}
    try:
        if args.files:
            results["big"] = run_tree("generated", args.files, work / "big", args, serve_phases=True)
        if args.small:
            results["small"] = run_tree("generated", args.small, work / "small", args, serve_phases=False)
        if args.stdlib_files:
            results["stdlib"] = run_tree("stdlib", args.stdlib_files, work / "stdlib", args, serve_phases=False)
    finally:
        if not (args.keep or args.prepare):
            shutil.rmtree(work, ignore_errors=True)
        if args.prepare:
            return
        args.out.with_suffix(".json").write_text(json.dumps(
            {"results": results, "load": [load, os.getloadavg()]}, indent=1, default=str))
    try:
        from bench.scale_report import report
    except ImportError:
        from scale_report import report
    text = report(results, args, load, os.getloadavg())
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
