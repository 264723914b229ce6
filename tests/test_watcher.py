"""Tests for llmc_rag_service.watch.repo: the Debouncer with a fake clock, RepoWatcher with the
real watchdog inotify observer on real temp repos (debounce 50 ms, max delay 500 ms)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from llmc_rag_service.index.ignore import RepoIgnore
from watchdog.events import FileClosedEvent, FileCreatedEvent, FileModifiedEvent

from llmc_rag_service.watch.debounce import Debouncer
from llmc_rag_service.watch.repo import STOP_TIMEOUT_S, RepoWatcher

CASES = [c for c in json.loads((Path(__file__).resolve().parent / "data" / "editor_saves.json").read_text())["cases"]
         if isinstance(c["ops"], list)]  # branch-switch is a git scenario for the git gate
_POLL = threading.Event()  # never set: its wait() is the poll interval of wait_for
_SENTINELS = itertools.count()


class FakeClock:
    """A clock advanced by hand, in whole milliseconds so sums stay exact."""

    def __init__(self) -> None:
        self.ms = 100_000

    def advance(self, seconds: float) -> None:
        self.ms += round(seconds * 1000)

    def __call__(self) -> float:
        return self.ms / 1000


def wait_for(cond, timeout_s: float = 10.0) -> bool:
    """Poll ``cond`` until it is true or the deadline passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        _POLL.wait(0.01)
    return bool(cond())


def drain(watcher: RepoWatcher, root: Path) -> set[str]:
    """Every path reported so far: write a sentinel, collect until it is due (inotify keeps order,
    and a path whose last event came earlier is due no later), return the rest."""
    sentinel = f"zz_sentinel_{next(_SENTINELS)}.py"
    (root / sentinel).write_text("")
    got: set[str] = set()
    assert wait_for(lambda: got.update(watcher.take_due()) or sentinel in got), got
    got.discard(sentinel)
    return got


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def apply_op(root: Path, op: list[str]) -> None:
    kind, rel, *rest = op
    if kind == "write":
        write(root, rel, rest[0])
    elif kind == "rename":
        os.rename(root / rel, root / rest[0])
    elif kind == "remove":
        os.remove(root / rel)
    elif kind == "touch":
        os.utime(root / rel)
    elif kind == "mkdir":
        (root / rel).mkdir(parents=True)
    else:
        raise AssertionError(f"unknown op {kind}")


@pytest.fixture
def start_watcher():
    """Factory: a started RepoWatcher on a root; all stopped at teardown."""
    watchers: list[RepoWatcher] = []

    def start(root: Path, ignore: RepoIgnore | None = None) -> RepoWatcher:
        watcher = RepoWatcher(root, ignore or RepoIgnore(root), debounce_ms=50, max_delay_ms=500)
        watcher.start()
        watchers.append(watcher)
        return watcher

    yield start
    for watcher in watchers:
        watcher.stop()


# --- Debouncer -------------------------------------------------------------------------------

def test_debouncer_path_is_due_after_quiet_period():
    """A path is due once it has been quiet for debounce_ms, and is popped by due()."""
    clock = FakeClock()
    deb = Debouncer(debounce_ms=500, max_delay_ms=5000, clock=clock)
    deb.add("a.py")
    clock.advance(0.3)
    deb.add("a.py")  # a new event restarts the quiet period
    clock.advance(0.4)
    assert deb.due() == set()
    assert deb.next_due_s() == pytest.approx(0.1)
    clock.advance(0.1)
    assert deb.due() == {"a.py"}
    assert deb.pending() == 0 and deb.next_due_s() is None and deb.due() == set()


def test_debouncer_touch_restarts_only_a_pending_paths_quiet_period():
    """touch() restarts the quiet period of a pending path (like add) and adds nothing new."""
    clock = FakeClock()
    deb = Debouncer(debounce_ms=500, max_delay_ms=5000, clock=clock)
    assert deb.touch("new.py") is False and deb.pending() == 0
    deb.add("a.py")
    deb.add("b.py")
    clock.advance(0.3)
    assert deb.touch("a.py") is True
    clock.advance(0.2)
    assert deb.due() == {"b.py"}  # a.py's quiet period restarted 0.2 s ago; due order kept
    clock.advance(0.3)
    assert deb.due() == {"a.py"}


def test_a_pending_paths_later_events_skip_the_ignore_check(tmp_path):
    """The second and later events of a path already waiting cost no ignore-rule lookup
    (an extraction's thousands of files must not back up the watcher thread)."""
    (tmp_path / "a.py").write_text("x = 1\n")
    ignore = RepoIgnore(tmp_path)
    looked: list[str] = []
    real = ignore.is_ignored
    ignore.is_ignored = lambda rel, is_dir=False: looked.append(rel) or real(rel, is_dir=is_dir)  # type: ignore[method-assign]
    watcher = RepoWatcher(tmp_path, ignore, debounce_ms=500, clock=FakeClock())
    for event in (FileCreatedEvent, FileModifiedEvent, FileClosedEvent):
        watcher._on_event(event(str(tmp_path / "a.py")))
    assert looked == ["a.py"] and watcher.pending() == 1


