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
    lv.pipeline.close(1.0)


def test_job_claimed_before_its_file_was_deleted_is_released_unsent(live, ollama):
    """A worker that claimed a job whose file was deleted right after the claim re-reads the span, finds it gone
    and sends nothing; the job it gives back is dropped."""
    (live.root / "keep.py").unlink()
    live.scanner.full_scan()
    queue, claimed = live.pipeline.queue, []
    real_claim = queue.claim_many

    def claim_then_delete(limit, *args, **kwargs):  # the file is deleted between the worker's claim and its read
        jobs = real_claim(limit, *args, **kwargs)
        if jobs and not claimed:
            claimed.extend(jobs)
            (live.root / "src/e.py").unlink()
            live.scanner.process_paths({"src/e.py"})
        return jobs

    queue.claim_many = claim_then_delete
    live.start_workers()
    # Released, its span gone: the job is dropped (no pending job outlives its span), not left pending.
    wait_for(lambda: claimed and live.pipeline.store.conn.execute(
        "SELECT state FROM jobs WHERE id = ?", (claimed[0].id,)).fetchone() is None, 10, "the release")
    wait_for(lambda: live.pipeline.pool.in_flight == 0, 10, "no request in flight")
    assert chats(ollama) == [] and queue.counts()["pending"] == 0


def test_pending_jobs_of_a_deleted_file_are_cancelled(live):
    """Deleting a file cancels its pending jobs in the same transaction as its spans."""
    live.scanner.full_scan()
    (live.root / "src/e.py").unlink()
    result = live.scanner.process_paths({"src/e.py"})
    assert result.deleted == 1
    assert live.pipeline.queue.counts()["pending"] == 1  # keep.py's only
    rows = live.pipeline.store.conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'pending'").fetchone()
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


# -- hostile trees (found by trying to break the daemon) ------------------------

def _scanner_for(tmp_path, root):
    from llmc_rag_service.store.jobs import JobQueue
    from llmc_rag_service.index.scanner import Scanner
    from llmc_rag_service.store.db import Store

    store = Store(tmp_path / "state" / "db")
    return Scanner(store, JobQueue(store, "m"), root), store


def test_non_utf8_file_name_is_skipped_and_the_scan_goes_on(tmp_path):
    """A file name with non-UTF-8 bytes is skipped with one log line; files after it are still indexed."""
    import os

    from structlog.testing import capture_logs

    root = tmp_path / "repo"
    root.mkdir()
    (root / "a_first.py").write_text("def a():\n    return 1\n")
    with open(os.path.join(os.fsencode(root), b"bad\xffname.py"), "w") as fh:
        fh.write("def bad():\n    return 2\n")
    (root / "z_last.py").write_text("def z():\n    return 3\n")
    scanner, store = _scanner_for(tmp_path, root)
    with capture_logs() as logs:
        scanner.full_scan()
        scanner.full_scan()
    assert sorted(store.files(scanner.repo_id)) == ["a_first.py", "z_last.py"]
    skipped = [e for e in logs if e["event"] == "file_skipped" and e.get("reason") == "undecodable_name"]
    assert len(skipped) == 1 and "bad" in skipped[0]["path"]
    store.close()


def test_a_very_deep_tree_is_walked_without_recursion_errors(tmp_path):
    """A tree deeper than the recursion limit is walked; the file at the bottom and the one after are indexed.

    The limit is lowered to 150 with a 300-deep tree (the same as 1,200 levels
    against the default 1,000, at a fraction of the time).
    """
    import os
    import sys

    root = tmp_path / "repo"
    deep = str(root)
    os.mkdir(deep)
    for _ in range(300):  # os.makedirs itself recurses per level
        deep = os.path.join(deep, "d")
        os.mkdir(deep)
    with open(os.path.join(deep, "bottom.py"), "w") as fh:
        fh.write("x = 1\n")
    (root / "z_last.py").write_text("y = 2\n")
    scanner, store = _scanner_for(tmp_path, root)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(150)
    try:
        scanner.full_scan()
    finally:
        sys.setrecursionlimit(limit)
    files = store.files(scanner.repo_id)
    assert "z_last.py" in files and any(p.endswith("/bottom.py") for p in files)
    store.close()


def test_fifo_is_never_read_and_logged(tmp_path):
    """A FIFO in the tree is skipped with a log line and does not block the scan."""
    import os

    from structlog.testing import capture_logs

    root = tmp_path / "repo"
    root.mkdir()
    os.mkfifo(root / "pipe.py")
    (root / "ok.py").write_text("x = 1\n")
    scanner, store = _scanner_for(tmp_path, root)
    with capture_logs() as logs:
        scanner.full_scan()
    assert list(store.files(scanner.repo_id)) == ["ok.py"]
    assert any(e.get("reason") == "not_a_regular_file" and e["path"] == "pipe.py" for e in logs)
    store.close()


def test_missing_root_keeps_what_is_stored(tmp_path):
    """A repo whose directory vanished (unmounted) keeps its stored files; an error names it."""
    import shutil

    from structlog.testing import capture_logs

    root = tmp_path / "repo"
    root.mkdir()
    (root / "a.py").write_text("x = 1\n")
    scanner, store = _scanner_for(tmp_path, root)
    scanner.full_scan()
    shutil.rmtree(root)
    with capture_logs() as logs:
        scanner.full_scan()
    assert list(store.files(scanner.repo_id)) == ["a.py"]
    assert [e for e in logs if e["event"] == "repo_missing" and e["log_level"] == "error"]
    store.close()


def test_one_failing_file_does_not_stop_the_scan(tmp_path, monkeypatch):
    """An unexpected error on one file is logged with its path and the other files are still indexed."""
    from structlog.testing import capture_logs

    from llmc_rag_service.index import scanner as scanner_mod

    root = tmp_path / "repo"
    root.mkdir()
    for name in ("a.py", "b.py", "c.py"):
        (root / name).write_text(f"{name[0]} = 1\n")
    scanner, store = _scanner_for(tmp_path, root)
    real = scanner_mod.spans_mod.split_file

    def flaky(relpath, data, **kw):
        if relpath == "b.py":
            raise RuntimeError("boom")
        return real(relpath, data, **kw)

    monkeypatch.setattr(scanner_mod.spans_mod, "split_file", flaky)
    with capture_logs() as logs:
        scanner.full_scan()
    assert sorted(store.files(scanner.repo_id)) == ["a.py", "c.py"]
    assert [e for e in logs if e["event"] == "file_failed" and e["path"] == "b.py"]
    store.close()
