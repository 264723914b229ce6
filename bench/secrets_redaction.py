"""Secret redaction: scanner speed, false positives, coverage, and what it adds to indexing.

Corpora:
- clean: the ``.py`` files of the running Python's standard library (sorted, up
  to ``--mb`` megabytes), taken to hold no real secret; every finding there is
  listed so a reader can judge it (test passwords like ``"sekrit"`` are findings
  of the password rule, redacting them is harmless).
- planted: ``tests/data/canaries`` (values in source files, and credential files
  by name and by content), from its ``manifest.json``.

Measured (best of ``--repeat`` rounds, every measure once per round; the machine may be shared):
- betterleaks alone on every span's text (MB/s of span text);
- the Redactor (betterleaks + own rules + bookkeeping), cold cache, per span and
  per whole file (the scanner may redact a file's text before cutting it);
- span cutting (``index.spans.split_file``) alone, and the slowdown redaction adds;
- a cold ``Scanner.full_scan`` (SQLite store, jobs) of the first ``--cold-mb``
  megabytes as the scanner runs it (each decoded file redacted, then cut), against
  the same scan with redaction switched off: the slowdown redaction adds to a cold index;
- coverage: planted values redacted (and found by betterleaks alone) per kind.

Usage (from the repo root): ``python bench/secrets_redaction.py [--mb 12] [--cold-mb 4] [--repeat 2]``.
Prints a markdown report on stdout (bench/RESULTS-secrets.md holds one). Not named
``secrets.py``: a script's folder comes first on ``sys.path``, so that name would
shadow the standard library's ``secrets`` module for everything the script imports.
"""

from __future__ import annotations

import argparse
import json
import logging
import sysconfig
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import betterleaks
import structlog

from llmc_rag_service.index.redact import Redaction, Redactor
from llmc_rag_service.index.scanner import Scanner
from llmc_rag_service.index.secret_files import is_secret_content, secret_file_kind
from llmc_rag_service.index.spans import SkipFile, split_file
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.jobs import JobQueue

CANARIES = Path(__file__).resolve().parents[1] / "tests" / "data" / "canaries"
MAX_FILE_BYTES = 1_048_576


