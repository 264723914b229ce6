"""Several Ollama hosts (``ollama.hosts``): shared work, a dying host quarantined, every job done once."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.helpers import wait_for
from llmc_rag_service.testing.emulator import OllamaEmulator
from tests.helpers import fast_backoffs


def chats(emu: OllamaEmulator) -> list:
    return [r for r in emu.requests if r.path == "/api/chat"]


def answered(emu: OllamaEmulator) -> list[str]:
    """The user message of every chat whose whole answer the emulator sent."""
    return [r.json["messages"][-1]["content"] for r in chats(emu) if r.done_sent]


def test_a_host_dying_mid_run_loses_and_duplicates_nothing(tmp_path, pipelines, monkeypatch):
    """Two hosts share the jobs; one dies mid-request; the other finishes everything, each span answered exactly once."""
    fast_backoffs(monkeypatch)
    with OllamaEmulator(latency_s=0.05) as a, OllamaEmulator(latency_s=0.05) as b:
        hosts = [{"url": a.url, "concurrency": 2}, {"url": b.url, "concurrency": 2}]
        p = pipelines(tmp_path, a.url, files=40, ollama={"hosts": hosts})
        p.start()
        wait_for(lambda: len(answered(b)) >= 2, 10, "host b answering")
        # Both of b's slots hold a request that has received no byte when b dies: a request cut
        # mid-answer counts as an attempt (the server may have crashed on it), an outage does not.
        before = len(chats(b))
        b.inject("slow", count=2, seconds=30)
        wait_for(lambda: sum(r.t_end is None for r in chats(b)[before:]) == 2, 10, "two requests open on b")
        b.stop()
        p.wait_done()
        host_b = p.pipeline.pool.hosts[1]
        wait_for(lambda: host_b.state == "unreachable", 5, "b marked unreachable")
        status = p.pipeline.status_line()
        once = Counter(answered(a) + answered(b))
    assert [j["state"] for j in p.jobs()] == ["done"] * 40
    assert all(j["attempts"] == 1 for j in p.jobs())  # the outage cost no attempt
    assert len(once) == 40 and set(once.values()) == {1}
    assert answered(a) and answered(b)  # both hosts took work
    name_a, name_b = (u.split("://")[1] for u in (a.url, b.url))
    assert f"; ollama 1/2 ok: {name_a} ok, {name_b} unreachable (" in status and status.startswith("idle: ")
    assert p.pipeline.ollama_down() is None and p.pipeline.last_error().startswith(f"{b.url}: ")


def test_all_hosts_down_is_waiting_and_status_lists_each(tmp_path, pipelines, monkeypatch):
    """With every host unreachable STATUS says waiting and shows each host; jobs keep their attempts."""
    fast_backoffs(monkeypatch)
    with OllamaEmulator() as a, OllamaEmulator() as b:
        urls = [a.url, b.url]
    p = pipelines(tmp_path, urls[0], files=3, ollama={"hosts": [{"url": u, "concurrency": 1} for u in urls]})
    p.start()
    wait_for(lambda: p.pipeline.ollama_down() == "unreachable", 10, "both hosts down")
    status = p.pipeline.status_line()
    assert status.startswith("waiting: 3 pending") and "; ollama 0/2 ok: " in status
    assert status.count("unreachable (") == 2
    assert all(j["attempts"] == 0 for j in p.jobs())


@pytest.mark.timeout(60)
def test_a_host_that_keeps_hanging_does_not_dead_letter_jobs_another_host_can_do(tmp_path, pipelines, monkeypatch):
    """One of two hosts answers /api/version but hangs every chat: its failures quarantine it and move the jobs; nothing is dead-lettered."""
    from llmc_rag_service.enrich import ollama as ol

    fast_backoffs(monkeypatch)
    with OllamaEmulator() as good, OllamaEmulator() as bad:
        bad.inject("hang", count=100000, seconds=30)
        monkeypatch.setattr(ol, "CHUNK_TIMEOUT_S", 0.3)
        hosts = [{"url": good.url, "concurrency": 1}, {"url": bad.url, "concurrency": 1}]
        p = pipelines(tmp_path, good.url, files=12, ollama={"hosts": hosts, "load_timeout_s": 1, "timeout_s": 1},
                      queue={"max_attempts": 3})
        p.start()
        p.wait_done(timeout_s=40)
        states = [j["state"] for j in p.jobs()]
        assert states.count("done") == 12, p.jobs()
        bad.clear_faults()
