"""Benchmark of live watching with the real ``llmc-rag serve`` process and the Ollama emulator.

On a synthetic repo of N files (default 10,000, one function each, in 100 directories):

(a) save -> request at the emulator: p50/p95 over 50 saves (time from the write to the
    request's arrival, both on this process's monotonic clock);
(b) daemon CPU seconds over 60 s idle (utime + stime of /proc/PID/stat);
(c) restart on the unchanged repo: catch-up time (process start -> ``scan_done``) and
    requests sent (must be 0);
(d) resident memory (VmRSS) after the catch-up.

Usage: ``python -m bench.watch [--files 10000] [--idle-s 60] [--out bench/RESULTS-watch.md]``.
Prints a markdown table and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml


from llmc_rag_service.config import load_config
from llmc_rag_service.service.notify import child_env
from llmc_rag_service.service.status import status_report
from llmc_rag_service.testing.emulator import OllamaEmulator

DEBOUNCE_MS = 500
_WAIT = threading.Event()  # never set: waits with a timeout


def wait_until(cond, timeout_s: float, what: str, step_s: float = 0.005):
    deadline = time.monotonic() + timeout_s
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s} s waiting for {what}")
        _WAIT.wait(step_s)
    return value


def make_repo(root: Path, n: int) -> None:
    for i in range(n):
        path = root / f"d{i % 100:02}" / f"m{i:05}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"def func_{i}(x):\n    return x + {i}\n")


def write_config(tmp: Path, url: str, root: Path) -> Path:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp / "state"), "repos": [{"path": str(root)}],
        "ollama": {"url": url, "model": "test-model", "concurrency": 4, "timeout_s": 60},
        "watch": {"debounce_ms": DEBOUNCE_MS}, "logging": {"level": "info", "format": "json"}}))
    return path


class Serve:
    def __init__(self, config: Path, log: Path):
        self.started = time.monotonic()
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "llmc_rag_service", "serve", "-c", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=open(log, "ab"), env=child_env())

    def events(self, name: str) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                record = json.loads(line[line.index("{"):])
            except ValueError:
                continue
            if record.get("event") == name:
                out.append(record)
        return out

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def chats(emu: OllamaEmulator) -> list:
    return [r for r in emu.requests if r.path == "/api/chat"]


def save_latencies(emu: OllamaEmulator, root: Path, n_files: int, saves: int) -> list[float]:
    out = []
    for k in range(saves):
        i = (k * 197) % n_files
        path = root / f"d{i % 100:02}" / f"m{i:05}.py"
        marker = f"saved_{k}_{time.time_ns()}"
        t0 = time.monotonic()
        path.write_text(f"def func_{i}(x):\n    return '{marker}'\n")
        req = wait_until(lambda: next((r for r in reversed(chats(emu))
                                       if marker in r.json["messages"][-1]["content"]), None), 30, marker)
        out.append(req.t_start - t0)
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run(n_files: int, idle_s: float, saves: int) -> list[tuple[str, str, str, str]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    root = tmp / "repo"
    make_repo(root, n_files)
    with OllamaEmulator() as emu:
        config_path = write_config(tmp, emu.url, root)
        config = load_config(config_path)
        serve = Serve(config_path, tmp / "serve1.log")
        t_full = time.monotonic()
        wait_until(lambda: (t := status_report(config)["totals"])["spans"] >= n_files
                   and t["enriched"] == t["spans"], 900, "initial enrichment", 0.5)
        print(f"initial index + enrichment of {n_files} files: {time.monotonic() - t_full:.1f} s", file=sys.stderr)
        lat = save_latencies(emu, root, n_files, saves)
        _WAIT.wait(2.0)  # let the last save's work finish before measuring idle
        cpu0 = serve.cpu_s()
        _WAIT.wait(idle_s)
        idle_cpu = serve.cpu_s() - cpu0
        serve.stop()
        before = len(chats(emu))
        serve = Serve(config_path, tmp / "serve2.log")
        wait_until(lambda: serve.events("scan_done"), 60, "catch-up scan_done", 0.02)
        catch_up_s = time.monotonic() - serve.started
        scan_s = serve.events("scan_done")[0]["duration_s"]
        _WAIT.wait(3.0)
        sent = len(chats(emu)) - before
        rss = serve.rss_mb()
        serve.stop()
    target_p95 = DEBOUNCE_MS + 150
    return [
        ("save -> request p50", f"{pct(lat, 50) * 1000:.0f} ms", "", ""),
        ("save -> request p95", f"{pct(lat, 95) * 1000:.0f} ms", f"<= {target_p95} ms",
         "ok" if pct(lat, 95) * 1000 <= target_p95 else "MISSED"),
        (f"idle CPU over {idle_s:.0f} s", f"{idle_cpu:.3f} s ({idle_cpu / idle_s * 100:.3f} % of a core)",
         "<= 0.1 %", "ok" if idle_cpu / idle_s <= 0.001 else "MISSED"),
        ("restart: catch-up (process start -> scan done)", f"{catch_up_s:.2f} s (scan {scan_s:.2f} s)",
         "<= 2 s", "ok" if catch_up_s <= 2 else "MISSED"),
        ("restart: requests sent", str(sent), "0", "ok" if sent == 0 else "MISSED"),
        ("RSS after catch-up", f"{rss:.0f} MB", "<= 120 MB", "ok" if rss <= 120 else "MISSED"),
    ]


def table(rows, n_files: int, saves: int) -> str:
    lines = [f"Synthetic repo: {n_files} files, one function each; debounce {DEBOUNCE_MS} ms; "
             f"{saves} saves; emulator latency 0.", "",
             "| measure | result | target | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--saves", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("RESULTS-watch.md"))
    args = parser.parse_args()
    text = table(run(args.files, args.idle_s, args.saves), args.files, args.saves)
    print(text)
    args.out.write_text("# bench/watch.py results\n\n" + text)


if __name__ == "__main__":
    main()
