"""Every file-based case of tests/data/editor_saves.json, end to end: real files in a temp repo,
the real watchdog observer, scanner, queue and workers against the Ollama emulator (debounce 50 ms).

Per case: the 'before' files are indexed and enriched, the ops are applied, the pipeline settles,
then the workers run and the case's 'expect' is checked exactly. Workers are stopped while the
ops are applied, so jobs really wait in the queue (the delete-with-pending case)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.helpers import make_config, wait_for, write_tree
from tests.live import Live, chats, now_wall, user_text

CASES_FILE = Path(__file__).resolve().parent / "data" / "editor_saves.json"
_PACE = threading.Event()  # never set
FILE_CASES = [c for c in json.loads(CASES_FILE.read_text())["cases"] if isinstance(c["ops"], list)]


def apply_op(root: Path, op: list[str]) -> None:
    """One op of a case: write, rename, remove, touch or mkdir (paths relative to root)."""
    kind, rel, *rest = op
    path = root / rel
    if kind == "write":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rest[0])
    elif kind == "rename":
        os.rename(path, root / rest[0])
    elif kind == "remove":
        os.remove(path)
    elif kind == "touch":
        os.utime(path)
    elif kind == "mkdir":
        path.mkdir(parents=True)
    else:
        raise AssertionError(f"unknown op {kind}")


@pytest.fixture
def live_factory(tmp_path, ollama):
    made: list[Live] = []

    def make(files: dict[str, str]) -> Live:
        root = tmp_path / "repo"
        write_tree(root, files)
        live = Live(make_config(tmp_path, ollama.url, [root]))
        made.append(live)
        live.enrich_existing()
        return live.start()

    yield make
    for live in made:
        live.close()


def jobs_for(live: Live, relpath: str, t0: float) -> list[str]:
    """Names of the spans of ``relpath`` that got a job since ``t0``; for a file that no longer
    exists, one entry per job since ``t0`` whose span is in no file (it must have been cancelled)."""
    hashes = {row["span_hash"] for row in live.jobs_since(t0)}
    spans = live.spans_of(relpath)
    if spans:
        return [s["name"] for s in spans if s["span_hash"] in hashes]
    current = {r[0] for r in live.pipeline.store.conn.execute("SELECT span_hash FROM spans")}
    return [h for h in hashes if h not in current]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", FILE_CASES, ids=[c["id"] for c in FILE_CASES])
def test_editor_case_yields_exactly_the_expected_work(live_factory, ollama, case):
    """An editor's save sequence yields one job per changed span of the final content and nothing for temp, swap, lock, backup or unchanged content."""
    live = live_factory(case["before"])
    expect, root = case["expect"], live.root
    before_requests, t0 = len(chats(ollama)), now_wall()
    with capture_logs() as logs:
        for op in case["ops"]:
            apply_op(root, op)
        live.settle()
        live.start_workers()
        wait_for(live.drained, 15, "the case's jobs to be enriched")
    for relpath, count in expect.get("jobs_for", {}).items():
        assert len(jobs_for(live, relpath, t0)) == count, (relpath, jobs_for(live, relpath, t0))
    assert len(chats(ollama)) - before_requests == len(live.jobs_since(t0))
    for relpath in expect.get("no_spans_under", []):
        assert live.files(under=relpath) == {} and not live.spans_of(relpath)
    if "changed_spans" in expect:
        (target,) = expect["jobs_for"]
        assert sorted(jobs_for(live, target, t0)) == sorted(expect["changed_spans"])
    if expect.get("no_jobs_with_empty_content"):
        texts = [live.pipeline.store.conn.execute("SELECT text FROM span_texts WHERE span_hash = ?",
                                                (row["span_hash"],)).fetchone()[0] for row in live.jobs_since(t0)]
        assert texts and all(t.strip() for t in texts)
    if expect.get("no_error_logs"):
        assert [e for e in logs if e["log_level"] in ("error", "critical")] == []
    if "requests_for_deleted_content" in expect:
        gone = [op[2] for op in case["ops"] if op[0] == "write" and not (root / op[1]).exists() and op[2]]
        sent = [r for r in chats(ollama)[before_requests:] if any(g.strip() in user_text(r) for g in gone)]
        assert len(sent) == expect["requests_for_deleted_content"] == 0 and gone


@pytest.mark.timeout(30)
def test_byte_identical_resave_and_touch_are_skipped_at_debug(live_factory, ollama):
    """A byte-identical re-save or a touch creates no job and is logged at debug as skipped (unchanged)."""
    live = live_factory({"src/b.py": "def h():\n    pass\n"})
    t0, before = now_wall(), len(chats(ollama))
    with capture_logs() as logs:
        (live.root / "src/b.py").write_text("def h():\n    pass\n")
        live.settle()
        os.utime(live.root / "src/b.py", ns=(1, 1))
        live.settle()
    skipped = [e for e in logs if e["event"] == "file_skipped" and e.get("path") == "src/b.py"]
    assert len(skipped) == 2 and {(e["log_level"], e["reason"]) for e in skipped} == {("debug", "unchanged")}
    assert live.jobs_since(t0) == [] and len(chats(ollama)) == before


@pytest.mark.timeout(30)
def test_many_saves_in_a_row_coalesce_and_flush_under_a_continuous_stream(tmp_path, ollama):
    """A file rewritten continuously for longer than max_delay_ms is still processed before the stream stops, and only the final content gets a job."""
    root = tmp_path / "repo"
    write_tree(root, {"src/s.py": "def s():\n    return -1\n"})
    live = Live(make_config(tmp_path, ollama.url, [root], watch={"debounce_ms": 200, "max_delay_ms": 300}))
    try:
        live.enrich_existing()
        live.start()
        t0, i = now_wall(), 0
        # Each write comes well within the debounce, so only the cap can flush.
        while not any(w.kind == "paths" and "src/s.py" in w.paths for w in live.work):
            i += 1
            (root / "src/s.py").write_text(f"def s():\n    return {i}\n")
            _PACE.wait(0.02)  # the stream's rhythm (a write every 20 ms), not a wait for a result
            assert i < 400, "a continuous stream never flushed"
        (root / "src/s.py").write_text("def s():\n    return 'final'\n")
        live.settle()
        live.start_workers()
        wait_for(live.drained, 15, "enrichment")
        names = [s["name"] for s in live.spans_of("src/s.py")]
        assert names == ["s"]
        final_sent = [r for r in chats(ollama) if "return 'final'" in user_text(r)]
        assert len(final_sent) == 1 and len(live.jobs_since(t0)) < i / 2
    finally:
        live.close()
