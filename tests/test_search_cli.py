"""``llmc-rag search`` on the command line: output shapes, exit codes, read-only access while serve writes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from llmc_rag_service import cli
from llmc_rag_service.store import db as store_mod
from llmc_rag_service.store.db import Store
from llmc_rag_service.models import Span
from tests.helpers import make_config
from tests.searchkit import SearchRepo, enrichment

CODE = {
    "pkg/io.py": "def read_config_file(path):\n    return open(path).read()\n\n\n"
                 "class Cache:\n    def evict(self, key):\n        del self.data[key]\n",
}
HIT_KEYS = ["repo", "path", "start_line", "end_line", "kind", "name", "language", "span_hash", "state", "fresh",
            "score", "lexical_rank", "semantic_rank", "summary", "pitfalls"]


@pytest.fixture
def sr(tmp_path):
    made = SearchRepo(tmp_path, CODE)
    made.enrich(lambda name: enrichment(f"{name} does its job.", ("mind the gap",)))
    yield made
    made.close()


@pytest.fixture
def config(tmp_path, sr):
    return make_config(tmp_path, "http://127.0.0.1:9", [sr.root], search={"embed_model": "nomic-embed-text"})


def run(config, *args) -> int:
    return cli.main(["search", "-c", str(config.source), *args])


def run_exit(config, capsys, *args: str) -> tuple[int, str]:
    """``search`` in this process: its exit status (also an argparse usage error's ``SystemExit``) and stderr.
    Only an exit status can leave: any other exception fails the test, as a traceback would."""
    capsys.readouterr()
    try:
        code = cli.main(["search", "-c", str(config.source), *args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def run_process(config, *args: str | bytes) -> subprocess.CompletedProcess:
    """``python -m llmc_rag_service search``: for what only a real process shows (the entry point, argv bytes)."""
    argv = [sys.executable, "-m", "llmc_rag_service", "search", "-c", str(config.source), *args]
    return subprocess.run(argv, capture_output=True, timeout=60)


def test_json_output_has_the_contract_shape(config, capsys):
    """search --json prints {query, mode, degraded, hits} with every contract field of a hit."""
    assert run(config, "--json", "read", "config") == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["query", "mode", "degraded", "hits"]
    assert out["query"] == "read config" and out["mode"] == "lexical"  # no embeddings computed
    hit = out["hits"][0]
    assert list(hit) == HIT_KEYS
    assert (hit["path"], hit["name"], hit["start_line"], hit["end_line"]) == ("pkg/io.py", "read_config_file", 1, 2)
    assert hit["state"] == "enriched" and hit["fresh"] is True and hit["pitfalls"] == ["mind the gap"]


def test_no_embeddings_yet_answers_lexically_and_says_so(config, capsys):
    """With the default embedding model but no vectors computed, the answer is lexical and degraded says why."""
    assert run(config, "--json", "evict") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "lexical" and out["degraded"] == "no embeddings of nomic-embed-text are computed yet"
    assert out["hits"][0]["name"] == "Cache.evict"


def test_embeddings_off_answers_lexically_and_says_so(tmp_path, sr, capsys):
    """search.embed_model: null turns semantic ranking off, said in degraded."""
    config = make_config(tmp_path, "http://127.0.0.1:9", [sr.root], search={"embed_model": None})
    assert run(config, "--json", "evict") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "lexical" and "search.embed_model is null" in out["degraded"]


def test_human_output_one_block_per_hit(config, sr, capsys, monkeypatch):
    """Human output: 'path:start-end  kind name', the summary and the pitfalls, no colour when piped."""
    monkeypatch.chdir(sr.root)
    assert run(config, "evict") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == ["pkg/io.py:6-7  method Cache.evict", "    Cache.evict does its job.",
                                    "    pitfalls: mind the gap"]
    assert "\033[" not in out


def test_no_hits_is_success(config, capsys):
    """A query that matches nothing exits 0 and says so on stderr."""
    assert run(config, "--mode", "lexical", "nonexistentword") == 0
    assert "no matches" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--limit", "0", "x"], "--limit: must be a whole number from 1 to 100"),
    (["--limit", "-1", "x"], "from 1 to 100"),
    (["--limit", "1000", "x"], "from 1 to 100"),
    (["--limit", "ten", "x"], "from 1 to 100"),
    (["--lang", "pyhton", "x"], "unknown language 'pyhton'"),
    (["--kind", "func", "x"], "unknown kind 'func'"),
    (["--mode", "fuzzy", "x"], "unknown mode 'fuzzy'"),
    (["--repo", "/not/a/repo", "x"], "not a configured or indexed repository"),
    ([""], "the query is empty"),
    (["?!"], "no letters or digits"),
])
def test_usage_errors_exit_2_with_a_clear_line(config, capsys, args, message):
    """Bad options and empty queries exit 2 with one line naming the problem, never a traceback."""
    code, err = run_exit(config, capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("args", [["-x"], ["parse", "-x"]])
def test_a_query_starting_with_a_dash_says_to_put_it_after_double_dash(config, capsys, args):
    """``search -x`` is read as an unknown option: exit 2, and the line says ``search -- -x`` works."""
    code, err = run_exit(config, capsys, *args)
    assert code == 2 and "Traceback" not in err
    assert "unrecognized arguments: " in err and "goes after --, as in: llmc-rag search -- -x" in err


def test_a_query_after_double_dash_may_start_with_a_dash(config, capsys):
    """``search -- -area`` searches for "-area": after ``--`` nothing is read as an option."""
    assert run(config, "--json", "--mode", "lexical", "--", "-area") == 0
    assert json.loads(capsys.readouterr().out)["query"] == "-area"


def test_a_missing_query_is_a_usage_error(config):
    """``search`` with no query exits 2 saying QUERY is required (through the real entry point)."""
    proc = run_process(config)
    assert proc.returncode == 2 and "the following arguments are required: QUERY" in proc.stderr.decode()


def test_non_utf8_argument_is_refused_clearly(config):
    """A query argument that is not UTF-8 exits 2 saying so."""
    proc = run_process(config, b"caf\xe9")
    assert proc.returncode == 2 and b"not valid UTF-8" in proc.stderr and b"Traceback" not in proc.stderr


def test_corrupt_store_exits_74(config, capsys):
    """A state file that is not a database: exit 74 with the path, no traceback."""
    config.db_path.write_bytes(b"this is not sqlite" * 100)
    for name in ("llmc-rag.db-wal", "llmc-rag.db-shm"):
        (config.db_path.parent / name).unlink(missing_ok=True)
    code, err = run_exit(config, capsys, "x")
    assert code == 74 and str(config.db_path) in err and "Traceback" not in err


def test_store_from_a_newer_version_exits_74(config, sr, capsys):
    """A store whose schema is newer than this program: exit 74, saying so."""
    sr.store.conn.execute("PRAGMA user_version = 99")
    code, err = run_exit(config, capsys, "x")
    assert code == 74 and "newer than this llmc-rag" in err


def test_bad_config_exits_78(tmp_path):
    """A config with an unknown key: exit 78."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"repos: [{{path: {tmp_path}}}]\nbogus_key: 1\n")
    assert cli.main(["search", "-c", str(bad), "x"]) == 78


def test_no_store_yet_is_an_empty_answer(tmp_path, capsys):
    """Before anything was indexed: exit 0, no hits, a note saying why."""
    (tmp_path / "empty").mkdir()
    config = make_config(tmp_path, "http://127.0.0.1:9", [tmp_path / "empty"])
    assert cli.main(["search", "-c", str(config.source), "--json", "x"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["hits"] == [] and "nothing is indexed yet" in captured.err
    assert cli.main(["search", "-c", str(config.source), "x"]) == 0
    captured = capsys.readouterr()  # the note once, and no "no matches" after it
    assert captured.out == "" and captured.err.count("\n") == 1 and "nothing is indexed yet" in captured.err
    assert cli.main(["export", "-c", str(config.source)]) == 0
    assert "nothing is indexed yet" in capsys.readouterr().err


@pytest.mark.parametrize("lock", ["IMMEDIATE", "EXCLUSIVE"])
def test_search_works_while_another_connection_holds_a_write_transaction(config, sr, capsys, lock):
    """A writer mid-transaction (as serve is) neither blocks nor fails a search; its uncommitted rows are unseen."""
    writer = sqlite3.connect(config.db_path, isolation_level=None)
    writer.execute(f"BEGIN {lock}")
    writer.execute("DELETE FROM spans")
    try:
        assert run(config, "--json", "evict") == 0
        assert [h["name"] for h in json.loads(capsys.readouterr().out)["hits"]][0] == "Cache.evict"
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_older_store_is_migrated_by_search(tmp_path, monkeypatch, capsys):
    """A store written before search existed is migrated and its spans are searchable."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "m.py").write_text("def legacy_function():\n    pass\n")
    config = make_config(tmp_path, "http://127.0.0.1:9", [repo])
    with monkeypatch.context() as mp:
        mp.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:1])
        old = Store(config.db_path)
        repo_id = old.repo_id(str(repo))
        st = (repo / "m.py").stat()
        span = Span("function", "legacy_function", 1, 2, "def legacy_function():\n    pass", "python")
        with old.write() as tx:  # the rows as that version wrote them (today's put_file knows newer columns)
            tx.execute("INSERT INTO files(repo_id, path, size, mtime_ns, content_hash, language, updated_at) "
                       "VALUES (?, 'm.py', ?, ?, 'h', 'python', 0)", (repo_id, st.st_size, st.st_mtime_ns))
            tx.execute("INSERT INTO spans(file_id, kind, name, start_line, end_line, span_hash) "
                       "SELECT id, 'function', 'legacy_function', 1, 2, ? FROM files", (span.span_hash,))
            tx.execute("INSERT INTO span_texts(span_hash, language, text) VALUES (?, 'python', ?)",
                       (span.span_hash, span.text))
        old.close()
    assert cli.main(["search", "-c", str(config.source), "--json", "legacy"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)["hits"]
    assert hit["name"] == "legacy_function" and hit["fresh"] is True


def test_enrich_then_search_end_to_end(tmp_path, ollama, capsys):
    """Against the emulator: enrich a real repo, then search finds the span with its enrichment."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "tokens.py").write_text("def tokenize_expression(text):\n    return text.split()\n")
    config = make_config(tmp_path, ollama.url, [repo])
    assert cli.main(["enrich", "-c", str(config.source)]) == 0
    capsys.readouterr()
    assert cli.main(["search", "-c", str(config.source), "--json", "tokenize"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)["hits"]
    assert hit["name"] == "tokenize_expression" and hit["state"] == "enriched" and hit["summary"]


class _Tty:
    """A text sink that says it is a terminal."""

    def __init__(self):
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def isatty(self) -> bool:
        return True


def test_colour_on_a_terminal_unless_no_color(sr, monkeypatch):
    """On a TTY the location, name and flags are coloured; NO_COLOR turns that off; a stale hit is flagged."""
    from llmc_rag_service.search import cli_view

    (sr.root / "pkg/io.py").write_text((sr.root / "pkg/io.py").read_text() + "\n")
    result = sr.search("evict", mode="lexical")
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty, err = _Tty(), _Tty()
    cli_view.print_result(result, tty, err, as_json=False)
    assert "\033[36m" in tty.text and "[changed since indexed]" in tty.text
    monkeypatch.setenv("NO_COLOR", "1")
    plain = _Tty()
    cli_view.print_result(result, plain, err, as_json=False)
    assert "\033[" not in plain.text and "[changed since indexed]" in plain.text
