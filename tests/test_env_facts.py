"""Facts about the environment are refreshed on the event that changes them, not read once at
start: the git directory (git init after the watcher started, a worktree's .git file), the
submodules' git directories, .git/info/exclude, and the kernel's inotify limits."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from pathlib import Path

import pytest
from watchdog.observers import inotify_c

from llmc_rag_service.config import WatchConfig
from llmc_rag_service.index.ignore import RepoIgnore
from llmc_rag_service.index.spans import split_file
from llmc_rag_service.service.notify import child_env
from llmc_rag_service.watch import observers
from llmc_rag_service.watch.watchset import WatchSet
from tests.helpers import make_config, wait_for, write_tree
from tests.live import Live, chats, now_wall, user_text

GIT_ID = ("-c", "user.name=t", "-c", "user.email=t@t")


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *GIT_ID, *args], cwd=root, env=child_env(), check=True, capture_output=True, timeout=60)


def f_version(v: int) -> str:
    return f"def f(x):\n    return x + {v}000  # version {v}\n"


def g_version(v: int) -> str:
    return f"def g(y):\n    return y * {v + 2}\n"


@pytest.fixture
def origin(tmp_path) -> Path:
    """History made elsewhere: base has f v0 and g v0, then g v1; topic, from base's first
    commit, rewrites f five times (v1..v5), one commit each."""
    root = tmp_path / "origin"
    write_tree(root, {"m.py": f_version(0), "other.py": g_version(0)})
    git(root, "init", "-q", "-b", "base")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    git(root, "checkout", "-q", "-b", "topic")
    for v in range(1, 6):
        write_tree(root, {"m.py": f_version(v)})
        git(root, "commit", "-q", "-am", f"f v{v}")
    git(root, "checkout", "-q", "base")
    write_tree(root, {"other.py": g_version(1)})
    git(root, "commit", "-q", "-am", "g v1")
    return root


#: The git gate's quiet time before it lets saves through, seconds (the daemon's default is longer).
GATE_SETTLE_S = 0.1


@pytest.mark.timeout(90)
def test_a_directory_that_becomes_a_git_repo_gets_the_gate_for_a_slow_rebase(tmp_path, ollama, origin):
    """A plain directory watched, then made a git repo (git init + fetch): a rebase replaying five
    commits of f, slow between its steps, sends one request for the changed function and none
    for f's intermediate versions."""
    root = tmp_path / "repo"
    write_tree(root, {"m.py": f_version(5), "other.py": g_version(0)})  # topic's tree, not yet a repo
    live = Live(make_config(tmp_path, ollama.url, [root]), settle_s=GATE_SETTLE_S)
    try:
        live.enrich_existing()
        live.start()
        git(root, "init", "-q", "-b", "topic")
        git(root, "fetch", "-q", str(origin), "+refs/heads/*:refs/remotes/o/*")
        git(root, "reset", "-q", "--hard", "o/topic")
        live.settle()
        live.start_workers()  # as in the daemon: an intermediate state indexed would be sent at once
        t0, before = now_wall(), len(chats(ollama))
        # Each step's exec runs while the rebase is under way (a test suite per commit, say).
        # Twice the gate's settle time: without the rebase seen, the gate would open between steps.
        git(root, "rebase", "-q", "--exec", f"sleep {2 * GATE_SETTLE_S}", "o/base")
        live.settle()
        wait_for(live.drained, 30, "the rebase's jobs")
    finally:
        live.close()
    sent = [user_text(r) for r in chats(ollama)[before:] if "zz_sentinel" not in user_text(r)]
    expected = {s.span_hash for s in split_file("other.py", g_version(1).encode(), max_file_bytes=1 << 20)}
    assert {j["span_hash"] for j in live.jobs_since(t0)} == expected
    assert len(sent) == 1 and "y * 3" in sent[0]
    assert not any("version" in text for text in sent)  # no intermediate f


@pytest.mark.timeout(60)
def test_a_worktree_made_in_the_watched_directory_is_gated_through_its_outside_git_dir(tmp_path, ollama, origin):
    """git worktree add into the (empty) watched directory: the gate follows the .git file to the
    git dir outside the tree, and events there (HEAD rewritten) hold saves while git settles."""
    root = tmp_path / "wt"
    root.mkdir()
    live = Live(make_config(tmp_path, ollama.url, [root]), settle_s=1.0)
    try:
        live.start()
        git(origin, "worktree", "add", "-q", str(root), "topic")
        outside = origin / ".git" / "worktrees" / "wt"
        gate = live.pipeline.watches.gate(root)
        wait_for(lambda: gate.git_dir == outside, 10, "the worktree's git dir")
        wait_for(lambda: "m.py" in live.files(), 10, "the checked-out tree scanned")
        wait_for(lambda: gate.busy() is None, 10, "settled")
        (outside / "HEAD").write_text((outside / "HEAD").read_text())  # what git does on a checkout
        wait_for(lambda: gate.busy() == "settling", 5, "the outside git dir's event")
        (outside / "index.lock").write_text("")
        assert gate.busy() == "index.lock"
    finally:
        live.close()


