"""Team mode end to end: real Pipelines (separate state dirs) on copies of one real code base, one Ollama
emulator, one real PostgreSQL server."""

from __future__ import annotations

import collections
import json
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from llmc_rag_service import cli
from llmc_rag_service.config import TeamConfig
from llmc_rag_service.service.status import status_report
from llmc_rag_service.testing.emulator import OllamaEmulator
from llmc_rag_service.testing.postgres import free_port
from tests.helpers import chats, make_config, wait_for
from tests.teamkit import SMALL_CODE_BASE, TINY_CODE_BASE, copy_code_base, team_settings

pytestmark = pytest.mark.timeout(120)


def team_rows(pg) -> set[str]:
    return {r[0] for r in pg.sql("SELECT span_hash FROM llmc_enrichments")}


def test_three_daemons_on_copies_of_one_code_base_send_each_span_once(pg, tmp_path, daemons):
    """Three daemons start on the same code at once: the emulator gets each distinct span once in total; every
    daemon ends with every enrichment; what one sent, the other two took from the team cache."""
    with OllamaEmulator() as emu, capture_logs() as logs:
        team = [daemons(tmp_path, f"dev{i}", emu.url, pg.dsn, team_settings(lease_s=60)) for i in range(3)]
        for daemon in team:
            daemon.start()
        for daemon in team:
            daemon.wait_done()
        prompts = [r.json["messages"][-1]["content"] for r in chats(emu)]
        spans = team[0].span_hashes()
        # A hit is counted, then logged, just after its commit: give the counters and the log that moment
        # (inside capture_logs, or the last lines are lost).
        wait_for(lambda: sum(d.pipeline.team_status()["hits"] for d in team) == 2 * len(spans)
                 and sum(e["event"] == "team_hit" for e in logs) >= 2 * len(spans), 10, "hits counted and logged")
    assert len(spans) > 100 and all(d.span_hashes() == spans for d in team)
    assert len(prompts) == len(spans) and max(collections.Counter(prompts).values()) == 1
    assert all(d.enriched() == spans for d in team)
    statuses = [d.pipeline.team_status() for d in team]
    assert sum(s["published"] for s in statuses) == len(spans) and team_rows(pg) == spans
    assert {s["deferred"] for s in statuses} == {0} and {s["outbox"] for s in statuses} == {0}
    events = collections.Counter(e["event"] for e in logs)
    assert events["team_hit"] == 2 * len(spans) and events["team_deferred"] > 0
    line = team[0].pipeline.status_line()
    assert line.startswith("idle:") and line.endswith(f"team: {statuses[0]['hits']} hits, 0 waiting for teammates")


def test_a_span_in_the_team_cache_costs_no_request(pg, tmp_path, daemons, capsys):
    """A teammate enriched the code base; `enrich` on another copy sends nothing and says where the results
    came from."""
    source = copy_code_base(tmp_path / "source", TINY_CODE_BASE)
    with OllamaEmulator() as emu:
        first = daemons(tmp_path, "alice", emu.url, pg.dsn, team_settings(), source=source).start()
        first.wait_done()
        sent = len(chats(emu))
        repo = copy_code_base(tmp_path / "bob" / "repo", TINY_CODE_BASE)
        config = make_config(tmp_path / "bob", emu.url, [repo], team={"postgres": pg.dsn})
        assert cli.main(["enrich", "-c", str(config.source)]) == 0
        assert len(chats(emu)) == sent
    spans = len(first.span_hashes())
    assert f"enrich: {spans}/{spans} spans enriched ({spans} from the team cache), 0 failed" in capsys.readouterr().err
    assert status_report(config)["totals"]["enriched"] == spans


def test_the_team_server_stopped_mid_run_and_restarted_loses_nothing(pg, tmp_path, daemons):
    """PostgreSQL stops while two daemons work: both finish alone, keeping what they could not publish in
    their outboxes; when it is back every result is in the team cache and the outboxes are empty."""
    source = copy_code_base(tmp_path / "source", SMALL_CODE_BASE)  # some 75 spans: 20 before the outage, most after
    with OllamaEmulator(latency_s=0.01, num_parallel=2) as emu:
        team = [daemons(tmp_path, f"dev{i}", emu.url, pg.dsn, team_settings(), source=source)
                for i in range(2)]
        for daemon in team:
            daemon.start()
        wait_for(lambda: len(chats(emu)) >= 20, 30, "some work before the outage")
        pg.stop()
        for daemon in team:
            daemon.wait_done(60)
        spans = team[0].span_hashes()
        assert all(d.enriched() == spans for d in team)  # nothing lost locally, nothing waited for the team
        waiting = [d.pipeline.team_status() for d in team]
        assert all(s["reachable"] is False and s["last_error"].startswith("team cache unreachable") for s in waiting)
        assert sum(s["outbox"] for s in waiting) > 0
        pg.start()
        for daemon in team:
            wait_for(lambda d=daemon: d.pipeline.team_status()["reachable"] and not d.pipeline.team_status()["outbox"],
                     30, "reconnected and the outbox drained")
    assert team_rows(pg) == spans


