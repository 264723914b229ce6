"""End to end: no secret value of the canary corpus leaves its file, through ``enrich`` and ``serve``.

The corpus (tests/data/canaries, every value listed in its manifest.json) is a
repo of source files with planted secrets and of credential files (by name and
by content). Against the Ollama emulator, which records every request body, no
canary byte may appear in a request, in the SQLite file or its WAL, or in any
output: ``show``, ``search``, ``export``, ``status``, the MCP tools, the logs.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from llmc_rag_service import cli
from llmc_rag_service.index.redact import Redactor
from llmc_rag_service.mcp import tools
from llmc_rag_service.service.status import show_report, status_report
from llmc_rag_service.store.db import Store
from llmc_rag_service.testing.emulator import OllamaEmulator, default_answer
from tests.helpers import chats, make_config, wait_for, write_tree

CANARIES = Path(__file__).resolve().parent / "data" / "canaries"
MANIFEST = json.loads((CANARIES / "manifest.json").read_text())
SOURCE_FILES = sorted({item["file"] for item in MANIFEST["source"]})
#: Every planted value, a multi-line one (a key block) also line by line.
CANARY_VALUES = sorted({part for item in MANIFEST["source"] + MANIFEST["secret_files"]
                        for part in [item["value"], *item["value"].split("\n")] if len(part) >= 8})
#: Credential files of the corpus: 16 by name, 5 only by their content.
SECRET_FILES = len(MANIFEST["secret_files"])
BY_CONTENT = sorted(item["file"] for item in MANIFEST["secret_files"] if item["by"] == "content")
#: Functions of the source files with secrets, which must still be enriched.
FUNCTIONS = {"src/settings.py": {"media_url", "database_settings"},
             "src/client.py": {"GitHubClient.repo", "deploy_client", "internal_session", "connect_reporting",
                               "upload"}}
#: A fake AWS access key id (not in the corpus) that the model writes into its answers.
FAKE_KEY = "AKIAJ5QZ3XWV7R2MB6TD"
#: A fake GitHub token (not in the corpus) that a save adds while serve runs.
SAVED_TOKEN = "ghp_Zx8Kq2Lm4Np6Rt8Vw0Yb2Cd4Ef6Gh8Jk0Mn2P"


def leaks(data: str | bytes) -> list[str]:
    """The canary values found in ``data``, as bytes or lower-cased (the search index lower-cases)."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogateescape")
    low = raw.lower()
    return [v for v in CANARY_VALUES if v.encode() in raw or v.lower().encode() in low]


def state_bytes(config) -> dict[str, bytes]:
    """The bytes of the SQLite file and of its WAL (and shm) as they are now."""
    return {p.name: p.read_bytes() for p in sorted(config.state_dir.glob("llmc-rag.db*"))}


@pytest.fixture
def ollama() -> Iterator[OllamaEmulator]:
    """The emulator with the embedding model too: embedding inputs are requests to check as well."""
    with OllamaEmulator(embed_models=["nomic-embed-text"]) as emu:
        yield emu


@pytest.fixture
def canary_repo(tmp_path: Path) -> Path:
    """A repo holding the canary corpus: src/ (secrets in source) and files/ (credential files)."""
    root = tmp_path / "repo"
    for part in ("src", "files"):
        shutil.copytree(CANARIES / part, root / part)
    return root


def findings(text: str, path: str = "") -> tuple:
    """What the redactor finds in ``text`` (its log lines kept out of the command logs under test)."""
    with capture_logs():
        return Redactor().redact(text, path=path, code=None if path else False).findings


def expected_redactions() -> int:
    """Values the redactor replaces in the corpus' source files (all of them are indexed)."""
    return sum(len(findings((CANARIES / f).read_text(), f)) for f in SOURCE_FILES)


def command_outputs(config, capsys) -> str:
    """stdout of show --json (each source file), search --json, export and status --json, and
    what the MCP tools return (get_span at every planted value's line, search_code with code)."""
    capsys.readouterr()
    repo = config.repos[0].path
    for relpath in SOURCE_FILES + ["files/config/package.json"]:
        assert cli.main(["show", "-c", str(config.source), "--json", str(repo / relpath)]) == 0
    for query in ("password", "token key secret", "client", "database url", "redacted"):
        assert cli.main(["search", "-c", str(config.source), "--json", query]) in (0, 1)
    assert cli.main(["export", "-c", str(config.source)]) == 0
    assert cli.main(["status", "-c", str(config.source), "--json"]) == 0
    out = capsys.readouterr().out
    mcp = [tools.search_code(config, q, 20, None, None, None, True) for q in ("password token", "client key")]
    for item in MANIFEST["source"]:
        text = (CANARIES / item["file"]).read_text()
        line = text[:text.index(item["value"])].count("\n") + 1
        mcp.append(tools.get_span(config, item["file"], line))
    return out + json.dumps(mcp, ensure_ascii=False)