@pytest.mark.timeout(60)
def test_a_submodule_added_later_holds_saves_while_its_git_runs(tmp_path, ollama):
    """A submodule appearing (.gitmodules and its .git file) is gated by the lock in its own git
    dir (.git/modules/NAME): a save under it waits until the lock goes."""
    root = tmp_path / "repo"
    write_tree(root, {"a.py": "def a():\n    return 1\n"})
    (root / ".git").mkdir()
    live = Live(make_config(tmp_path, ollama.url, [root]))
    try:
        live.start()
        modules = root / ".git" / "modules" / "sub"
        modules.mkdir(parents=True)
        (modules / "index.lock").write_text("")
        write_tree(root, {"sub/.git": "gitdir: ../.git/modules/sub\n", ".gitmodules": '[submodule "sub"]\n\tpath = sub\n'})
        wait_for(lambda: live.pipeline.watches.gate(root).busy() == "index.lock", 10, "the submodule's lock")
        write_tree(root, {"sub/s.py": "def s():\n    return 'sub'\n"})
        wait_for(lambda: live.pipeline.holding(), 10, "the save held")
        assert "sub/s.py" not in live.files()
        (modules / "index.lock").unlink()
        live.settle()
        assert "sub/s.py" in live.files()
    finally:
        live.close()


@pytest.mark.timeout(60)
def test_an_edit_of_git_info_exclude_applies_at_once(tmp_path, ollama):
    """.git/info/exclude is an ignore rule: excluding a directory there drops its files from the index."""
    root = tmp_path / "repo"
    write_tree(root, {"gen/out.py": "def out():\n    return 0\n", "keep.py": "def keep():\n    return 1\n"})
    (root / ".git" / "info").mkdir(parents=True)
    live = Live(make_config(tmp_path, ollama.url, [root]))
    try:
        live.scanner.full_scan()
        live.start()
        assert "gen/out.py" in live.files()
        (root / ".git" / "info" / "exclude").write_text("gen/\n")
        wait_for(lambda: "gen/out.py" not in live.files(), 10, "gen/ excluded")
        assert "keep.py" in live.files()
    finally:
        live.close()


@pytest.mark.timeout(30)
def test_polling_goes_back_to_inotify_once_the_limit_is_raised(tmp_path, monkeypatch):
    """A repo polling after ENOSPC is watched by inotify again once the kernel's limits read higher."""
    root = tmp_path / "repo"
    write_tree(root, {"src/deep/a.py": "def a():\n    pass\n"})
    real_add = inotify_c.inotify_add_watch
    limits = [(1000, 128)]

    def add_watch(fd, path, mask):  # the kernel's answer while max_user_watches is too low
        if limits[0][0] < 2000 and path != os.fsencode(str(root)):
            ctypes.set_errno(errno.ENOSPC)
            return -1
        return real_add(fd, path, mask)

    monkeypatch.setattr(inotify_c, "inotify_add_watch", add_watch)
    monkeypatch.setattr(observers, "inotify_limits", lambda: limits[0])
    watching = WatchSet(WatchConfig(debounce_ms=50), poll_interval_s=0.1)
    watching.start(root, RepoIgnore(root))
    try:
        assert watching.states() == {root: "polling"}
        watching.poll()
        limits[0] = (524288, 128)  # sysctl fs.inotify.max_user_watches=524288
        monkeypatch.setattr("llmc_rag_service.watch.watchset.RESTART_RETRY_S", 0.0)
        wait_for(lambda: any(w.kind == "full" for w in watching.poll()), 10, "the switch back")
        assert watching.states() == {root: "ok"} and watching.degraded() == []
        (root / "src/deep/a.py").write_text("def a():\n    return 2\n")
        seen: set = set()
        wait_for(lambda: seen.update(p for w in watching.poll() for p in w.paths) or "src/deep/a.py" in seen, 10)
    finally:
        watching.stop_all()
