"""Cost grows with what changed: subtree lookups use the path index, a bulk batch is one set
(one walk, one diff, no path handled twice), and a save is indexed while bulk work runs.

Store cost is counted in SQLite virtual-machine steps (``set_progress_handler``), which is
what a full table scan multiplies; no wall-clock timing is asserted."""

from __future__ import annotations

import collections
import sqlite3
from pathlib import Path

import pytest

from llmc_rag_service.index.scanner import Scanner, top_paths
from llmc_rag_service.index.scheduler import ScanScheduler
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.jobs import PRIORITY_BACKFILL, PRIORITY_LIVE, JobQueue
from tests.helpers import make_config, wait_for, write_tree
from tests.live import Live

STEP = 100  # VM instructions per progress callback


class StepCounter:
    """Counts SQLite VM steps (in units of STEP) on one connection while active."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn, self.steps = conn, 0

    def _tick(self) -> int:
        self.steps += 1
        return 0

    def __enter__(self) -> StepCounter:
        self.conn.set_progress_handler(self._tick, STEP)
        return self

    def __exit__(self, *exc) -> None:
        self.conn.set_progress_handler(None, STEP)


def fill_store(store: Store, repo_id: int, count: int, prefix: str = "other") -> None:
    """``count`` stored files (no spans) under ``prefix/``, as a scan of a large tree leaves them."""
    with store.write() as tx:
        for i in range(count):
            store.put_file(tx, repo_id, f"{prefix}/d{i // 100:03}/f{i:05}.py", size=10, mtime_ns=1,
                           content_hash="0" * 64, language="python", skipped=None, spans=None)


def new_store(tmp_path: Path, name: str) -> tuple[Store, JobQueue, Path]:
    root = tmp_path / name
    root.mkdir()
    store = Store(tmp_path / f"{name}.db")
    return store, JobQueue(store, "m"), root


def test_subtree_lookup_cost_does_not_grow_with_the_repo(tmp_path):
    """Looking up one path or one subtree reads index ranges: the same cost with 200 or 20,000 stored files."""
    costs = []
    for count in (200, 20_000):
        store, _, root = new_store(tmp_path, f"r{count}")
        repo_id = store.repo_id(root)
        fill_store(store, repo_id, count)
        fill_store(store, repo_id, 5, prefix="src/pkg")
        with StepCounter(store.conn) as counter:
            for _ in range(20):
                assert len(store.files(repo_id, under="src/pkg")) == 5
                assert len(store.files(repo_id, under="src/pkg/d000/f00003.py")) == 1
                assert store.files(repo_id, under="src/pk") == {}  # a prefix that is not a directory
        costs.append(counter.steps)
        store.close()
    assert costs[1] <= costs[0] * 1.5, costs


def extracted_tree(root: Path, dirs: int, per_dir: int) -> list[str]:
    """An archive extracted into ``new/``: the event paths a watcher reports for it
    (the top directory, each subdirectory and each file)."""
    files = {f"new/s{d:02}/f{i:03}.py": f"def f_{d}_{i}():\n    return {i}\n" for d in range(dirs) for i in range(per_dir)}
    write_tree(root, files)
    return ["new", *{rel.rpartition("/")[0] for rel in files}, *files]


def test_a_bulk_batch_is_one_set_each_path_handled_once(tmp_path, monkeypatch):
    """A batch holding a new directory and every path below it walks the directory once and handles each file once."""
    store, queue, root = new_store(tmp_path, "repo")
    scanner = Scanner(store, queue, root)
    batch = extracted_tree(root, 10, 30)
    handled: collections.Counter[str] = collections.Counter()
    real_update = scanner._update

    def update(relpath, *args):
        handled[relpath] += 1
        return real_update(relpath, *args)

    monkeypatch.setattr(scanner, "_update", update)
    result = scanner.process_paths(batch)
    assert result.changed == 300 and result.jobs == 300
    assert len(handled) == 300 and set(handled.values()) == {1}
    assert top_paths(batch) == ["new"]
    store.close()


def test_a_bulk_batch_costs_what_it_holds_not_what_the_repo_holds(tmp_path):
    """The store work for a 300-file batch is the same in a repo of 200 or of 10,000 other files."""
    costs = []
    for count in (200, 10_000):
        store, queue, root = new_store(tmp_path, f"r{count}")
        scanner = Scanner(store, queue, root)
        fill_store(store, scanner.repo_id, count)
        batch = extracted_tree(root, 10, 30)
        with StepCounter(store.conn) as counter:
            scanner.process_paths(batch)
            for path in batch[-100:]:  # the same files reported again: re-stat'ed, unchanged
                scanner.process_paths([path])
        costs.append(counter.steps)
        store.close()
    assert costs[1] <= costs[0] * 1.5, costs


def test_top_paths_keeps_only_paths_without_an_ancestor_in_the_batch():
    """Siblings whose names share a prefix ("a", "a-b", "a.txt") are not taken for ancestors."""
    assert top_paths(["a/c", "a", "a-b", "a-b/x", "a.txt", "b/c/d", "b/c", "z"]) == ["a", "a-b", "a.txt", "b/c", "z"]


@pytest.mark.timeout(60)
def test_a_save_is_indexed_while_a_bulk_batch_is_indexed(tmp_path):
    """A save queued behind a large path batch (an extracted archive) is indexed between its
    files at live priority, while the batch's own jobs get backfill priority."""
    root = tmp_path / "repo"
    root.mkdir()
    live = Live(make_config(tmp_path, "http://127.0.0.1:9", [root]))
    batch = extracted_tree(root, 10, 40)
    write_tree(root, {"saved.py": "def saved():\n    return 'now'\n"})
    scanner, events = live.scanner, []
    real_paths = scanner.process_paths

    def process_paths(paths, priority, between=None, new_priority=None):
        events.append(("start", len(paths), len(live.files())))
        result = real_paths(paths, priority, between, new_priority)
        events.append(("end", len(paths), len(live.files())))
        return result

    scanner.process_paths = process_paths
    indexer = ScanScheduler(live.pipeline.scanners.get)
    indexer.put_paths(root, set(batch))
    indexer.put_paths(root, {"saved.py"})
    indexer.start()
    try:
        wait_for(lambda: ("end", len(batch), 401) in events, 30, "the bulk batch")
    finally:
        indexer.stop()
        indexer.join(10)
    assert [e[:2] for e in events] == [("start", len(batch)), ("start", 1), ("end", 1), ("end", len(batch))]
    assert events[1][2] < 10  # indexed right after the batch's first file(s)
    priorities = dict(live.store.conn.execute(
        "SELECT f.path, j.priority FROM jobs j JOIN spans s ON s.span_hash = j.span_hash "
        "JOIN files f ON f.id = s.file_id").fetchall())
    live.pipeline.close(0)
    assert priorities.pop("saved.py") == PRIORITY_LIVE
    assert set(priorities.values()) == {PRIORITY_BACKFILL}


