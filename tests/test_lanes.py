"""Two lanes: a save goes ahead of backfill, both in the indexer (a live batch is indexed between
the files of a running full scan) and in the queue (its job is claimed before waiting backfill)."""

from __future__ import annotations

import shutil

import pytest

from llmc_rag_service.index.scheduler import ScanScheduler
from llmc_rag_service.store.jobs import PRIORITY_BACKFILL, PRIORITY_LIVE
from tests.helpers import make_config, wait_for, write_tree
from tests.live import Live, chats, user_text
from llmc_rag_service.testing.emulator import OllamaEmulator


def many_files(n: int) -> dict[str, str]:
    return {f"bulk/f{i:04}.py": f"def bulk_{i}():\n    return {i}\n" for i in range(n)}


def test_live_batch_is_indexed_during_a_full_scan(tmp_path):
    """A path batch queued behind a full scan is indexed after the scan's first file, not after the whole scan."""
    root = tmp_path / "repo"
    write_tree(root, many_files(200))
    live = Live(make_config(tmp_path, "http://127.0.0.1:9", [root]))
    scanner = live.scanner
    events: list[tuple[str, int]] = []
    real_full, real_paths = scanner.full_scan, scanner.process_paths

    def full_scan(*args, **kwargs):
        events.append(("full_start", len(live.files())))
        result = real_full(*args, **kwargs)
        events.append(("full_end", len(live.files())))
        return result

    def process_paths(paths, priority, **kwargs):
        events.append(("paths", len(live.files())))
        return real_paths(paths, priority, **kwargs)

    scanner.full_scan, scanner.process_paths = full_scan, process_paths
    write_tree(root, {"saved.py": "def saved():\n    return 'now'\n"})
    indexer = ScanScheduler(live.pipeline.scanners.get)
    indexer.put_full(root)
    indexer.put_paths(root, {"saved.py"})
    indexer.start()
    try:
        wait_for(lambda: ("full_end", 201) in events, 30, "the full scan")
    finally:
        indexer.stop()
        indexer.join(10)
        live.pipeline.close(0)
    assert [e[0] for e in events] == ["full_start", "paths", "full_end"]
    assert events[1][1] < 5  # indexed right after the scan's first file(s)
    row = live.pipeline.store.conn.execute(
        "SELECT j.priority FROM jobs j JOIN spans s ON s.span_hash = j.span_hash JOIN files f ON f.id = s.file_id "
        "WHERE f.path = 'saved.py'").fetchone()
    assert row["priority"] == PRIORITY_LIVE


@pytest.mark.timeout(40)
def test_a_save_is_enriched_before_the_remaining_backfill(tmp_path):
    """While a backfill runs against a slow server, a saved file's job is sent before the backfill jobs still waiting."""
    root = tmp_path / "repo"
    write_tree(root, many_files(80))
    with OllamaEmulator(latency_s=0.05) as emu:
        live = Live(make_config(tmp_path, emu.url, [root], ollama={"concurrency": 1}))
        try:
            live.start()
            live.start_workers()
            live.pipeline.scheduler.put_full(root)
            wait_for(lambda: len(chats(emu)) >= 3, 20, "backfill under way")
            (root / "saved.py").write_text("def saved():\n    return 'now'\n")
            wait_for(lambda: any("return 'now'" in user_text(r) for r in chats(emu)), 20, "the save's request")
            order = [("saved" if "return 'now'" in user_text(r) else "bulk") for r in chats(emu)]
        finally:
            live.close()
    position = order.index("saved")
    # Everything before the save's request was backfill; at most the one request in flight
    # after the save was indexed went ahead of it, and most of the backfill came after.
    assert position < 80 // 2 and order.count("bulk") < 80


