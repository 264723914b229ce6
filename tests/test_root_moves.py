"""The watched root moved or replaced, with the real ``serve``: detected at once (device + inode,
the root's own move event), reported in the log, STATUS and ``status --json``, events of the old
tree dropped, and the path re-watched and re-scanned when a directory is there again."""

from __future__ import annotations

import json

import pytest

from llmc_rag_service.service.status import status_report
from tests.helpers import chats, make_config, wait_for, write_tree

ORIGINAL = "def f(x):\n    return x\n\n\ndef g(y):\n    return y\n"


def state_of(config, repo) -> str:
    return next(r["state"] for r in status_report(config)["repos"] if r["path"] == str(repo))


def log_events(serve, name: str) -> list[dict]:
    out = []
    for line in serve.logs().splitlines():
        try:
            record = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        if record.get("event") == name:
            out.append(record)
    return out


def sentinel(other, ollama, n: int) -> None:
    """Every event written before this call has gone through the daemon: a save in the
    other repo, due no earlier than them, reaches the model (one poll, a FIFO indexer)."""
    (other / "o.py").write_text(f"def o():\n    return {n}\n")
    wait_for(lambda: any(f"return {n}" in r.json["messages"][-1]["content"] for r in chats(ollama)),
             what=f"sentinel {n}")


@pytest.fixture
def running(tmp_path, repo, ollama, notify, serve_factory):
    other = tmp_path / "other"
    write_tree(other, {"o.py": "def o():\n    return 0\n"})
    config = make_config(tmp_path, ollama.url, [repo, other])
    serve = serve_factory(config, notify)
    notify.wait("READY=1")
    wait_for(lambda: status_report(config)["totals"]["enriched"] == 3, what="catch-up enrichment")
    assert state_of(config, repo) == "ok"
    return config, serve, other


@pytest.mark.timeout(60)
def test_a_root_moved_away_is_missing_its_edits_are_dropped_and_moving_back_costs_only_the_edit(
        tmp_path, repo, ollama, notify, running):
    """mv repo repo2: STATUS and status --json say missing; an edit in repo2 deletes nothing under the
    configured path; mv repo2 repo: watched again, and only the edited function is sent."""
    config, serve, other = running
    moved = tmp_path / "repo2"
    repo.rename(moved)
    notify.wait(f"degraded: repo missing {repo}")
    wait_for(lambda: state_of(config, repo) == "missing", what="status --json state missing")
    assert [e["now"] for e in log_events(serve, "repo_moved")] == ["missing"]
    before = len(chats(ollama))
    (moved / "src" / "a.py").write_text(ORIGINAL.replace("return x", "return x * 7"))
    sentinel(other, ollama, 1)
    assert status_report(config)["repos"][0]["files"] == 1  # the moved tree's edit removed nothing
    moved.rename(repo)
    wait_for(lambda: state_of(config, repo) == "ok", what="state ok again")
    wait_for(lambda: any("x * 7" in r.json["messages"][-1]["content"] for r in chats(ollama)), what="the edit")
    wait_for(lambda: status_report(config)["repos"][0]["pending"] == 0, what="settled")
    assert len(chats(ollama)) == before + 2  # the sentinel and the one edited function
    assert log_events(serve, "file_deleted") == [] and log_events(serve, "repo_back")
    assert serve.stop() == 0


@pytest.mark.timeout(60)
def test_a_root_replaced_by_a_new_directory_is_rewatched_and_rescanned_at_once(
        tmp_path, repo, ollama, notify, running):
    """mv repo repo.bak && mkdir repo: the new directory is watched and scanned (no files), edits in
    repo.bak are ignored, and the same code arriving in the new tree costs no request."""
    config, serve, other = running
    backup = tmp_path / "repo.bak"
    repo.rename(backup)
    repo.mkdir()
    wait_for(lambda: status_report(config)["repos"][0]["files"] == 0, what="the new, empty tree scanned")
    assert state_of(config, repo) == "ok"
    assert log_events(serve, "repo_moved")
    before = len(chats(ollama))
    (backup / "src" / "a.py").write_text(ORIGINAL.replace("return y", "return y - 5"))
    sentinel(other, ollama, 2)
    assert status_report(config)["repos"][0]["files"] == 0
    write_tree(repo, {"src/a.py": ORIGINAL})  # e.g. git clone of the same code
    wait_for(lambda: status_report(config)["repos"][0]["enriched"] == 2, what="the new tree indexed")
    sentinel(other, ollama, 3)
    assert len(chats(ollama)) == before + 2  # the two sentinels only
    assert not any("y - 5" in r.json["messages"][-1]["content"] for r in chats(ollama))
    assert serve.stop() == 0