def test_debouncer_continuous_stream_flushes_at_max_delay():
    """A path with an event every 100 ms (never quiet) is still due max_delay_ms after its first event."""
    clock = FakeClock()
    deb = Debouncer(debounce_ms=500, max_delay_ms=2000, clock=clock)
    flushed_at = []
    for step in range(1, 51):
        deb.add("hot.py")
        clock.advance(0.1)
        if deb.due():
            flushed_at.append(step)
    assert flushed_at[:2] == [20, 40]  # every 2 s of the stream, each a new burst


def test_debouncer_coalesces_paths_independently():
    """Each path has its own timer; several events of one path come out once."""
    clock = FakeClock()
    deb = Debouncer(debounce_ms=100, max_delay_ms=1000, clock=clock)
    for _ in range(5):
        deb.add("a.py")
    clock.advance(0.05)
    deb.add("b.py")
    assert deb.pending() == 2
    clock.advance(0.05)
    assert deb.due() == {"a.py"}
    clock.advance(0.05)
    assert deb.due() == {"b.py"}


def test_debouncer_is_thread_safe():
    """Adds from many threads while another thread takes due paths lose and duplicate nothing."""
    deb = Debouncer(debounce_ms=0, max_delay_ms=0)
    taken: list[str] = []
    done = threading.Event()

    def taker():
        while not done.is_set() or deb.pending():
            taken.extend(deb.due())

    def adder(n):
        for i in range(2000):
            deb.add(f"t{n}/f{i}")

    consumer = threading.Thread(target=taker)
    consumer.start()
    adders = [threading.Thread(target=adder, args=(n,)) for n in range(4)]
    for t in adders:
        t.start()
    for t in adders:
        t.join()
    done.set()
    consumer.join(10)
    assert sorted(taken) == sorted(f"t{n}/f{i}" for n in range(4) for i in range(2000))


def test_debouncer_rejects_negative_delays():
    """Negative delays are a ValueError."""
    with pytest.raises(ValueError):
        Debouncer(debounce_ms=-1)


# --- RepoWatcher with the real observer ------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_editor_save_reports_exactly_the_target(tmp_path, start_watcher, case):
    """Each editor sequence reports its target file (deleted or not) and none of its temp names."""
    for rel, text in case["before"].items():
        write(tmp_path, rel, text)
    watcher = start_watcher(tmp_path)
    for op in case["ops"]:
        apply_op(tmp_path, op)
    reported = drain(watcher, tmp_path)
    targets = set(case["expect"]["jobs_for"])
    assert reported == targets
    ignore = RepoIgnore(tmp_path)
    live = {p for p in reported if (tmp_path / p).is_file() and not ignore.is_ignored(p)}
    assert live == {p for p in targets if (tmp_path / p).exists()}


def test_byte_identical_write_is_still_reported(tmp_path, start_watcher):
    """Rewriting a file with the same bytes is reported (content dedupe is the caller's job)."""
    write(tmp_path, "same.py", "x = 1\n")
    watcher = start_watcher(tmp_path)
    write(tmp_path, "same.py", "x = 1\n")
    assert drain(watcher, tmp_path) == {"same.py"}


def test_moved_directory_reports_both_ends(tmp_path, start_watcher):
    """Renaming a directory reports the old and the new directory relpath."""
    write(tmp_path, "pkg/sub/m.py", "def m(): pass\n")
    watcher = start_watcher(tmp_path)
    os.rename(tmp_path / "pkg/sub", tmp_path / "pkg/moved")
    reported = drain(watcher, tmp_path)
    assert {"pkg/sub", "pkg/moved"} <= reported
    assert "pkg/moved/m.py" not in reported  # the caller walks the moved dir itself


def test_deleted_directory_is_reported(tmp_path, start_watcher):
    """Deleting a directory reports the directory relpath."""
    write(tmp_path, "gone/a.py", "")
    watcher = start_watcher(tmp_path)
    (tmp_path / "gone/a.py").unlink()
    (tmp_path / "gone").rmdir()
    assert drain(watcher, tmp_path) == {"gone/a.py", "gone"}


def test_ignored_writes_report_nothing(tmp_path, start_watcher):
    """Writes to ignored, default-excluded, secret and .git paths are not reported."""
    write(tmp_path, ".gitignore", "*.log\n")
    for rel in ("node_modules/x/i.js", ".git/HEAD", "build/out.py"):
        write(tmp_path, rel, "")
    watcher = start_watcher(tmp_path)
    for rel in ("app.log", "node_modules/x/i.js", "build/out.py", ".env", ".git/HEAD", ".git/index.lock"):
        write(tmp_path, rel, "changed")
    assert drain(watcher, tmp_path) == set()
    assert watcher.git_event_count >= 1