def assert_functions_enriched(config, repo: Path) -> None:
    """Every span of the source files is enriched, the functions around the secrets included."""
    for relpath in SOURCE_FILES:
        spans = show_report(config, str(repo / relpath))
        assert spans and all(s["state"] == "enriched" for s in spans), relpath
        names = {s["name"] for s in spans if s["kind"] in ("function", "method")}
        assert FUNCTIONS.get(relpath, set()) <= names, (relpath, names)


def test_enrich_sends_stores_and_shows_no_canary_byte(tmp_path, canary_repo, ollama, capsys):
    """enrich on the canary corpus: 0 canary bytes in requests, the store (WAL included), outputs and logs;
    the code around each secret is still enriched, and status counts what was redacted and skipped."""
    config = make_config(tmp_path, ollama.url, [canary_repo], search={"embed_model": "nomic-embed-text"})
    Store(config.db_path).close()
    holder = sqlite3.connect(config.db_path)  # another connection: enrich's close keeps the WAL file
    try:
        holder.execute("SELECT COUNT(*) FROM meta").fetchone()
        assert cli.main(["enrich", "-c", str(config.source)]) == 0
        stored = state_bytes(config)
    finally:
        holder.close()
    logs = capsys.readouterr().err
    assert stored.get("llmc-rag.db-wal") and stored["llmc-rag.db"]
    bodies = json.dumps([r.json for r in ollama.requests], ensure_ascii=False)
    prompts = [c.json["messages"][-1]["content"] for c in chats(ollama)]
    totals = status_report(config)["totals"]
    assert totals["embedded"] == totals["spans"] > 0  # every span's embedding input was sent too
    # The embedded text reads code as words (enrich/embed_text.py): the marker arrives as "redacted aws access key".
    assert any("redacted aws access key" in text
               for r in ollama.requests if r.path == "/api/embed" for text in r.json["input"])
    assert leaks(bodies) == []
    assert {name: leaks(data) for name, data in stored.items()} == dict.fromkeys(stored, [])
    assert leaks(logs) == []
    assert leaks(command_outputs(config, capsys)) == []
    # The code around the secrets was sent with markers in their place, and enriched.
    assert any('AWS_ACCESS_KEY_ID = "<redacted:aws-access-key>"' in p for p in prompts)
    assert any("def media_url" in p for p in prompts) and any("def upload" in p for p in prompts)
    assert_functions_enriched(config, canary_repo)
    # Credential files: never in a prompt; those found by content logged as skipped, reason secret.
    assert not any(item["file"] in p for p in prompts for item in MANIFEST["secret_files"])
    skipped = [json.loads(line) for line in logs.splitlines() if '"file_skipped"' in line]
    assert sorted(s["path"] for s in skipped if s["reason"] == "secret") == BY_CONTENT
    assert all(s["detail"] for s in skipped if s["reason"] == "secret")  # why (a key name, a manifest kind)
    secrets = status_report(config)["secrets"]
    assert secrets == {"redacted": expected_redactions(), "secret_files_skipped": SECRET_FILES, "answers_redacted": 0}
    assert secrets["redacted"] >= len(MANIFEST["source"])


def test_redaction_log_lines_name_file_line_and_detector(tmp_path, canary_repo, ollama, capsys):
    """Each redacted value is logged once with its repo, file, real line and detector, and no value."""
    config = make_config(tmp_path, ollama.url, [canary_repo], search={"embed_model": "nomic-embed-text"})
    assert cli.main(["enrich", "-c", str(config.source)]) == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"secret_redacted"' in line]
    assert len(events) == expected_redactions()
    for item in MANIFEST["source"]:
        text = (CANARIES / item["file"]).read_text()
        line = text[:text.index(item["value"])].count("\n") + 1
        assert any(e["path"] == item["file"] and e["line"] == line and e["repo"] == str(canary_repo)
                   and e["detector"] for e in events), (item["file"], line)
    assert leaks(json.dumps(events)) == []


