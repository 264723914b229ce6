"""Two lanes: a save goes ahead of backfill, both in the indexer (a live batch is indexed between
the files of a running full scan) and in the queue (its job is claimed before waiting backfill)."""

from __future__ import annotations

import pytest

from llmc_rag_service.index.scheduler import ScanScheduler
from llmc_rag_service.store.jobs import PRIORITY_LIVE
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
