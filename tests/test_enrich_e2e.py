"""End to end: ``llmc-rag enrich`` on real files against the Ollama emulator."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from llmc_rag_service import cli
from llmc_rag_service.enrich.prompt import SCHEMA
from llmc_rag_service.service.status import show_report, status_report
from tests.helpers import make_config, wait_for, write_tree
from llmc_rag_service.testing.emulator import OllamaEmulator

CASES = Path(__file__).resolve().parent / "data" / "cases_files"

SOURCE = {
    "src/a.py": "import os\n\n\ndef f(x):\n    return x\n\n\nclass A:\n    def m(self):\n        return 1\n",
    "lib/u.js": "function add(a, b) {\n  return a + b;\n}\n",
    "README.md": "# demo\n\nSome words.\n",
}


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    write_tree(root, SOURCE)
    return root


def run(config, *args) -> int:
    return cli.main([args[0], "-c", str(config.source), *args[1:]])


def chats(emu: OllamaEmulator) -> list:
    return [r for r in emu.requests if r.path == "/api/chat"]


def test_enrich_enriches_every_span_then_a_second_run_sends_nothing(tmp_path, repo, ollama):
    """enrich stores one validated enrichment per span; re-running on an unchanged repo sends no request."""
    config = make_config(tmp_path, ollama.url, [repo])
    assert run(config, "enrich") == 0
    report = status_report(config)
    totals = report["totals"]
    assert totals["spans"] == len(chats(ollama)) >= 5
    assert totals["enriched"] == totals["spans"] and totals["pending"] == totals["failed"] == 0
    before = len(ollama.requests)
    assert run(config, "enrich") == 0
    assert len(ollama.requests) == before + 0


def test_every_request_has_the_contract_shape(tmp_path, repo, ollama):
    """Each /api/chat body carries keep_alive as configured, the schema as format, the same options, think false and stream true."""
    config = make_config(tmp_path, ollama.url, [repo], ollama={"keep_alive": -1})
    assert run(config, "enrich") == 0
    bodies = [r.json for r in chats(ollama)]
    assert bodies and all(b["keep_alive"] == -1 and isinstance(b["keep_alive"], int) for b in bodies)
    assert all(b["format"] == SCHEMA and b["think"] is False and b["stream"] is True for b in bodies)
    assert len({json.dumps(b["options"], sort_keys=True) for b in bodies}) == 1
    assert bodies[0]["options"]["num_ctx"] == 8192 and bodies[0]["model"] == "test-model"
    assert ollama.loads == 1  # identical load-time options: never a reload


def test_duration_string_keep_alive_stays_a_string(tmp_path, repo, ollama):
    """keep_alive '15m' is sent as the JSON string '15m'."""
    config = make_config(tmp_path, ollama.url, [repo])
    assert run(config, "enrich") == 0
    assert {r.json["keep_alive"] for r in chats(ollama)} == {"15m"}


def test_seed_model_loaded_forever_is_used_at_once_without_ps_or_ollama_process(tmp_path, repo, ollama, monkeypatch):
    """The seed: with the model loaded and listed by /api/ps with keep_alive forever, work starts at once; no /api/ps, no `ollama` process."""
    import httpx

    httpx.post(f"{ollama.url}/api/generate", json={"model": "test-model", "prompt": "", "keep_alive": -1,
                                                 "options": {"num_ctx": 8192}}, timeout=10)
    listed = httpx.get(f"{ollama.url}/api/ps", timeout=10).json()["models"]
    assert listed and int(listed[0]["expires_at"][:4]) > 2300  # "forever": ~year 2318 past today
    # An `ollama` on PATH that leaves a mark if anything runs it.
    bindir, mark = tmp_path / "bin", tmp_path / "ollama-was-run"
    bindir.mkdir()
    (bindir / "ollama").write_text(f"#!/bin/sh\ntouch {mark}\nsleep 600\n")
    (bindir / "ollama").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    ps_before = ollama.count("/api/ps")
    config = make_config(tmp_path, ollama.url, [repo], ollama={"keep_alive": -1})
    assert run(config, "enrich") == 0
    assert ollama.count("/api/ps") == ps_before
    assert not mark.exists()
    assert status_report(config)["totals"]["pending"] == 0
    assert ollama.loads == 1


def test_bad_answers_are_retried_then_dead_lettered_with_reason(tmp_path, repo, ollama, capsys):
    """An answer that stays invalid is never stored: retried, then failed with its reason; exit 1."""
    write_tree(repo, {"only.py": "def z():\n    return 0\n"})
    for name in list(SOURCE):
        (repo / name).unlink()
    ollama.inject("invalid_json", count=3)
    config = make_config(tmp_path, ollama.url, [repo], queue={"max_attempts": 3})
    from llmc_rag_service.store import jobs as q

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(q, "BACKOFF_BASE_S", 0.01)
        mp.setattr(q.backoff_s, "__defaults__", (0.01, 0.05))
        assert run(config, "enrich") == 1
    spans = show_report(config, str(repo / "only.py"))
    assert [s["state"] for s in spans] == ["failed"]
    assert spans[0]["enrichment"] is None and "invalid_json" in spans[0]["error"]
    assert len(chats(ollama)) == 3
    assert "1 failed" in capsys.readouterr().err


@pytest.mark.parametrize("fault, reason", [("empty", "empty_response"), ("length", "length"),
                                           ("empty_object", "empty_response")])
def test_empty_or_cut_answer_is_retried_and_then_succeeds(tmp_path, repo, ollama, fault, reason, monkeypatch):
    """An empty or cut answer is not stored; the retry succeeds and only the good answer is kept."""
    from llmc_rag_service.store import jobs as q

    monkeypatch.setattr(q.backoff_s, "__defaults__", (0.01, 0.05))
    write_tree(repo, {"one.py": "def one():\n    return 1\n"})
    for name in list(SOURCE):
        (repo / name).unlink()
    ollama.inject(fault)
    config = make_config(tmp_path, ollama.url, [repo])
    assert run(config, "enrich") == 0
    (span,) = show_report(config, str(repo / "one.py"))
    assert span["state"] == "enriched" and span["enrichment"]["summary"]
    assert len(chats(ollama)) == 2


def test_missing_model_exits_69_and_keeps_attempts(tmp_path, repo, ollama, capsys):
    """A model that is not installed: jobs wait without burning attempts; enrich gives up with 69 after --wait-s."""
    ollama.uninstall("test-model")
    config = make_config(tmp_path, ollama.url, [repo])
    assert run(config, "enrich", "--wait-s", "0.2") == 69
    report = status_report(config)
    assert report["totals"]["pending"] == report["totals"]["spans"] > 0
    import sqlite3

    with sqlite3.connect(config.db_path) as db:
        assert db.execute("SELECT MAX(attempts) FROM jobs").fetchone()[0] == 0
    err = capsys.readouterr().err
    assert "ollama pull test-model" in err and "model_missing" in err
    assert "llmc-rag: gave up after 0 s (--wait-s) waiting for Ollama: " in err
    assert f"the pending work is kept: run ollama pull test-model (on {ollama.url}), then run llmc-rag enrich again" in err


def test_model_appearing_later_resumes_work(tmp_path, repo, ollama):
    """Once the missing model is pulled, waiting jobs run by themselves."""
    ollama.uninstall("test-model")
    config = make_config(tmp_path, ollama.url, [repo])
    import threading

    from llmc_rag_service.enrich import workers

    def pull_once_missing() -> None:  # the model appears after a chat was refused for want of it
        wait_for(lambda: any(r.path == "/api/chat" and r.status == 404 for r in ollama.requests), 20, "a 404")
        ollama.install("test-model")

    puller = threading.Thread(target=pull_once_missing, name="test-pull")
    puller.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(workers, "PROBE_BASE_S", 0.05)
            mp.setattr(workers, "PROBE_MAX_S", 0.1)
            assert run(config, "enrich", "--wait-s", "30") == 0
    finally:
        puller.join(30)
    assert status_report(config)["totals"]["pending"] == 0


def test_unreachable_ollama_exits_69(tmp_path, repo, capsys):
    """With nothing listening at the URL, enrich exits 69 after --wait-s, keeps the work pending, and
    says to start Ollama at that URL and run enrich again."""
    with OllamaEmulator() as emu:
        url = emu.url
    config = make_config(tmp_path, url, [repo])
    assert run(config, "enrich", "--wait-s", "0.2") == 69
    assert status_report(config)["totals"]["pending"] > 0
    assert f"the pending work is kept: start Ollama at {url} (ollama serve" in capsys.readouterr().err


def test_bad_config_exits_78_without_touching_the_store(tmp_path, capsys):
    """A config with an unknown key exits 78 naming the key, and creates no state."""
    path = tmp_path / "bad.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nollama:\n  modle: x\n")
    for command in ("enrich", "serve"):
        assert cli.main([command, "-c", str(path)]) == 78
        assert "ollama.modle" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_awkward_files_follow_the_cases(tmp_path, ollama, capsys):
    """The shared cases: BOM+CRLF, mixed EOL, latin-1 cookie, syntax error, binary; skips are logged once each."""
    root = tmp_path / "repo"
    root.mkdir()
    for f in CASES.iterdir():
        shutil.copy(f, root / f.name)
    (root / "huge.py").write_text("x = 1\n" * 1000)
    config = make_config(tmp_path, ollama.url, [root], watch={"max_file_bytes": 4000})
    assert run(config, "enrich") == 0
    names = lambda p: [s["name"] for s in show_report(config, str(root / p)) if s["kind"] == "function"]
    assert names("bom_crlf.py") == ["alpha", "beta"]
    assert names("mixed_eol.py") == [f"f{i}" for i in range(5)] + [f"g{i}" for i in range(5)]
    assert names("latin1.py") == ["brew"]
    assert {"one", "two", "four", "five"} <= set(names("syntax_error.py"))
    assert show_report(config, str(root / "blob.bin")) == []
    for chat in chats(ollama):
        text = chat.json["messages"][-1]["content"]
        assert "\ufeff" not in text and "\r" not in text
    err = capsys.readouterr().err
    skipped = [json.loads(line) for line in err.splitlines() if '"file_skipped"' in line]
    assert sorted((s["path"], s["reason"]) for s in skipped) == [("blob.bin", "binary"), ("huge.py", "too_large")]


def test_deleted_file_drops_spans_and_pending_jobs(tmp_path, repo, ollama):
    """Deleting a file before its jobs run removes its spans and cancels its jobs: nothing is sent for it."""
    config = make_config(tmp_path, ollama.url, [repo])
    ollama.uninstall("test-model")
    assert run(config, "enrich", "--wait-s", "0") == 69
    (repo / "src" / "a.py").unlink()
    ollama.install("test-model")
    assert run(config, "enrich") == 0
    sent = " ".join(r.json["messages"][-1]["content"] for r in chats(ollama))
    assert "src/a.py" not in sent
    assert show_report(config, str(repo / "src" / "a.py")) is None


def test_moved_file_keeps_its_enrichments(tmp_path, repo, ollama):
    """A renamed file costs no request: enrichments are keyed by content."""
    config = make_config(tmp_path, ollama.url, [repo])
    assert run(config, "enrich") == 0
    before = len(chats(ollama))
    (repo / "src" / "a.py").rename(repo / "src" / "renamed.py")
    assert run(config, "enrich") == 0
    assert len(chats(ollama)) == before
    assert all(s["state"] == "enriched" for s in show_report(config, str(repo / "src" / "renamed.py")))


def test_secret_and_ignored_files_are_never_read(tmp_path, repo, ollama):
    """.env, keys and .gitignored files are not indexed and never sent."""
    write_tree(repo, {".env": "TOKEN=hunter2\n", "id_rsa": "KEY\n", ".gitignore": "gen/\n",
                      "gen/out.py": "def gen():\n    pass\n", "node_modules/x/i.js": "function x(){}\n"})
    config = make_config(tmp_path, ollama.url, [repo])
    assert run(config, "enrich") == 0
    sent = " ".join(r.json["messages"][-1]["content"] for r in chats(ollama))
    assert "hunter2" not in sent and "gen/out.py" not in sent and "node_modules" not in sent


def test_status_before_any_store_exists_is_all_zero(tmp_path, repo, capsys):
    """status works before the daemon ever ran, and creates nothing."""
    config = make_config(tmp_path, "http://127.0.0.1:9", [repo])
    assert run(config, "status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["daemon"] == {"running": False, "pid": None, "status": None}
    assert report["totals"] == {"files": 0, "spans": 0, "enriched": 0, "pending": 0, "failed": 0, "embedded": 0,
                                "embed_failed": 0}
    assert not config.db_path.exists()


def test_show_by_line_and_unknown_path(tmp_path, repo, ollama, capsys, monkeypatch):
    """show PATH:LINE gives the span holding the line (relative to the cwd); an unknown path exits 1."""
    config = make_config(tmp_path, ollama.url, [repo])
    assert run(config, "enrich") == 0
    capsys.readouterr()
    monkeypatch.chdir(repo / "src")
    assert run(config, "show", "--json", "a.py:9") == 0
    spans = json.loads(capsys.readouterr().out)
    assert [(s["kind"], s["name"], s["start_line"], s["end_line"]) for s in spans] == [
        ("class", "A", 8, 10), ("method", "A.m", 9, 10)]
    assert set(spans[1]["enrichment"]) == {"summary", "inputs", "outputs", "side_effects", "pitfalls", "usage",
                                           "model", "created_at"}
    assert run(config, "show", "nope.py") == 1


def test_plain_show_prints_each_path_as_search_does(tmp_path, repo, ollama, capsys, monkeypatch):
    """Plain show prints a span's file relative to the cwd when under it, else absolute (pasteable, as
    search prints its hits); --json keeps the repo-relative path."""
    config = make_config(tmp_path, ollama.url, [repo], logging={"level": "error"})
    assert run(config, "enrich") == 0
    for cwd, shown in ((repo / "src", "a.py"), (tmp_path, "repo/src/a.py"), (repo / "lib", str(repo / "src" / "a.py"))):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        assert run(config, "show", str(repo / "src" / "a.py") + ":9") == 0
        show_lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
        assert show_lines == [f"{shown}:8-10 class A [enriched]", f"{shown}:9-10 method A.m [enriched]"]
        assert run(config, "search", "--mode", "lexical", "--path", "src/a.py", "A.m") == 0
        assert f"\n{shown}:9-10  method A.m" in "\n" + capsys.readouterr().out
    assert run(config, "show", "--json", "../src/a.py:9") == 0
    assert {s["path"] for s in json.loads(capsys.readouterr().out)} == {"src/a.py"}


def test_show_says_when_a_file_changed_since_it_was_indexed(tmp_path, repo, ollama, capsys):
    """A line added at the top after indexing: show's spans say fresh false (--json), and plain show warns
    once that the line numbers may be off, as search marks such hits."""
    config = make_config(tmp_path, ollama.url, [repo])
    assert run(config, "enrich") == 0
    capsys.readouterr()
    assert run(config, "show", "--json", str(repo / "src" / "a.py")) == 0
    assert {s["fresh"] for s in json.loads(capsys.readouterr().out)} == {True}
    path = repo / "src" / "a.py"
    path.write_text("# a new first line\n" + path.read_text())
    assert run(config, "show", "--json", str(path)) == 0
    assert {s["fresh"] for s in json.loads(capsys.readouterr().out)} == {False}
    assert run(config, "show", str(path)) == 0
    err = capsys.readouterr().err
    assert err == (f"llmc-rag: {path} changed since it was indexed: the line numbers below may be off until it is "
                   "indexed again (a running serve does it within seconds; else run llmc-rag enrich)\n")
    path.unlink()  # deleted since: nothing to show, as search hides it
    assert run(config, "show", str(path)) == 1
    assert capsys.readouterr().err == f"llmc-rag: {path}: no such file\n"


def test_a_server_that_stays_busy_ends_enrich_with_69(tmp_path, repo, ollama, monkeypatch):
    """503 on every request: jobs keep their attempts, and enrich gives up with 69 after --wait-s (every wait has a deadline)."""
    from llmc_rag_service.enrich import workers

    monkeypatch.setattr(workers, "BUSY_MAX_S", 0.2)
    monkeypatch.setattr(workers, "BUSY_BASE_S", 0.05)
    ollama.inject("busy_503", count=100000)
    config = make_config(tmp_path, ollama.url, [repo])
    assert run(config, "enrich", "--wait-s", "0.2") == 69
    import sqlite3

    with sqlite3.connect(config.db_path) as db:
        assert db.execute("SELECT MAX(attempts) FROM jobs").fetchone()[0] == 0
    assert status_report(config)["totals"]["pending"] == status_report(config)["totals"]["spans"]


def test_retry_failed_gives_dead_letters_a_fresh_start(tmp_path, repo, ollama, monkeypatch):
    """After a span failed for good, `enrich --retry-failed` sends it again and stores the answer."""
    from llmc_rag_service.store import jobs as q

    monkeypatch.setattr(q.backoff_s, "__defaults__", (0.01, 0.05))
    write_tree(repo, {"only.py": "def z():\n    return 0\n"})
    for name in list(SOURCE):
        (repo / name).unlink()
    ollama.inject("invalid_json", count=2)
    config = make_config(tmp_path, ollama.url, [repo], queue={"max_attempts": 2})
    assert run(config, "enrich") == 1
    assert run(config, "enrich") == 1  # still failed: a plain re-run does not retry
    assert run(config, "enrich", "--retry-failed") == 0
    assert [s["state"] for s in show_report(config, str(repo / "only.py"))] == ["enriched"]


def test_changing_the_model_enriches_unchanged_spans_for_the_new_model(tmp_path, repo, ollama):
    """After ollama.model changes, every span of an unchanged repo is enriched again for the new model (not left pending with exit 0)."""
    ollama.install("other-model")
    config = make_config(tmp_path, ollama.url, [repo])
    assert run(config, "enrich") == 0
    first = len(chats(ollama))
    config = make_config(tmp_path, ollama.url, [repo], ollama={"model": "other-model"})
    assert run(config, "enrich") == 0
    totals = status_report(config)["totals"]
    assert totals["enriched"] == totals["spans"] and totals["pending"] == 0
    assert len(chats(ollama)) == 2 * first
    assert {r.json["model"] for r in chats(ollama)[first:]} == {"other-model"}


def test_enrich_of_a_directory_holding_a_configured_repo_stores_its_files_once(tmp_path, ollama):
    """`enrich PARENT` of a directory the config does not name, holding a configured repo (and the
    store): PARENT indexes its own files only; the configured repo's stay its own, counted once."""
    parent = tmp_path / "parent"
    write_tree(parent, {"p.py": "def p(x):\n    return 2\n", "child/c.py": "def c(x):\n    return 1\n"})
    config = make_config(tmp_path, ollama.url, [parent / "child"], state_dir=str(parent / "state"))
    assert cli.main(["enrich", "-c", str(config.source)]) == 0
    assert cli.main(["enrich", "-c", str(config.source), str(parent)]) == 0
    report = status_report(config)
    assert [(r["path"], r["files"]) for r in report["repos"]] == [(str(parent / "child"), 1), (str(parent), 1)]
    assert report["totals"]["files"] == 2
