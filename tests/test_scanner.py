"""Scanner behaviours the live watching relies on: nothing sent for content that is gone (also when
a worker already claimed its job), the between-files callback, and stat-only rescans."""

from __future__ import annotations

import pytest

from tests.helpers import make_config, wait_for, write_tree
from tests.live import Live, chats


@pytest.fixture
def live(tmp_path, ollama):
    root = tmp_path / "repo"
    write_tree(root, {"src/e.py": "def r():\n    return 2\n", "keep.py": "def k():\n    pass\n"})
    lv = Live(make_config(tmp_path, ollama.url, [root]))
    yield lv
    lv.engine.close(1.0)


def test_job_claimed_before_its_file_was_deleted_is_released_unsent(live, ollama):
    """A worker that claimed a job whose file was deleted right after the claim re-reads the span, finds it gone and sends nothing."""
    (live.root / "keep.py").unlink()
    live.scanner.full_scan()
    queue, claimed = live.engine.queue, []
    real_claim = queue.claim

    def claim_then_delete():  # the file is deleted between the worker's claim and its read
        job = real_claim()
        if job is not None and not claimed:
            claimed.append(job)
            (live.root / "src/e.py").unlink()
            live.scanner.process_paths({"src/e.py"})
        return job

    queue.claim = claim_then_delete
    live.start_workers()
    wait_for(lambda: claimed and live.engine.store.conn.execute(
        "SELECT state FROM jobs WHERE id = ?", (claimed[0].id,)).fetchone()[0] == "pending", 10, "the release")
    wait_for(lambda: live.engine.pool.in_flight == 0, 10, "no request in flight")
    assert chats(ollama) == [] and queue.counts()["pending"] == 0


def test_pending_jobs_of_a_deleted_file_are_cancelled(live):
    """Deleting a file cancels its pending jobs in the same transaction as its spans."""
    live.scanner.full_scan()
    (live.root / "src/e.py").unlink()
    result = live.scanner.process_paths({"src/e.py"})
    assert result.deleted == 1
    assert live.engine.queue.counts()["pending"] == 1  # keep.py's only
    rows = live.engine.store.conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'pending'").fetchone()
    assert rows[0] == 1


def test_between_callback_runs_per_file_and_can_abort_the_scan(live):
    """full_scan calls `between` after each file; an exception from it stops the scan with the files so far kept."""
    calls: list[int] = []

    def between() -> None:
        calls.append(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        live.scanner.full_scan(between=between)
    assert calls == [1] and len(live.files()) == 1
    result = live.scanner.full_scan(between=lambda: calls.append(1))
    assert result.seen == 2 and len(calls) == 3 and len(live.files()) == 2
