"""Team mode in real ``llmc-rag serve`` processes: a holder killed with SIGKILL, what ``status --json`` and
STATUS show, and a wrong password said once at start."""

from __future__ import annotations

import json
import signal
import time

import pytest
from structlog.testing import capture_logs

from llmc_rag_service.service.status import status_report
from llmc_rag_service.testing.emulator import OllamaEmulator
from tests.helpers import chats, make_config, wait_for, write_tree
from tests.teamkit import EMBED, TINY_CODE_BASE, copy_code_base, team_settings

pytestmark = pytest.mark.timeout(120)


def team_config(home, url, repo, dsn, lease_s=120.0, embed=False):
    return make_config(home, url, [repo], team={"postgres": dsn, "lease_s": lease_s},
                       logging={"level": "info", "format": "json"}, search={"embed_model": EMBED if embed else None})


def events(serve, name):
    return [e for e in map(json.loads, serve.logs().splitlines()) if e.get("event") == name]


#: The dead holder's lease (seconds): what the teammate must wait out. Short, yet three renewal periods
#: (``lease_s / 3``) long, so a holder alive at the kill still holds a live claim.
HOLDER_LEASE_S = 1.5


def test_a_daemon_killed_while_holding_a_claim_is_replaced_after_its_lease(pg, tmp_path, serve_factory, daemons):
    """serve sends a span and is killed with SIGKILL while the request hangs: its claim stays until its lease
    ends; a teammate defers the span meanwhile, then claims it and enriches it."""
    source = tmp_path / "source"
    write_tree(source, {"calc.py": "def area(w, h):\n    return w * h\n"})
    with OllamaEmulator() as emu:
        emu.inject("hang")  # the first request never gets its answer
        holder_repo = tmp_path / "holder" / "repo"
        write_tree(holder_repo, {"calc.py": (source / "calc.py").read_text()})
        serve = serve_factory(team_config(tmp_path / "holder", emu.url, holder_repo, pg.dsn, lease_s=HOLDER_LEASE_S))
        # Built (store, scan) before the kill, so it asks for the span while the dead holder's lease still runs.
        teammate = daemons(tmp_path, "teammate", emu.url, pg.dsn, team_settings(lease_s=5, defer_s=0.2),
                           source=source)
        wait_for(lambda: chats(emu), 30, "the holder's request")
        asked_at = time.monotonic()  # the lease ends no earlier than this + what the server says is left
        (holder, remaining_s), = pg.sql("SELECT holder, extract(epoch FROM expires_at - now())::float8 FROM llmc_claims")
        lease_ends = asked_at + remaining_s  # (a renewal before the kill only moves the end later)
        assert f":{serve.proc.pid}:" in holder
        serve.proc.send_signal(signal.SIGKILL)
        serve.proc.wait(10)
        with capture_logs() as logs:
            teammate.start().wait_done(30)
        sent = chats(emu)
    assert teammate.enriched() == teammate.span_hashes() and len(teammate.span_hashes()) == 1
    assert len(sent) == 2 and sent[1].t_start >= lease_ends - 0.5  # not before the dead holder's lease ran out
    assert "team_deferred" in [e["event"] for e in logs]  # it waited for the holder, then took over
    (taker,), = pg.sql("SELECT holder FROM llmc_claims")
    assert taker == teammate.pipeline.team.cache.holder


def test_status_json_and_the_status_line_show_the_team(pg, tmp_path, serve_factory, daemons, notify):
    """A teammate enriched and embedded the code base: serve on another copy takes every span and every final
    vector from the team cache; status --json says so without the password, and STATUS shows the hits. The
    role owns only its database."""
    dsn = pg.create_role(f"llmc_{pg.dbname}", "pw-not-shown", own_database=f"{pg.dbname}_team")
    with OllamaEmulator(embed_models=[EMBED]) as emu:
        source = copy_code_base(tmp_path / "source", TINY_CODE_BASE)
        teammate = daemons(tmp_path, "teammate", emu.url, dsn, team_settings(), source=source, embed=True).start()
        teammate.wait_done()
        spans = len(teammate.span_hashes())
        config = team_config(tmp_path / "me", emu.url, copy_code_base(tmp_path / "me" / "repo", TINY_CODE_BASE), dsn,
                             embed=True)
        serve = serve_factory(config, notify)
        notify.wait(f"team: {spans} hits, 0 waiting for teammates", 30)
        wait_for(lambda: (status_report(config)["team"] or {}).get("hits") == spans
                 and status_report(config)["totals"]["embedded"] == spans
                 and status_report(config)["team"]["embed_hits"] >= spans, 30, "the team counters stored")
        assert len(chats(emu)) == spans  # all sent by the teammate, none by serve
        report = status_report(config)  # what status --json prints
        assert serve.stop() == 0
    team = report["team"]
    assert team.pop("queries") > 0
    # Every final vector came from the teammate; serve may have shared vectors of code alone it made first.
    assert team.pop("embed_hits") >= spans and isinstance(team.pop("embed_published"), int)
    assert team == {"url": f"postgresql://llmc_{pg.dbname}@{pg.cluster.host}:{pg.cluster.port}/{pg.dbname}_team",
                    "reachable": True, "hits": spans, "published": 0, "outbox": 0, "deferred": 0,
                    "last_error": None}
    assert report["totals"]["enriched"] == spans and "pw-not-shown" not in json.dumps(report)
    assert len(events(serve, "team_hit")) == spans and len(events(serve, "team_embed_hit")) >= spans


def test_a_wrong_password_is_said_once_at_start_and_the_daemon_works_alone(pg, tmp_path, serve_factory, notify):
    """team.postgres with a wrong password: one clear error line (no password), every span enriched locally,
    the results kept in the outbox, and status --json and STATUS say why."""
    dsn = pg.cluster.dsn(pg.dbname, password="wrong-pw")
    with OllamaEmulator() as emu:
        repo = copy_code_base(tmp_path / "me" / "repo", TINY_CODE_BASE)
        config = team_config(tmp_path / "me", emu.url, repo, dsn)
        serve = serve_factory(config, notify)
        line = notify.wait("password authentication failed", 30)

        def all_kept() -> bool:  # every span enriched alone, and each result waits in the outbox
            report = status_report(config)
            totals = report["totals"]
            return totals["pending"] == 0 and 0 < totals["spans"] == report["team"]["outbox"]

        wait_for(all_kept, 60, "everything enriched alone, every result in the outbox")
        spans = status_report(config)["totals"]["spans"]
        team = status_report(config)["team"]
        assert serve.stop() == 0
    said = events(serve, "team_unreachable")
    assert len(said) == 1 and said[0]["kind"] == "auth_failed" and "PGPASSFILE" in said[0]["error"]
    assert "wrong-pw" not in serve.logs() and "wrong-pw" not in line
    assert team["reachable"] is False and team["outbox"] == spans
    assert team["last_error"].startswith("team cache auth failed at ") and "password authentication" in team["last_error"]
    assert len(chats(emu)) == spans
