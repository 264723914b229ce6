"""``doctor``'s team check against a real PostgreSQL: off, ok, and each way the team database can refuse."""

from __future__ import annotations

import json
import subprocess
import sys

from llmc_rag_service.service.doctor import check_team
from llmc_rag_service.testing.postgres import free_port
from tests.helpers import make_config


def config_with(tmp_path, dsn):
    return make_config(tmp_path, "http://127.0.0.1:9", [tmp_path], team={"postgres": dsn})


def test_team_mode_off_is_ok(tmp_path):
    """No team.postgres: the check says team mode is off, and contacts nothing."""
    check = check_team(make_config(tmp_path, "http://127.0.0.1:9", [tmp_path]))
    assert (check.status, check.detail) == ("ok", "off (team.postgres: null): enriching alone")


def test_a_working_team_database_is_ok_and_gets_its_tables(pg, tmp_path):
    """A DSN that logs in: ok with the schema version; the check created the tables."""
    check = check_team(config_with(tmp_path, pg.dsn))
    assert check.status == "ok" and check.detail.endswith("login ok, team schema version 1")
    assert pg.cluster.password not in check.detail
    assert pg.sql("SELECT count(*) FROM llmc_enrichments") == [(0,)]


def test_a_wrong_password_fails_with_the_fix_and_no_password(pg, tmp_path):
    """A wrong password fails (the daemon would work alone), says so in one line, and never shows it."""
    check = check_team(config_with(tmp_path, pg.cluster.dsn(pg.dbname, password="wrong-pw")))
    assert check.status == "fail" and "password authentication failed" in check.detail
    assert "PGPASSFILE" in check.fix and "wrong-pw" not in check.detail + check.fix


def test_a_missing_database_fails_with_the_create_statement(pg, tmp_path):
    check = check_team(config_with(tmp_path, pg.cluster.dsn("no_such_db")))
    assert check.status == "fail" and 'database "no_such_db" does not exist' in check.detail
    assert "CREATE DATABASE" in check.fix


def test_an_unreachable_server_only_warns(tmp_path):
    """Nothing listens at the port: warn (it may be down for now), and the fix names what to do meanwhile."""
    check = check_team(config_with(tmp_path, f"postgresql://llmc@127.0.0.1:{free_port()}/llmc"))
    assert check.status == "warn" and check.detail.startswith("team cache unreachable at postgresql://llmc@127.0.0.1:")
    assert "works alone" in check.fix


def test_without_the_postgres_extra_doctor_fails_with_the_install_command(tmp_path):
    """psycopg missing (blocked in a fresh interpreter): the check fails naming the extra to install."""
    config = config_with(tmp_path, "postgresql://llmc@127.0.0.1:1/llmc")
    code = ("import sys, json; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
            "from llmc_rag_service.config import load_config\n"
            "from llmc_rag_service.service.doctor import check_team\n"
            f"c = check_team(load_config({str(config.source)!r}))\n"
            "print(json.dumps([c.status, c.detail, c.fix]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    status, detail, fix = json.loads(out.stdout)
    assert status == "fail" and "psycopg is not installed" in detail and "[postgres]" in fix