@pytest.mark.timeout(120)
def test_serve_sends_stores_and_shows_no_canary_byte(tmp_path, canary_repo, ollama, notify, serve_factory, capsys):
    """serve (a real process) on the canary corpus: 0 canary bytes in requests, in the store and its
    WAL while it runs and after it stopped, in outputs and in its log; the functions are enriched."""
    config = make_config(tmp_path, ollama.url, [canary_repo], search={"embed_model": "nomic-embed-text"})
    serve = serve_factory(config, notify)
    notify.wait("READY=1")

    def settled() -> bool:
        totals = status_report(config)["totals"]
        return totals["spans"] > 0 and totals["enriched"] == totals["embedded"] == totals["spans"]

    wait_for(settled, 60, "every span enriched and embedded")
    running = state_bytes(config)
    assert running.get("llmc-rag.db-wal")  # the daemon holds the store open: its WAL is there
    outputs = command_outputs(config, capsys)
    # A save while it runs: the new secret is redacted too, the edit is enriched.
    added = f'def rotate():\n    """Rotates the token."""\n    return "{SAVED_TOKEN}"\n'
    with (canary_repo / "src" / "client.py").open("a") as fh:
        fh.write("\n\n" + added)
    wait_for(lambda: any("def rotate" in c.json["messages"][-1]["content"] for c in chats(ollama)), 30, "the save")
    wait_for(settled, 30, "the save enriched")
    assert serve.stop() == 0
    after = state_bytes(config)
    bodies = json.dumps([r.json for r in ollama.requests], ensure_ascii=False)
    assert SAVED_TOKEN not in bodies
    assert all(SAVED_TOKEN.encode() not in data for data in after.values())
    assert leaks(bodies) == []
    assert {name: leaks(data) for name, data in {**running, **after}.items()} == dict.fromkeys({**running, **after}, [])
    assert leaks(outputs) == [] and leaks(command_outputs(config, capsys)) == []
    assert leaks(serve.logs()) == [] and SAVED_TOKEN not in serve.logs()
    assert_functions_enriched(config, canary_repo)
    secrets = status_report(config)["secrets"]
    assert secrets["secret_files_skipped"] == SECRET_FILES
    assert secrets["redacted"] == expected_redactions() + 1  # the saved token


def leaky_answer(request: dict) -> str:
    """A valid enrichment whose summary and usage quote an AWS access key id."""
    answer = json.loads(default_answer(request))
    answer["summary"] = f"Uploads to S3 with the access key {FAKE_KEY}."
    answer["usage"] = f"boto3.client('s3', aws_access_key_id='{FAKE_KEY}')"
    return json.dumps(answer)


def test_a_secret_in_a_model_answer_is_stored_redacted(tmp_path, capsys):
    """An answer quoting a fake AWS key is stored with a marker in its place: not in the store, show or
    export; status counts it, and the log line names the file and line, not the value."""
    repo = tmp_path / "repo"
    write_tree(repo, {"s3.py": "def upload(name):\n    return name\n\n\ndef size(name):\n    return len(name)\n"})
    assert findings(f"the key {FAKE_KEY}")  # the detector takes it for a key
    with OllamaEmulator(answer=leaky_answer) as emu:
        config = make_config(tmp_path, emu.url, [repo])
        assert cli.main(["enrich", "-c", str(config.source)]) == 0
        assert len(chats(emu)) == 2
    logs = capsys.readouterr().err
    spans = show_report(config, str(repo / "s3.py"))
    assert [s["state"] for s in spans] == ["enriched", "enriched"]
    for span in spans:
        assert span["enrichment"]["summary"] == "Uploads to S3 with the access key <redacted:aws-access-key>."
        assert span["enrichment"]["usage"] == "boto3.client('s3', aws_access_key_id='<redacted:aws-access-key>')"
    assert cli.main(["export", "-c", str(config.source)]) == 0
    assert FAKE_KEY not in capsys.readouterr().out
    assert all(FAKE_KEY.encode() not in data for data in state_bytes(config).values())
    assert FAKE_KEY not in logs
    assert status_report(config)["secrets"]["answers_redacted"] == 4  # two fields of two answers
    events = [json.loads(line) for line in logs.splitlines() if '"secret_redacted"' in line]
    assert {(e["path"], e["line"], e["source"]) for e in events} == {("s3.py", 1, "answer"), ("s3.py", 5, "answer")}


@pytest.mark.timeout(120)
def test_a_teammates_answer_with_a_secret_is_stored_redacted(pg, tmp_path, capsys):
    """A teammate on an older version (no answer redaction) shares answers quoting a key through the team
    cache; enrich on another copy takes them without a request and stores them redacted."""
    from tests.teamkit import Daemon, team_settings

    source = tmp_path / "source"
    write_tree(source, {"s3.py": "def upload(name):\n    return name\n\n\ndef size(name):\n    return len(name)\n"})
    with OllamaEmulator(answer=leaky_answer) as emu:
        alice = Daemon(tmp_path, "alice", emu.url, pg.dsn, team_settings(), source=source)
        try:
            alice.pipeline.pool.redact_answer = None  # an older version: answers kept and shared as they came
            alice.start()
            alice.wait_done()
            wait_for(lambda: alice.pipeline.team_status()["published"] == 2, 15, "alice's answers published")
        finally:
            alice.close()
        repo = tmp_path / "bob" / "repo"
        shutil.copytree(source, repo)
        config = make_config(tmp_path / "bob", emu.url, [repo], team={"postgres": pg.dsn})
        assert cli.main(["enrich", "-c", str(config.source)]) == 0
        assert len(chats(emu)) == 2  # alice's two; bob sent nothing
    spans = show_report(config, str(repo / "s3.py"))
    assert [s["enrichment"]["summary"] for s in spans] == ["Uploads to S3 with the access key "
                                                           "<redacted:aws-access-key>."] * 2
    assert all(FAKE_KEY.encode() not in data for data in state_bytes(config).values())
    assert status_report(config)["secrets"]["answers_redacted"] == 4
    assert FAKE_KEY not in capsys.readouterr().err
