"""The state file deleted, replaced, corrupt, foreign or read-only, and the write lock held long.

Each fault is said in one line naming the file, with the documented exit
status (74), and loses nothing: no traceback, no write into a damaged file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from structlog.testing import capture_logs

from llmc_rag_service import cli
from llmc_rag_service.models import Span
from llmc_rag_service.service.status import status_report
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.faults import StoreCorrupt, StoreFull, StoreReadOnly, StoreReplaced, classify
from llmc_rag_service.store.jobs import JobQueue
from llmc_rag_service.testing.emulator import OllamaEmulator
from tests.helpers import RunningDaemon, make_config, wait_for, write_tree
from tests.storage import damaged_state, enriched, integrity, read_only, run_without_root_powers

DAMAGED = ["random", "header", "pages", "foreign", "foreign-unversioned"]


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def sample_store(tmp_path):
    """A real store (closed, so no WAL) with one file of several spans."""
    store = Store(tmp_path / "sample" / "llmc-rag.db")
    rid = store.repo_id(tmp_path / "elsewhere")
    spans = [Span("function", f"f{i}", i, i, f"def f{i}(): pass", "python") for i in range(1, 200)]
    with store.write() as tx:
        store.put_file(tx, rid, "a.py", size=1, mtime_ns=1, content_hash="h", language="python",
                       skipped=None, spans=spans)
    store.close()
    return store.path


#: One span each: enough that work is under way (2 at a time, 0.2 s each) when the file goes.
FILES = 12


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_state_file_deleted_or_replaced_under_serve_ends_it_with_74(tmp_path, notify, serve_factory, how):
    """serve notices within seconds that its state file was deleted or replaced, logs one store_replaced error naming it and exits 74; started again (as systemd does), it builds a new store and enriches everything."""
    repo = tmp_path / "repo"
    write_tree(repo, {f"m{i}.py": f"def f{i}(x):\n    return x * {i}\n" for i in range(FILES)})
    with OllamaEmulator(latency_s=0.2) as emu:
        config = make_config(tmp_path, emu.url, [repo], ollama={"concurrency": 2})
        serve = serve_factory(config, notify)
        notify.wait("READY=1")
        wait_for(lambda: emu.count("/api/chat") >= 3, 20, "work under way")
        if how == "deleted":
            config.db_path.unlink()
        else:
            Store(tmp_path / "other.db").close()
            os.replace(tmp_path / "other.db", config.db_path)
        assert serve.proc.wait(20) == cli.EX_IOERR
        logs = serve.logs()
        replaced = [e for e in _events(logs) if e["event"] == "store_replaced"]
        assert len(replaced) == 1 and replaced[0]["level"] == "error"
        assert replaced[0]["path"] == str(config.db_path) and how in replaced[0]["error"]
        assert "Traceback" not in logs
        # The old file's WAL is not left to be replayed into whatever is at the path now.
        assert '"stale_wal_moved"' in logs  # renamed aside, never deleted
        assert not any(p.name.endswith(("-wal", "-shm")) for p in config.state_dir.iterdir())
        assert any(".db-wal.stale-" in p.name for p in config.state_dir.iterdir())
        if how == "replaced":
            assert status_report(config)["totals"]["spans"] == 0  # the replacement, an empty store
        emu.latency_s = 0.0  # the slow answers only had to keep work under way until now
        again = serve_factory(config, notify)
        wait_for(lambda: status_report(config)["totals"]["enriched"] == FILES, 60, "a full rescan and enrichment")
        assert again.stop() == 0


@pytest.mark.parametrize("kind", DAMAGED)
def test_a_damaged_state_file_is_refused_by_every_command_with_74(tmp_path, kind, sample_store, capsys):
    """enrich, status and show on a damaged or foreign state file exit 74 with one line naming it and saying to move it aside; the file is left as it was."""
    repo = tmp_path / "repo"
    write_tree(repo, {"a.py": "def f():\n    return 1\n"})
    config = make_config(tmp_path, "http://127.0.0.1:9", [repo], logging={"level": "warning"})
    damaged_state(kind, config.db_path, sample_store)
    before = config.db_path.read_bytes()
    for args in (["enrich"], ["status"], ["status", "--json"], ["show", str(repo / "a.py")]):
        assert cli.main([args[0], "-c", str(config.source), *args[1:]]) == cli.EX_IOERR, args
        out = capsys.readouterr()
        assert out.err.startswith(f"llmc-rag: state unusable: {config.db_path}: not a usable llmc-rag store (")
        assert out.err.count("\n") == 1 and "move it aside" in out.err and out.out == ""
    assert config.db_path.read_bytes() == before


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", DAMAGED)
def test_serve_refuses_a_damaged_state_file_with_74(tmp_path, kind, sample_store, serve_factory):
    """serve on a damaged or foreign state file exits 74 with one error naming the file, no traceback."""
    repo = tmp_path / "repo"
    write_tree(repo, {"a.py": "def f():\n    return 1\n"})
    config = make_config(tmp_path, "http://127.0.0.1:9", [repo])
    damaged_state(kind, config.db_path, sample_store)
    serve = serve_factory(config)
    assert serve.proc.wait(30) == cli.EX_IOERR
    logs = serve.logs()
    errors = [e for e in _events(logs) if e["level"] == "error"]
    assert [e["event"] for e in errors] == ["store_corrupt"]
    assert errors[0]["path"] == str(config.db_path) and "move it aside" in errors[0]["error"]
    assert "Traceback" not in logs


@pytest.mark.timeout(60)
def test_a_read_only_state_dir(tmp_path, ollama):
    """In a read-only state dir, serve and enrich exit 74 with one line saying so; status and show still read the store."""
    repo = tmp_path / "repo"
    write_tree(repo, {"a.py": "def f(x):\n    return x\n\n\ndef g(y):\n    return y\n"})
    config = make_config(tmp_path, ollama.url, [repo], logging={"level": "warning"})
    assert cli.main(["enrich", "-c", str(config.source)]) == cli.EX_OK
    commands = [["serve", "-c", str(config.source)], ["enrich", "-c", str(config.source)],
                ["status", "--json", "-c", str(config.source)],
                ["show", "--json", "-c", str(config.source), str(repo / "a.py")]]
    # The four processes run side by side: none can change the read-only state, so none sees another's work.
    with read_only(config.state_dir), ThreadPoolExecutor(len(commands)) as pool:
        serve, enrich, status, show = pool.map(run_without_root_powers, commands)
    assert serve.returncode == cli.EX_IOERR and "Traceback" not in serve.stderr
    errors = [e for e in _events(serve.stderr) if e["level"] == "error"]
    assert len(errors) == 1 and f"{config.state_dir} is read-only" in errors[0]["error"]
    assert enrich.returncode == cli.EX_IOERR
    assert enrich.stderr.startswith(f"llmc-rag: state unusable: {config.db_path}: cannot write the state: "
                                    f"{config.state_dir} is read-only") and enrich.stderr.count("\n") == 1
    assert status.returncode == 0 and json.loads(status.stdout)["totals"]["enriched"] == 2
    assert show.returncode == 0 and [s["state"] for s in json.loads(show.stdout)] == ["enriched", "enriched"]


#: Seconds another process holds the write lock: twice the daemon's shortest store
#: wait (STATUS_META_TIMEOUT_S), far under SQLite's busy timeout.
LOCK_HELD_S = 1.0


@contextlib.contextmanager
def _write_lock_held(db_path, seconds: float):
    """Another process's view: a connection holding BEGIN IMMEDIATE for ``seconds`` (a background thread)."""
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db_path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        taken.set()
        done.wait(seconds)  # the fault lasts this long
        conn.execute("ROLLBACK")
        conn.close()

    thread = threading.Thread(target=hold, name="lock-holder")
    thread.start()
    assert taken.wait(10)
    try:
        yield thread
    finally:
        thread.join(seconds + 10)


