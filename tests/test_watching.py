"""The WatchSet facade end to end (real observer, scanner, queue, workers, emulator): moves and
deletes, renamed directories, lost events, the periodic reconcile, .gitignore edits, and the
polling fallback when inotify hits its watch limit."""

from __future__ import annotations

import ctypes
import errno
import os
import threading

import pytest
from structlog.testing import capture_logs
from watchdog.observers import inotify_c

from llmc_rag_service.config import WatchConfig
from llmc_rag_service.index.ignore import RepoIgnore
from llmc_rag_service.testing.clock import ManualClock
from llmc_rag_service.watch.watchset import RESTART_RETRY_S, WatchSet
from tests.helpers import make_config, wait_for, write_tree
from tests.live import Live, chats, now_wall

A = "def f(x):\n    return x\n\n\ndef g(y):\n    return y\n"


@pytest.fixture
def live(tmp_path, ollama):
    root = tmp_path / "repo"
    write_tree(root, {"src/a.py": A, "src/sub/b.py": "def b():\n    return 'b'\n", "c.py": "def c():\n    pass\n"})
    lv = Live(make_config(tmp_path, ollama.url, [root]))
    lv.enrich_existing()
    lv.start()
    yield lv
    lv.close()


def test_renamed_file_keeps_its_enrichments(live, ollama):
    """A renamed file is indexed under its new name with no job and no request to the model."""
    t0, before = now_wall(), len(chats(ollama))
    os.rename(live.root / "src/a.py", live.root / "src/renamed.py")
    live.settle()
    assert [s["name"] for s in live.spans_of("src/renamed.py")] == ["f", "g"]
    assert live.spans_of("src/a.py") == [] and live.jobs_since(t0) == [] and len(chats(ollama)) == before


def test_renamed_directory_is_followed(live, ollama):
    """A directory renamed inside the repo moves its files' spans, and a later edit inside it is picked up."""
    t0 = now_wall()
    os.rename(live.root / "src", live.root / "lib")
    live.settle()
    assert set(live.files(under="lib")) == {"lib/a.py", "lib/sub/b.py"} and live.files(under="src") == {}
    assert live.jobs_since(t0) == []
    (live.root / "lib/sub/b.py").write_text("def b():\n    return 'moved'\n")
    live.settle()
    assert [s["name"] for s in live.spans_of("lib/sub/b.py")] == ["b"] and len(live.jobs_since(t0)) == 1


def test_deleted_directory_drops_spans_and_cancels_pending_jobs(live, ollama):
    """Deleting a directory whose files have pending jobs drops their spans and jobs; nothing is sent for them."""
    t0, before = now_wall(), len(chats(ollama))
    (live.root / "src/sub/b.py").write_text("def b():\n    return 'pending'\n")
    live.settle()
    assert len(live.jobs_since(t0)) == 1
    for rel in ("src/sub/b.py", "src/a.py"):
        (live.root / rel).unlink()
    os.rmdir(live.root / "src/sub")
    os.rmdir(live.root / "src")
    live.settle()
    assert live.files(under="src") == {} and live.jobs_since(t0) == []
    live.start_workers()
    wait_for(live.drained, 10, "queue drained")
    assert len(chats(ollama)) == before


def test_gitignore_edit_drops_and_restores_files_at_once(live, ollama):
    """A file newly ignored by .gitignore loses its spans and pending job; un-ignoring it brings it back; a secret stays out whatever .gitignore says."""
    t0 = now_wall()

    def c_jobs() -> int:
        texts = [live.pipeline.store.conn.execute("SELECT text FROM span_texts WHERE span_hash = ?",
                                                (j["span_hash"],)).fetchone()[0] for j in live.jobs_since(t0)]
        return sum("'pending'" in t for t in texts)

    (live.root / "c.py").write_text("def c():\n    return 'pending'\n")
    (live.root / ".env").write_text("TOKEN=x\n")
    live.settle()
    assert c_jobs() == 1
    (live.root / ".gitignore").write_text("c.py\n!.env\n")
    wait_for(lambda: "c.py" not in live.files(), 10, "c.py dropped")
    assert c_jobs() == 0
    (live.root / ".gitignore").write_text("!.env\n")
    wait_for(lambda: "c.py" in live.files(), 10, "c.py back")
    live.settle()
    assert c_jobs() == 1 and ".env" not in live.files()