def test_in_a_burst_new_files_queue_behind_a_save(tmp_path):
    """A small batch seen during a burst (the tail of an extraction): files new to the store get
    backfill priority, while a saved file the store held keeps live priority."""
    store, queue, root = new_store(tmp_path, "repo")
    scanner = Scanner(store, queue, root)
    write_tree(root, {"kept.py": "def kept():\n    return 1\n"})
    scanner.full_scan()
    write_tree(root, {"kept.py": "def kept():\n    return 2\n", "new/x.py": "def x():\n    return 3\n"})
    scanner.process_paths(["kept.py", "new/x.py"], PRIORITY_LIVE, new_priority=PRIORITY_BACKFILL)
    rows = store.conn.execute("SELECT f.path, j.priority FROM jobs j JOIN spans s ON s.span_hash = j.span_hash "
                              "JOIN files f ON f.id = s.file_id WHERE j.state = 'pending'").fetchall()
    store.close()
    assert dict(rows) == {"kept.py": PRIORITY_LIVE, "new/x.py": PRIORITY_BACKFILL}


@pytest.mark.timeout(30)
def test_watch_set_marks_batches_of_a_burst(tmp_path):
    """Batches polled while more than BURST_PATHS paths came within BURST_S seconds are marked burst;
    a lone save on a quiet repo is not."""
    from llmc_rag_service.config import WatchConfig
    from llmc_rag_service.index.ignore import RepoIgnore
    from llmc_rag_service.watch.watchset import BURST_PATHS, WatchSet

    root = tmp_path / "repo"
    root.mkdir()
    watches = WatchSet(WatchConfig(debounce_ms=20))
    watches.start(root, RepoIgnore(root))
    try:
        write_tree(root, {"one.py": "x = 1\n"})
        first = wait_for(lambda: watches.poll(), 10, "the lone save")
        assert [w.burst for w in first] == [False]
        write_tree(root, {f"gen/f{i:03}.py": f"x = {i}\n" for i in range(BURST_PATHS * 2)})
        seen: list = []
        wait_for(lambda: seen.extend(watches.poll()) or sum(len(w.paths) for w in seen) > BURST_PATHS * 2, 10)
        assert seen[-1].burst
    finally:
        watches.stop_all()
