"""Git operations are one transaction: the branch-switch case of editor_saves.json with real git
in a temp repo, a simulated slow checkout (index.lock held while files are rewritten 10 ms apart),
and the GitGate rules with a fake clock."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from llmc_rag_service.index import spans as spans_mod
from llmc_rag_service.watch.gitgate import MAX_HOLD_S, STATE_QUIET_S, GitGate, git_dir_of
from llmc_rag_service.service.notify import child_env
from tests.helpers import make_config, wait_for, write_tree
from tests.live import Live, chats, now_wall, user_text

_PACE = threading.Event()  # never set: its wait() paces the simulated checkout


def func(i: int, which: str, body: str) -> str:
    return f"def f{i}_{which}(x):\n    return x + {body}\n"


def branch_a() -> dict[str, str]:
    """40 files with two functions each."""
    return {f"pkg/m{i:02}.py": func(i, "a", f"{i}") + "\n\n" + func(i, "b", f"{i} * 2") for i in range(40)}


def branch_b() -> dict[str, str | None]:
    """B: files 0-29 change one function, 30-34 are deleted (None), n0-n4 are added."""
    files: dict[str, str | None] = {}
    for i in range(30):
        files[f"pkg/m{i:02}.py"] = func(i, "a", f"{i} + 1000") + "\n\n" + func(i, "b", f"{i} * 2")
    for i in range(30, 35):
        files[f"pkg/m{i:02}.py"] = None
    for i in range(5):
        files[f"pkg/n{i}.py"] = func(100 + i, "a", "1") + "\n\n" + func(100 + i, "b", "2")
    return files


def hashes(files: dict[str, str | None]) -> set[str]:
    return {s.span_hash for rel, text in files.items() if text is not None
            for s in spans_mod.split_file(rel, text.encode(), max_file_bytes=1 << 20)}


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, env=child_env(), check=True, capture_output=True, timeout=30)


@pytest.fixture
def two_branches(tmp_path) -> Path:
    """A git repo with branch A (checked out) and branch B as in the branch-switch case."""
    root = tmp_path / "repo"
    write_tree(root, branch_a())
    git(root, "init", "-q", "-b", "A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "A")
    git(root, "checkout", "-q", "-b", "B")
    apply_tree(root, branch_b())
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "B")
    git(root, "checkout", "-q", "A")
    return root


def apply_tree(root: Path, files: dict[str, str | None], pace_s: float = 0.0) -> None:
    for rel, text in files.items():
        if text is None:
            (root / rel).unlink()
        else:
            write_tree(root, {rel: text})
        if pace_s:
            _PACE.wait(pace_s)


@pytest.fixture
def live(tmp_path, ollama, two_branches):
    lv = Live(make_config(tmp_path, ollama.url, [two_branches]))
    lv.enrich_existing()
    lv.start()
    yield lv
    lv.close()


def check_b(live: Live, ollama, t0: float, before: int) -> None:
    """Exactly one job per changed or added span of B, each with B's content; none under .git;
    the deleted files have no spans; the checkout reached the indexer as one batch."""
    b_final = {**branch_a(), **branch_b()}
    expected = hashes(b_final) - hashes(branch_a())
    jobs = live.jobs_since(t0)
    assert len(jobs) == len(expected) == 40 and {j["span_hash"] for j in jobs} == expected
    assert len(chats(ollama)) - before == 40
    assert live.files(under=".git") == {}
    for i in range(30, 35):
        assert live.spans_of(f"pkg/m{i:02}.py") == []
    assert {r[0] for r in live.pipeline.store.conn.execute("SELECT span_hash FROM spans")} == hashes(b_final)
    batches = [w for w in live.work if w.kind == "paths" and any(p.startswith("pkg/") for p in w.paths)]
    assert len(batches) == 1 and {p for p in batches[0].paths if p.startswith("pkg/")} == \
        {rel for rel in branch_b()}


@pytest.mark.timeout(60)
def test_real_checkout_is_one_transaction_and_switching_back_costs_nothing(live, ollama):
    """git checkout B yields exactly one job per changed or added span of B; checking out A again sends zero requests."""
    t0, before = now_wall(), len(chats(ollama))
    git(live.root, "checkout", "-q", "B")
    live.settle()
    live.start_workers()
    wait_for(live.drained, 20, "B's jobs")
    check_b(live, ollama, t0, before)
    after_b = len(chats(ollama))
    git(live.root, "checkout", "-q", "A")
    live.settle()
    wait_for(live.drained, 20, "A's state")
    assert {r[0] for r in live.pipeline.store.conn.execute("SELECT span_hash FROM spans")} == hashes(branch_a())
    assert len(chats(ollama)) == after_b


@pytest.mark.timeout(60)
def test_slow_checkout_under_index_lock_is_held_until_the_lock_goes(live, ollama):
    """Files rewritten 10 ms apart (0.4 s in all, far past the 50 ms debounce) while .git/index.lock exists, one first in a half-written state, are indexed once, after the lock is removed: no job for the intermediate state."""
    t0, before = now_wall(), len(chats(ollama))
    lock = live.root / ".git" / "index.lock"
    lock.write_text("")
    half = func(0, "a", "'half written'") + "\n"
    write_tree(live.root, {"pkg/m00.py": half})
    _PACE.wait(0.2)  # the intermediate state outlives the 50 ms debounce: only the gate stops it
    apply_tree(live.root, branch_b(), pace_s=0.01)
    assert not any(w.kind == "paths" and any(p.startswith("pkg/") for p in w.paths) for w in live.work)
    lock.unlink()
    live.settle()
    live.start_workers()
    wait_for(live.drained, 20, "B's jobs")
    check_b(live, ollama, t0, before)
    assert not any("half written" in user_text(r) for r in chats(ollama))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_gate_holds_while_a_lock_exists_and_for_the_settle_time_after(tmp_path):
    """The gate is busy while index.lock exists, and for settle_s after the last .git event."""
    (tmp_path / ".git").mkdir()
    clock = Clock()
    gate = GitGate(tmp_path, settle_s=0.3, clock=clock)
    assert gate.busy() is None
    (tmp_path / ".git" / "index.lock").write_text("")
    assert gate.busy() == "index.lock"
    (tmp_path / ".git" / "index.lock").unlink()
    gate.note_event(".git/index.lock")
    gate.note_event(".git/HEAD")
    assert gate.busy() == "settling"
    clock.t += 0.31
    assert gate.busy() is None and gate.take_head_changed() and not gate.take_head_changed()


def test_gate_holds_operation_markers_only_while_git_is_active(tmp_path):
    """A rebase/merge marker holds events while .git is active, not while the operation is paused (a conflict being resolved)."""
    (tmp_path / ".git" / "rebase-merge").mkdir(parents=True)
    clock = Clock()
    gate = GitGate(tmp_path, settle_s=0.1, clock=clock)
    gate.note_event(".git/ORIG_HEAD")
    clock.t += 0.5
    assert gate.busy() == "rebase-merge"
    clock.t += STATE_QUIET_S
    assert gate.busy() is None


def test_gate_treats_a_lock_held_too_long_as_stale(tmp_path):
    """A lock left by a crashed git stops holding events after MAX_HOLD_S."""
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "index.lock").write_text("")
    clock = Clock()
    gate = GitGate(tmp_path, clock=clock)
    assert gate.busy() == "index.lock"
    clock.t += MAX_HOLD_S + 1
    assert gate.busy() is None


def test_git_dir_follows_a_gitdir_file_and_no_git_means_never_busy(tmp_path):
    """A worktree's .git file points to its git dir; a directory without git is never held."""
    real = tmp_path / "real.git"
    real.mkdir()
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / ".git").write_text(f"gitdir: {real}\n")
    assert git_dir_of(tmp_path / "wt") == real
    (real / "index.lock").write_text("")
    assert GitGate(tmp_path / "wt").busy() == "index.lock"
    assert GitGate(tmp_path / "plain").busy() is None


def test_a_stale_index_lock_does_not_hold_saves(tmp_path):
    """An index.lock older than the hold cap (left by a crashed git) is ignored at once, not after another wait."""
    import os
    import time

    from llmc_rag_service.watch.gitgate import MAX_HOLD_S, GitGate

    (tmp_path / ".git").mkdir()
    lock = tmp_path / ".git" / "index.lock"
    lock.write_text("")
    old = time.time() - MAX_HOLD_S - 60
    os.utime(lock, (old, old))
    gate = GitGate(tmp_path, settle_s=0.0)
    assert gate.busy() is None
    os.utime(lock, None)  # a fresh lock: a git command is running
    assert gate.busy() == "index.lock"