def test_a_poisoned_row_in_the_team_cache_is_ignored(pg, tmp_path, daemons):
    """A row that fails the enrichment schema is never stored: the daemon logs it and enriches the span itself."""
    with OllamaEmulator() as emu:
        daemon = daemons(tmp_path, "dev", emu.url, pg.dsn, team_settings(),
                         source=copy_code_base(tmp_path / "source", TINY_CODE_BASE))
        victim = sorted(daemon.span_hashes())[0]
        daemon.pipeline.team.cache.check()  # the first contact creates the tables; then one key is poisoned
        pg.sql("INSERT INTO llmc_enrichments(span_hash, model, prompt_version, fields, producer) "
               "VALUES (%s, 'test-model', %s, %s, 'mallory')",
               (victim, daemon.pipeline.queue.prompt_version, json.dumps({"summary": 42, "usage": ["rm -rf /"]})))
        with capture_logs() as logs:
            daemon.start().wait_done()
        sent = chats(emu)
    assert daemon.enriched() == daemon.span_hashes() and len(sent) == len(daemon.span_hashes())
    row = daemon.pipeline.store.conn.execute("SELECT summary FROM enrichments WHERE span_hash = ?", (victim,)).fetchone()
    assert row["summary"] != 42 and "rm -rf" not in json.dumps(dict(row))
    rejected = [e for e in logs if e["event"] == "team_row_invalid"]
    assert rejected and {e["span_hash"] for e in rejected} == {victim} and rejected[0]["producer"] == "mallory"


def test_an_unreachable_team_database_from_the_start_does_not_hold_local_work(tmp_path, daemons):
    """Nothing listens at team.postgres: the daemon enriches everything alone, says why once, and keeps every
    result in its outbox for later."""
    dsn = f"postgresql://llmc:secret@127.0.0.1:{free_port()}/llmc"
    with OllamaEmulator() as emu, capture_logs() as logs:
        daemon = daemons(tmp_path, "dev", emu.url, dsn, team_settings(),
                         source=copy_code_base(tmp_path / "source", TINY_CODE_BASE)).start()
        daemon.wait_done(60)
    spans = daemon.span_hashes()
    assert daemon.enriched() == spans and len(chats(emu)) == len(spans)
    # A worker publishes (here: keeps in the outbox) just after storing its answer.
    wait_for(lambda: daemon.pipeline.team_status()["outbox"] == len(spans), 10, "every result in the outbox")
    status = daemon.pipeline.team_status()
    assert status["reachable"] is False and status["outbox"] == len(spans) and "secret" not in status["last_error"]
    said = [e for e in logs if e["event"] == "team_unreachable"]
    assert len(said) == 1 and said[0]["url"] == status["url"] and "secret" not in status["url"]
    assert daemon.pipeline.status_line().endswith(f"{status['last_error']}; {len(spans)} to publish")


def test_a_reload_turns_team_mode_on_and_off(pg, tmp_path, daemons):
    """A reload that sets team.postgres gives the workers a team gate (the teammate's results cost no
    request); one that removes it closes the gate and its threads."""
    source = copy_code_base(tmp_path / "source", TINY_CODE_BASE)
    with OllamaEmulator() as emu:
        alice = daemons(tmp_path, "alice", emu.url, pg.dsn, team_settings(), source=source).start()
        alice.wait_done()
        sent = len(chats(emu))
        bob = daemons(tmp_path, "bob", emu.url, None, team_settings(), source=source)
        assert bob.pipeline.team_status() is None
        on = replace(bob.config, team=TeamConfig(postgres=pg.dsn, lease_s=30.0))
        assert "team" in bob.pipeline.apply_config(bob.config, on)["sections"]
        bob.start().wait_done()
        assert len(chats(emu)) == sent
        wait_for(lambda: bob.pipeline.team_status()["hits"] == len(bob.span_hashes()), 10, "hits counted")
        gate = bob.pipeline.team
        assert "team" in bob.pipeline.apply_config(on, replace(on, team=TeamConfig()))["sections"]
        assert bob.pipeline.team is None and bob.pipeline.team_status() is None
        assert gate.cache.db.closed and not gate.cache.listening.is_set()