@pytest.mark.timeout(60)
def test_a_write_lock_held_for_seconds_delays_enrich_and_loses_nothing(tmp_path, ollama):
    """enrich started while another process holds the write lock for 1 s waits for it and enriches everything (exit 0)."""
    repo = tmp_path / "repo"
    write_tree(repo, {f"m{i}.py": f"def f{i}(x):\n    return x * {i}\n" for i in range(6)})
    config = make_config(tmp_path, ollama.url, [repo], logging={"level": "warning"})
    Store(config.db_path).close()
    with _write_lock_held(config.db_path, LOCK_HELD_S):
        assert cli.main(["enrich", "-c", str(config.source)]) == cli.EX_OK
    assert enriched(config.db_path) == 6 and integrity(config.db_path) == "ok"


@pytest.mark.timeout(60)
def test_a_write_lock_held_for_seconds_pauses_serve_and_work_resumes(tmp_path, notify):
    """A write lock held for 1 s in the middle of serve's work: no thread dies, and all work is done after it."""
    repo = tmp_path / "repo"
    write_tree(repo, {f"m{i}.py": f"def f{i}(x):\n    return x * {i}\n" for i in range(12)})
    with OllamaEmulator(latency_s=0.1) as emu:
        config = make_config(tmp_path, emu.url, [repo])
        running = RunningDaemon(config, notify)
        try:
            wait_for(lambda: running.daemon.pipeline.counts()["done"] >= 2, 20, "work under way")
            with _write_lock_held(config.db_path, LOCK_HELD_S):
                pass  # leaving waits for the holder: the lock is held while serve works
            wait_for(lambda: running.daemon.pipeline.counts()["done"] == 12, 30, "every job done")
            assert running.error is None and running.daemon.pipeline.hung() is None
        finally:
            running.stop()
    assert integrity(config.db_path) == "ok"