def test_a_save_goes_ahead_of_an_extractions_small_batches(tmp_path):
    """During bulk work, a save batch queued behind many small burst batches of new files is indexed first,
    and those files are indexed afterwards as bulk work at backfill priority."""
    root = tmp_path / "repo"
    write_tree(root, {**many_files(30), "saved.py": "def saved():\n    return 'old'\n"})
    live = Live(make_config(tmp_path, "http://127.0.0.1:9", [root]))
    scanner = live.scanner
    scanner.full_scan()  # saved.py is stored: its next change is a save
    write_tree(root, {**{f"big/f{i:03}.py": f"def big_{i}():\n    return {i}\n" for i in range(40)},
                      **{f"tail/t{i:03}.py": f"def tail_{i}():\n    return {i}\n" for i in range(100)},
                      "saved.py": "def saved():\n    return 'now'\n"})
    calls: list[tuple[list[str], int]] = []
    real_paths = scanner.process_paths

    def process_paths(paths, priority=PRIORITY_LIVE, **kwargs):
        calls.append((sorted(paths), priority))
        return real_paths(paths, priority, **kwargs)

    scanner.process_paths = process_paths
    indexer = ScanScheduler(live.pipeline.scanners.get)
    indexer.put_paths(root, {"big"})  # a directory extracted: bulk work
    for start in range(0, 100, 20):  # the extraction's tail, in small batches seen in a burst
        indexer.put_paths(root, {f"tail/t{i:03}.py" for i in range(start, start + 20)}, burst=True)
    indexer.put_paths(root, {"saved.py"}, burst=True)
    indexer.start()
    try:
        wait_for(lambda: len(live.files(under="tail")) == 100, 30, "the tail indexed")
    finally:
        indexer.stop()
        indexer.join(10)
        live.pipeline.close(0)
    assert calls[0] == (["big"], PRIORITY_BACKFILL)
    assert calls[1] == (["saved.py"], PRIORITY_LIVE)  # before any file of the tail
    assert all(priority == PRIORITY_BACKFILL for paths, priority in calls[2:])
    assert sum(len(paths) for paths, _ in calls[2:]) == 100  # the tail, merged into bulk work
    rows = live.pipeline.store.conn.execute(
        "SELECT DISTINCT j.priority FROM jobs j JOIN spans s ON s.span_hash = j.span_hash "
        "JOIN files f ON f.id = s.file_id WHERE f.path LIKE 'tail/%' AND j.kind = 'enrich'").fetchall()
    assert [r[0] for r in rows] == [PRIORITY_BACKFILL]


@pytest.mark.timeout(20)
def test_a_saves_request_is_sent_while_every_worker_waits_on_backfill(tmp_path):
    """With the only worker waiting on a slow backfill answer, a save's job is sent at once on the live slot
    (the server queues it), not after that answer."""
    root = tmp_path / "repo"
    write_tree(root, many_files(3))
    with OllamaEmulator(latency_s=30.0) as emu:
        live = Live(make_config(tmp_path, emu.url, [root], ollama={"concurrency": 1}))
        try:
            live.scanner.full_scan()  # backfill jobs
            live.start_workers()
            wait_for(lambda: len(chats(emu)) == 1, 5, "a backfill request in flight")
            (root / "saved.py").write_text("def saved():\n    return 'now'\n")
            live.scanner.process_paths(["saved.py"], PRIORITY_LIVE)
            live.pipeline.pool.notify_work()  # as the scan scheduler does after queueing jobs
            wait_for(lambda: any("return 'now'" in user_text(r) for r in chats(emu)), 3, "the save's request")
            sent = chats(emu)
            assert [r.t_end for r in sent[:1]] == [None]  # the backfill answer is still to come
        finally:
            live.pipeline.close(0)


def test_a_save_is_indexed_while_a_scan_forgets_a_removed_directory(tmp_path):
    """A full scan that forgets hundreds of removed files does it in chunks, serving a save that arrived
    meanwhile between them (one transaction for all would hold the store's writer lock, and the save)."""
    root = tmp_path / "repo"
    write_tree(root, {**{f"gone/g{i:04}.py": f"def gone_{i}():\n    return {i}\n" for i in range(600)},
                      "saved.py": "def saved():\n    return 'old'\n"})
    live = Live(make_config(tmp_path, "http://127.0.0.1:9", [root]))
    scanner, store = live.scanner, live.pipeline.store
    scanner.full_scan()
    shutil.rmtree(root / "gone")
    (root / "saved.py").write_text("def saved():\n    return 'now'\n")
    indexer = ScanScheduler(live.pipeline.scanners.get)
    order: list[str] = []
    real_delete, real_paths = store.delete_files, scanner.process_paths

    def delete_files(tx, repo_id, paths):
        if not order:
            indexer.put_paths(root, {"saved.py"})  # the save arrives while the deletion runs
        order.append("delete")
        return real_delete(tx, repo_id, paths)

    def process_paths(paths, priority=PRIORITY_LIVE, **kwargs):
        order.append("save")
        return real_paths(paths, priority, **kwargs)

    store.delete_files, scanner.process_paths = delete_files, process_paths
    indexer.put_full(root)
    indexer.start()
    try:
        wait_for(lambda: not live.files(under="gone") and "save" in order, 30, "the removed files forgotten")
    finally:
        indexer.stop()
        indexer.join(10)
        live.pipeline.close(0)
    assert order == ["delete", "save", "delete", "delete"]  # 600 files, 256 per transaction