def test_reading_a_watched_file_produces_no_event(tmp_path, start_watcher):
    """Opening, reading and closing a watched file (the daemon's own reads) reports nothing."""
    write(tmp_path, "src/a.py", "def f(): pass\n")
    watcher = start_watcher(tmp_path)
    for _ in range(3):
        with open(tmp_path / "src/a.py", encoding="utf-8") as fh:
            fh.read()
    os.stat(tmp_path / "src/a.py")
    assert drain(watcher, tmp_path) == set()


def test_gitignore_edit_is_flagged_and_applied(tmp_path, start_watcher):
    """A .gitignore edit flags gitignore_changed() once, applies the new rules and watches un-ignored dirs."""
    write(tmp_path, ".gitignore", "gen/\n")
    write(tmp_path, "gen/old.py", "")
    ignore = RepoIgnore(tmp_path)
    watcher = start_watcher(tmp_path, ignore)
    assert ignore.is_ignored("gen/old.py")
    write(tmp_path, ".gitignore", "*.tmp.py\n")
    assert wait_for(watcher.gitignore_changed)
    assert not watcher.gitignore_changed()
    assert not ignore.is_ignored("gen/old.py")
    write(tmp_path, "gen/new.py", "")  # its directory was pruned before: needs the re-armed watch
    assert "gen/new.py" in drain(watcher, tmp_path)


def test_stop_is_bounded_and_start_restarts(tmp_path, start_watcher):
    """stop() returns within its bound with the observer dead; start() watches again."""
    watcher = start_watcher(tmp_path)
    assert watcher.is_alive()
    began = time.monotonic()
    watcher.stop()
    assert time.monotonic() - began < STOP_TIMEOUT_S
    assert not watcher.is_alive() and not watcher.take_rescan()
    watcher.start()
    write(tmp_path, "after.py", "")
    assert drain(watcher, tmp_path) == {"after.py"}


def test_dead_observer_requests_one_rescan(tmp_path, start_watcher):
    """An observer thread that dies without stop() makes take_rescan() True once; a restart recovers."""
    watcher = start_watcher(tmp_path)
    observer = watcher._observer
    observer.stop()  # the observer dies behind the watcher's back
    observer.join(STOP_TIMEOUT_S)
    assert not watcher.is_alive()
    assert watcher.take_rescan()
    assert not watcher.take_rescan()
    watcher.stop()
    watcher.start()
    assert watcher.is_alive()


class ExplodingIgnore(RepoIgnore):
    def is_ignored(self, relpath: str, is_dir: bool = False) -> bool:
        if relpath == "boom.py":
            raise RuntimeError("boom")
        return super().is_ignored(relpath, is_dir)


def test_handler_error_requests_rescan_and_keeps_watching(tmp_path, start_watcher):
    """An exception while handling an event requests a rescan, and the observer keeps running."""
    watcher = start_watcher(tmp_path, ExplodingIgnore(tmp_path))
    write(tmp_path, "boom.py", "")
    assert wait_for(watcher.take_rescan)
    assert watcher.is_alive()
    assert drain(watcher, tmp_path) == set()


@pytest.mark.timeout(30)
def test_real_inotify_overflow_requests_rescan_of_that_repo_only(tmp_path, start_watcher):
    """A real kernel queue overflow in one repo makes that watcher, and no other, request a rescan."""
    flooded, quiet = tmp_path / "flooded", tmp_path / "quiet"
    (flooded / "flood").mkdir(parents=True)
    quiet.mkdir()
    watcher, other = start_watcher(flooded), start_watcher(quiet)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    reader = watcher._observer._inotify_fd  # watchdog's inotify reader thread of this repo
    target = flooded / "flood" / "f"
    fd = os.open(target, os.O_CREAT | os.O_WRONLY, 0o644)
    with reader._lock:  # stall the reader so the kernel queue fills up
        # Alternate IN_MODIFY and IN_ATTRIB on one file: the kernel merges only an
        # event identical to the last one queued, so each call queues one event,
        # at a fraction of the cost of creating thousands of files. Twice the
        # queue's limit: the reader may have taken one buffer (64 KiB, ~2,000
        # events) before it blocks on the lock.
        for i in range(2 * limit):
            if i % 2:
                os.utime(fd, ns=(i, i))
            else:
                os.pwrite(fd, b"x", 0)
    os.close(fd)
    assert wait_for(watcher.take_rescan, timeout_s=20)
    assert not other.take_rescan()


def test_overflow_log_without_owner_flags_every_watcher(tmp_path, start_watcher):
    """An overflow record from an unknown thread requests a rescan from every running watcher."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = start_watcher(tmp_path / "a"), start_watcher(tmp_path / "b")
    logging.getLogger("watchdog.observers.inotify_c").warning(
        "Inotify queue overflowed; filesystem events were lost")
    assert first.take_rescan() and second.take_rescan()
    assert not first.take_rescan()