def test_store_errors_map_to_the_most_specific_fault(tmp_path):
    """Real SQLite errors and errnos map to their StoreUnusable class; an SQL mistake or a lock is no store fault."""
    db = tmp_path / "x.db"
    (tmp_path / "junk.db").write_bytes(os.urandom(4096))
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.OperationalError) as syntax:
        conn.execute("SELEC 1")
    assert classify(syntax.value, db) is None
    conn.execute("PRAGMA query_only = ON")
    with pytest.raises(sqlite3.OperationalError) as readonly:
        conn.execute("CREATE TABLE t(x)")
    assert isinstance(classify(readonly.value, db), StoreReadOnly)
    with pytest.raises(sqlite3.DatabaseError) as junk:
        sqlite3.connect(tmp_path / "junk.db").execute("PRAGMA user_version")
    assert isinstance(classify(junk.value, db), StoreCorrupt)
    full = classify(OSError(errno.ENOSPC, "No space left on device"), db)
    assert isinstance(full, StoreFull) and f"no space for the state in {tmp_path} (" in str(full)
    assert isinstance(classify(OSError(errno.EROFS, "Read-only file system"), db), StoreReadOnly)
    conn.close()


@pytest.mark.timeout(60)
def test_corrupt_pages_met_by_a_worker_end_serve(tmp_path, notify, monkeypatch):
    """A worker meeting a corrupt page (SQLite's own "malformed" error) ends the daemon's loop: one store_corrupt error naming the file; run() returns the fault, so serve exits 74."""
    corrupt = _real_corrupt_error(tmp_path)
    original = JobQueue.claim_many

    def claim_many(self, limit, max_priority=None):
        raise corrupt

    repo = tmp_path / "repo"
    write_tree(repo, {"a.py": "def f():\n    return 1\n"})
    with OllamaEmulator() as emu, capture_logs() as logs:
        config = make_config(tmp_path, emu.url, [repo])
        running = RunningDaemon(config, notify)
        try:
            monkeypatch.setattr(JobQueue, "claim_many", claim_many)
            running.daemon.pipeline.pool.notify_work()
            running.thread.join(20)
            assert not running.thread.is_alive()
        finally:
            monkeypatch.setattr(JobQueue, "claim_many", original)
            running.stop()
    assert isinstance(running.daemon.fatal, StoreCorrupt) and running.error is None
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["store_corrupt"] and errors[0]["path"] == str(config.db_path)