def test_lost_events_and_a_dead_observer_lead_to_a_rescan_and_a_restart(live):
    """An observer thread that dies is restarted and its repo rescanned, so a change made meanwhile is found."""
    watcher = live.pipeline.watches.watchers[live.root]
    watcher._observer.stop()
    watcher._observer.join(5)
    (live.root / "c.py").write_text("def c():\n    return 'missed'\n")
    wait_for(lambda: any(w.kind == "full" for w in live.work), 10, "a rescan")
    wait_for(watcher.is_alive, 10, "the restarted watcher")
    live.settle()
    assert "missed" in live.pipeline.store.span_text(live.spans_of("c.py")[0]["span_hash"])["text"]


def test_reconcile_runs_every_reconcile_s_and_reads_nothing_when_unchanged(tmp_path, monkeypatch):
    """poll() emits a full scan every reconcile_s; on an unchanged repo that scan reads no file."""
    root = tmp_path / "repo"
    write_tree(root, {"a.py": A})
    watching = WatchSet(WatchConfig(debounce_ms=50, reconcile_s=0.1))
    watching.start(root, RepoIgnore(root))
    try:
        fulls = []
        wait_for(lambda: fulls.extend(w for w in watching.poll() if w.kind == "full") or len(fulls) >= 2, 5)
    finally:
        watching.stop_all()
    live = Live(make_config(tmp_path, "http://127.0.0.1:9", [root]))
    live.scanner.full_scan()
    reads = []
    monkeypatch.setattr(live.scanner, "_read", lambda rel: reads.append(rel))
    result = live.scanner.full_scan()
    assert result.seen == 1 and reads == [] and result.jobs == 0
    live.pipeline.close(0)


def test_a_root_retried_while_missing_leaks_no_thread_and_no_descriptor(tmp_path):
    """A configured root that is missing is retried every RESTART_RETRY_S seconds; 20 retries leave no
    inotify reader thread and no file descriptor behind (watchdog 7 makes both when an observer is made:
    each retry leaked one thread and 3 fds, an unmounted repo would exhaust the daemon's fds)."""
    root = tmp_path / "not-yet"
    clock = ManualClock()
    watching = WatchSet(WatchConfig(), clock=clock)
    before, fds = set(threading.enumerate()), len(os.listdir("/proc/self/fd"))
    try:
        with capture_logs() as logs:
            watching.start(root, RepoIgnore(root))
            for _ in range(20):
                clock.advance(RESTART_RETRY_S + 0.1)
                assert watching.poll() == []
        assert [e["event"] for e in logs] == ["repo_unwatchable"]
        assert [t.name for t in threading.enumerate() if t not in before] == []
        assert len(os.listdir("/proc/self/fd")) == fds
        write_tree(root, {"a.py": A})  # it appears: watched again, and a full scan is due
        clock.advance(RESTART_RETRY_S + 0.1)
        assert [w.kind for w in watching.poll()] == ["full"]
    finally:
        watching.stop_all()


@pytest.mark.timeout(30)
def test_inotify_watch_limit_falls_back_to_polling(tmp_path, monkeypatch):
    """When a watch cannot be added (ENOSPC), one error with the sysctl hint is logged, degraded() says polling, and an edit is still reported."""
    root = tmp_path / "repo"
    write_tree(root, {"src/deep/a.py": A})
    real_add = inotify_c.inotify_add_watch

    def add_watch(fd, path, mask):  # the kernel's answer once max_user_watches is reached
        if path != os.fsencode(str(root)):
            ctypes.set_errno(errno.ENOSPC)
            return -1
        return real_add(fd, path, mask)

    monkeypatch.setattr(inotify_c, "inotify_add_watch", add_watch)
    watching = WatchSet(WatchConfig(debounce_ms=50), poll_interval_s=0.1)
    with capture_logs() as logs:
        watching.start(root, RepoIgnore(root))
    try:
        errors = [e for e in logs if e["log_level"] == "error"]
        assert len(errors) == 1 and "sysctl fs.inotify.max_user_watches=524288" in errors[0]["hint"]
        assert watching.degraded() == [f"degraded: polling {root} (inotify watch limit)"]
        (root / "src/deep/a.py").write_text(A + "\n\ndef h():\n    pass\n")
        seen: set = set()
        wait_for(lambda: seen.update(p for w in watching.poll() for p in w.paths) or "src/deep/a.py" in seen, 10)
        assert watching.health() is None
    finally:
        watching.stop_all()