def stdlib_files(limit_mb: float) -> list[tuple[str, bytes]]:
    """(relpath, bytes) of the stdlib's .py files (site-packages excluded), sorted, up to ``limit_mb``."""
    root, out, total = Path(sysconfig.get_paths()["stdlib"]), [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or not path.is_file():
            continue
        data = path.read_bytes()
        out.append((path.relative_to(root).as_posix(), data))
        total += len(data)
        if total >= limit_mb * 1e6:
            break
    return out


def best_times(repeat: int, runs: dict) -> dict[str, float]:
    """Shortest wall seconds of each named ``run()`` (a run that returns a float has
    timed itself); the runs take turns in every round, so a busy spell of a shared
    machine slows all of them, not one."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, run in runs.items():
            started = time.perf_counter()
            took = run()
            took = took if isinstance(took, float) else time.perf_counter() - started
            best[name] = min(best[name], took)
    return best


def cut(files: list[tuple[str, bytes]]) -> list[tuple[str, object]]:
    """Every span of ``files`` as (relpath, Span); skipped files give none."""
    spans = []
    for relpath, data in files:
        try:
            spans += [(relpath, span) for span in split_file(relpath, data, max_file_bytes=MAX_FILE_BYTES)]
        except SkipFile:
            pass
    return spans


def redact_spans(spans) -> list:
    redactor = Redactor()  # a fresh one: a cold cache, as in a first index
    return [(relpath, redactor.redact(span.text, path=relpath, first_line=span.start_line)) for relpath, span in spans]


class NoRedaction(Redactor):
    """The baseline of the cold index: every text passed through unscanned."""

    def redact(self, text: str, **_: object) -> Redaction:  # type: ignore[override]
        return Redaction(text, ())


def cold_scan_s(files: list[tuple[str, bytes]], redactor: Redactor) -> float:
    """CPU seconds (this process, the scanner library's threads included) of a first full
    scan of ``files`` into a new store, redacting with ``redactor``: on a shared machine
    the wall time of a scan mostly measures the other jobs."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        for relpath, data in files:
            (root / relpath).parent.mkdir(parents=True, exist_ok=True)
            (root / relpath).write_bytes(data)
        store = Store(Path(tmp) / "state.db")
        store.migrate()
        try:
            started = time.process_time()
            Scanner(store, JobQueue(store, "bench-model"), root, max_file_bytes=MAX_FILE_BYTES,
                    redactor=redactor).full_scan()
            return time.process_time() - started
        finally:
            store.close()


def library_lines(text: str) -> set[int]:
    """Lines (1-based) where betterleaks alone reports a value, components included."""
    lines = set()
    for found in betterleaks.scan_string(text):
        lines.add(found.location.start_line)
        for part in found.component_sets:
            lines |= {c.get("location", {}).get("start_line", 0) for c in part.get("components", [])}
    return lines


def coverage() -> tuple[list[str], list[str]]:
    """Markdown rows: per planted kind in source (planted, redacted, found by betterleaks
    alone, reported kinds), and per credential-file kind (planted, skipped)."""
    manifest = json.loads((CANARIES / "manifest.json").read_text())
    per_kind: dict[str, list] = defaultdict(lambda: [0, 0, 0, set()])
    for file in sorted({item["file"] for item in manifest["source"]}):
        text = (CANARIES / file).read_text()
        out, alone = Redactor().redact(text, path=file), library_lines(text)
        kinds_at = defaultdict(set)
        for found in out.findings:
            kinds_at[found.line].add(found.kind)
        for item in (i for i in manifest["source"] if i["file"] == file):
            line = text[:text.index(item["value"])].count("\n") + 1
            row = per_kind[item["kind"]]
            row[0] += 1
            row[1] += all(part not in out.text for part in item["value"].split("\n")) and line in kinds_at
            row[2] += line in alone
            row[3] |= kinds_at[line]
    source = [f"| {kind} | {p} | {r} | {a} | {', '.join(sorted(k)) or '-'} |"
              for kind, (p, r, a, k) in sorted(per_kind.items())]
    files = defaultdict(lambda: [0, 0, set()])
    for item in manifest["secret_files"]:
        relpath = item["file"].removeprefix("files/")
        how = secret_file_kind(relpath) or (
            "content" if is_secret_content(relpath, (CANARIES / item["file"]).read_bytes()) else None)
        row = files[f"{item['kind']} (by {item['by']})"]
        row[0] += 1
        row[1] += how is not None
        row[2].add(how or "MISSED")
    clean = [p for p in manifest["clean_files"]
             if secret_file_kind(p) or is_secret_content(p, (CANARIES / p).read_bytes())]
    file_rows = [f"| {kind} | {p} | {s} | {', '.join(sorted(h))} |" for kind, (p, s, h) in sorted(files.items())]
    file_rows.append(f"| clean config files taken for secret files | {len(manifest['clean_files'])} | "
                     f"{len(clean)} | {', '.join(clean) or '-'} |")
    return source, file_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=12.0, help="clean corpus size (MB of stdlib .py)")
    parser.add_argument("--cold-mb", type=float, default=4.0, help="part of it indexed cold into a store")
    parser.add_argument("--repeat", type=int, default=2, help="runs per timing; the best is kept")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    files, cold_files = stdlib_files(args.mb), stdlib_files(args.cold_mb)
    size_mb = sum(len(d) for _, d in files) / 1e6
    lines = sum(d.count(b"\n") for _, d in files)
    spans = cut(files)
    span_mb = sum(len(s.text.encode()) for _, s in spans) / 1e6
    texts = [(rel, data.decode("utf-8", "replace")) for rel, data in files]
    t = best_times(args.repeat, {
        "cut": lambda: cut(files),
        "lib": lambda: [betterleaks.scan_string(s.text) for _, s in spans],
        "span": lambda: redact_spans(spans),
        "file": lambda: [Redactor().redact(text, path=rel) for rel, text in texts],
        "cold": lambda: cold_scan_s(cold_files, NoRedaction()),
        "cold_red": lambda: cold_scan_s(cold_files, Redactor()),
    })
    cut_s, lib_s, red_s, file_s, cold_s, cold_red_s = (t[k] for k in ("cut", "lib", "span", "file", "cold", "cold_red"))
    redacted = redact_spans(spans)

    findings = [(rel, f) for rel, out in redacted for f in out.findings]
    source_rows, file_rows = coverage()
    print(f"Corpus: {len(files)} stdlib .py files, {size_mb:.1f} MB, {lines:,} lines, "
          f"{len(spans):,} spans ({span_mb:.1f} MB of span text); times are the best of {args.repeat} runs.\n")
    print("| measure | value |\n|---|---|")
    print(f"| betterleaks alone, per span | {span_mb / lib_s:.1f} MB/s ({lib_s:.2f} s) |")
    print(f"| Redactor per span (cold cache) | {span_mb / red_s:.1f} MB/s ({red_s:.2f} s) |")
    print(f"| Redactor per whole file | {size_mb / file_s:.1f} MB/s ({file_s:.2f} s) |")
    print(f"| span cutting alone (split_file) | {size_mb / cut_s:.2f} MB/s ({cut_s:.2f} s) |")
    print(f"| span cutting + redaction per span | {cut_s + red_s:.2f} s: **+{red_s / cut_s:.0%}** |")
    print(f"| span cutting + redaction per file | {cut_s + file_s:.2f} s: **+{file_s / cut_s:.0%}** |")
    print(f"| cold index without redaction (Scanner.full_scan, {args.cold_mb:g} MB, {len(cold_files)} files) | "
          f"{args.cold_mb / cold_s:.2f} MB/s of CPU ({cold_s:.2f} CPU s) |")
    print(f"| cold index as wired (each file redacted, then cut) | {args.cold_mb / cold_red_s:.2f} MB/s of CPU "
          f"({cold_red_s:.2f} CPU s): **{cold_red_s / cold_s - 1:+.0%}** |")
    print(f"| findings on the clean corpus | {len(findings)} = {len(findings) / lines * 1e4:.2f} per 10k lines "
          f"({', '.join(f'{d} {n}' for d, n in Counter(f.detector for _, f in findings).most_common()) or '-'}) |")
    print("\nFindings on the clean corpus (path:line kind detector):\n")
    for rel, found in findings:
        print(f"- `{rel}:{found.line}` {found.kind} ({found.detector})")
    print("\nPlanted values in source files:\n")
    print("| planted kind | planted | redacted (finding at its line, 0 bytes left) | betterleaks alone | reported kind |")
    print("|---|---|---|---|---|")
    print("\n".join(source_rows))
    print("\nCredential files (skipped by name, or by a head-only look at their keys):\n")
    print("| file kind | planted | skipped | how |\n|---|---|---|---|")
    print("\n".join(file_rows))


if __name__ == "__main__":
    main()