def _real_corrupt_error(tmp_path) -> sqlite3.DatabaseError:
    """SQLite's own SQLITE_CORRUPT, from a file whose first page is garbage after a valid header."""
    sample = tmp_path / "sample.db"
    with contextlib.closing(sqlite3.connect(sample)) as conn:
        conn.execute("CREATE TABLE t(x)")
    bad = tmp_path / "bad.db"
    bad.write_bytes(sample.read_bytes()[:100] + os.urandom(8192))
    try:
        sqlite3.connect(bad).execute("SELECT * FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError as exc:
        return exc
    raise AssertionError("garbage pages read as a database")


def test_a_replacement_wal_copied_over_the_old_one_is_not_moved_aside(tmp_path):
    """A store restored the way `rm llmc-rag.db && cp backup/llmc-rag.db* state/` does it: the main file
    is new, but cp writes the backup's -wal into the existing -wal file (the same inode, the one the
    running process has open). Its header is not the one seen when the fault was found, so close()
    leaves it where it is (break2's finding: it was unlinked by inode alone). SQLite's own
    checkpoint when this process closes its last connection can still consume a WAL copied over a
    live one: restore a store with serve stopped (README)."""
    path = tmp_path / "state" / "llmc-rag.db"
    store = Store(path)
    with store.write() as tx:
        tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('who', 'old')")
    wal = path.with_name(path.name + "-wal")
    assert wal.exists()
    backup = tmp_path / "backup" / "llmc-rag.db"
    Store(backup).close()
    writer = sqlite3.connect(backup, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint = 0")  # the backup's last commit stays in its WAL
    writer.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('marker', 'only in the backup''s WAL')")
    path.unlink()
    with pytest.raises(StoreReplaced):
        store.check()  # the fault is found before the copy: the WAL seen then is the old file's
    shutil.copyfile(backup, path)
    shutil.copyfile(backup.with_name(backup.name + "-wal"), wal)  # written into the existing file, as cp(1) does
    writer.close()
    store.close()
    assert store.dropped == [] and not any(".stale-" in p.name for p in path.parent.iterdir())


def test_a_state_file_moved_away_and_back_keeps_its_wal(tmp_path):
    """The state file moved away and back (``mv llmc-rag.db x && mv x llmc-rag.db``) while a worker's
    connection outlives close() (a request past the stop grace): the file at the path is the opened
    one again, so its -wal holds its own last commits and must stay. Unlinked, those commits --
    here the whole schema, never checkpointed -- are lost when the process ends without closing
    that connection (serve's os._exit on stop_overdue, or any kill)."""
    path = tmp_path / "state" / "llmc-rag.db"
    store = Store(path)
    holding, release = threading.Event(), threading.Event()

    def worker() -> None:
        with store.write() as tx:
            tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('w', 'worker')")
        holding.set()
        release.wait(20)

    thread = threading.Thread(target=worker, name="late-worker")
    thread.start()
    try:
        assert holding.wait(10)
        os.rename(path, tmp_path / "away.db")
        with pytest.raises(StoreReplaced):
            store.check()
        os.rename(tmp_path / "away.db", path)
        store.close()
        assert store.dropped == [] and path.with_name(path.name + "-wal").exists()
    finally:
        release.set()
        thread.join(10)
        for _, conn in store._all:
            conn.close()
