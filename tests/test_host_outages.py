"""One Ollama host outage is one error line, though both lanes (enrichment, embedding) wait on the host."""

from __future__ import annotations

import socket

import pytest
from structlog.testing import capture_logs

from llmc_rag_service.enrich.outages import HostOutages
from llmc_rag_service.service.pipeline import Pipeline
from tests.helpers import make_config, wait_for, write_tree


def test_the_first_owner_to_mark_a_host_down_reports_it_until_every_owner_saw_it_up():
    """A second pool marking the same host is no new outage; once all marks are gone, the next one is."""
    outages, enrich, embed = HostOutages(), Pool(), Pool()
    assert outages.down("http://h:1", enrich) is True
    assert outages.down("http://h:1", embed) is False
    assert outages.down("http://other:2", embed) is True  # hosts are separate
    outages.up("http://h:1", enrich)
    assert outages.down("http://h:1", enrich) is False  # the embed pool still waits on it: the same outage
    outages.up("http://h:1", enrich)
    outages.forget(embed)  # a stopped pool marks nothing
    assert outages.down("http://h:1", enrich) is True


def test_a_reload_during_an_outage_is_not_a_second_outage():
    """The host is down and reported; a reload replaces the pool; the new pool finds it down:
    the same outage (info), until a pool sees the host answer. Then the next outage is new."""
    outages, old, new = HostOutages(), Pool(), Pool()
    assert outages.down("http://h:1", old) is True
    outages.forget(old)  # the reload retires it
    assert outages.down("http://h:1", new) is False
    outages.up("http://h:1", new)
    assert outages.down("http://h:1", new) is True


class Pool:
    """An owner as the pools are: compared by identity, weakly referable."""


def test_a_retired_pools_late_failure_does_not_mute_the_next_outage():
    """A reload retires a pool while its request is in flight; the host goes down, the old
    pool's request fails after it was forgotten, the new pool waits too; the host comes back.
    The next outage is a new one (error level), not 'already reported' by the old pool."""
    outages, old, new = HostOutages(), Pool(), Pool()
    outages.forget(old)  # retired by the reload
    assert outages.down("http://h:1", old) is False  # its late failure: the new pool reports
    assert outages.down("http://h:1", new) is True
    outages.up("http://h:1", new)
    assert outages.down("http://h:1", new) is True


@pytest.fixture
def dead_url():
    """The URL of a loopback port nobody listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.timeout(60)
def test_an_unreachable_host_is_one_error_line_and_both_lanes_say_it_in_status(tmp_path, dead_url):
    """Both lanes find the host down: one ollama_unreachable at error level, the other lane's at info
    (already_reported), and STATUS still says for each lane that it waits."""
    repo = tmp_path / "repo"
    write_tree(repo, {"a.py": "def f(x):\n    return x\n"})
    config = make_config(tmp_path, dead_url, [repo], search={"embed_model": "nomic-embed-text"})
    pipeline = Pipeline(config)
    try:
        pipeline.scan_all()
        with capture_logs() as logs:
            pipeline.start_workers()
            wait_for(lambda: pipeline.ollama_down() == "unreachable" and pipeline.embeds_down() == "unreachable",
                     30, "both lanes to find the host down")
        status = pipeline.status_line()
    finally:
        pipeline.close(0.0)
    said = [e for e in logs if e["event"] == "ollama_unreachable"]
    assert [e["log_level"] for e in said] == ["error", "info"], said
    assert {e["lane"] for e in said} == {"enrich", "embed"} and all(e["url"] == dead_url for e in said)
    assert said[1]["already_reported"] is True
    assert "ollama unreachable" in status and "embeddings waiting: unreachable" in status, status


def test_an_answer_to_a_request_sent_before_the_outage_does_not_end_it(tmp_path, dead_url):
    """A request in flight as the server stopped gets its answer after another thread found the
    host down: no ollama_recovered (the outage goes on; the next failure would be a second error
    line); an answer to a request sent after the host was marked down, or a probe, ends it."""
    repo = tmp_path / "repo"
    write_tree(repo, {"a.py": "def f(x):\n    return x\n"})
    pipeline = Pipeline(make_config(tmp_path, dead_url, [repo]))
    try:
        pool = pipeline.pool
        host = pool.hosts[0]
        sent = pool.clock() - 1.0  # a request sent a second ago, still in flight
        with capture_logs() as logs:
            pool._host_down(host, "unreachable", "connection refused")
            pool._host_ok(host, sent)
            assert host.state == "unreachable"
            pool._host_ok(host, pool.clock())
        assert host.state == "ok"
    finally:
        pipeline.close(0.0)
    assert [e["event"] for e in logs] == ["ollama_unreachable", "ollama_recovered"], logs
