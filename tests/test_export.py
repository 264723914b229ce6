"""``llmc-rag export``: JSON Lines per the contract, --repo filter, constant memory."""

from __future__ import annotations

import io
import json
import tracemalloc

import pytest

from llmc_rag_service import cli
from llmc_rag_service.search import export_jsonl
from tests.helpers import make_config
from tests.searchkit import MODEL, SearchRepo, enrichment

KEYS = ["schema", "repo", "path", "start_line", "end_line", "kind", "name", "language", "span_hash", "fresh",
        "deleted", "text", "enrichment"]
ENRICHMENT_KEYS = ["summary", "inputs", "outputs", "side_effects", "pitfalls", "usage", "model", "created_at"]


@pytest.fixture
def repos(tmp_path):
    one = SearchRepo(tmp_path, {"a.py": "def f():\n    return 1\n\n\ndef g():\n    return 2\n"}, "one")
    two = SearchRepo(tmp_path, {"b.js": "function h() {\n  return 3;\n}\n"}, "two")
    one.enrich(lambda name: enrichment(f"{name} returns a number.") if name == "f" else None)
    yield one, two
    one.close()
    two.close()


@pytest.fixture
def config(tmp_path, repos):
    return make_config(tmp_path, "http://127.0.0.1:9", [r.root for r in repos])


def lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_export_writes_one_contract_object_per_span(config, repos, capsys):
    """Every span of every repo, one object per line, schema 1, enrichment as in show or null."""
    assert cli.main(["export", "-c", str(config.source)]) == 0
    rows = lines(capsys)
    assert [(r["path"], r["name"]) for r in rows] == [("a.py", "f"), ("a.py", "g"), ("b.js", "h")]
    assert all(list(r) == KEYS and r["schema"] == 1 for r in rows)
    assert all(r["fresh"] is True and r["deleted"] is False for r in rows)
    f, g, h = rows
    assert f["repo"] == str(repos[0].root) and f["text"] == "def f():\n    return 1" and f["language"] == "python"
    assert list(f["enrichment"]) == ENRICHMENT_KEYS and f["enrichment"]["summary"] == "f returns a number."
    assert f["enrichment"]["model"] == MODEL and f["enrichment"]["inputs"] == []
    assert g["enrichment"] is None and h["enrichment"] is None and (h["start_line"], h["end_line"]) == (1, 3)


def test_export_repo_filter(config, repos, capsys):
    """--repo limits the export to one configured repository."""
    assert cli.main(["export", "-c", str(config.source), "--repo", str(repos[1].root)]) == 0
    assert [r["name"] for r in lines(capsys)] == ["h"]


def test_export_unknown_repo_is_a_usage_error(config, capsys):
    assert cli.main(["export", "-c", str(config.source), "--repo", "/elsewhere"]) == 2
    assert "not a configured or indexed repository" in capsys.readouterr().err


def test_export_flags_spans_of_a_deleted_file_and_counts_them(config, repos, capsys):
    """Spans of a file deleted since it was indexed are exported with fresh false and
    deleted true, and one warning line on stderr counts them; the exit is still 0."""
    repos[0].delete("a.py", rescan=False)
    assert cli.main(["export", "-c", str(config.source)]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["path"], r["fresh"], r["deleted"]) for r in rows] == [
        ("a.py", False, True), ("a.py", False, True), ("b.js", True, False)]
    assert err.count("\n") == 1 and err.startswith("llmc-rag: export: warning: 2 of 3 records are of 1 file deleted")


def test_a_missing_repo_directory_is_named_with_advice_a_scan_cannot_follow(config, repos, capsys):
    """A repo whose whole directory is gone (unmounted, moved): its records are deleted ones, and
    the warning names the repo and says its records stay (serve keeps a missing repo's index)
    instead of promising that a scan brings the store up to date."""
    moved = repos[0].root.with_name("moved-away")
    repos[0].root.rename(moved)
    try:
        assert cli.main(["export", "-c", str(config.source)]) == 0
        err = capsys.readouterr().err
    finally:
        moved.rename(repos[0].root)
    assert err.count("\n") == 1 and "2 of 3 records are of 1 file deleted" in err
    assert f"repo directory missing: {repos[0].root} (its records stay until it is back" in err
    assert "brings the store up to date" not in err


def test_export_fresh_means_what_show_says(config, repos, capsys):
    """A file changed on disk since it was indexed: export and show --json both say fresh false."""
    path = repos[1].root / "b.js"
    path.write_text("function h() {\n  return 33;\n}\n")
    assert cli.main(["show", "--json", "-c", str(config.source), str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert cli.main(["export", "-c", str(config.source)]) == 0
    out, err = capsys.readouterr()
    exported = [json.loads(line) for line in out.splitlines() if json.loads(line)["path"] == "b.js"]
    assert [s["fresh"] for s in shown] == [r["fresh"] for r in exported] == [False]
    assert exported[0]["deleted"] is False
    assert "1 of 3 records are of files changed since indexed" in err and err.count("\n") == 1


def test_export_streams_in_constant_memory(tmp_path):
    """Exporting 4x more spans does not raise the Python heap peak: rows stream from the cursor."""
    peaks = []
    for count in (300, 1200):
        body = "".join(f"def function_{i}(x):\n    return x + {i}  # {'pad ' * 20}\n\n\n" for i in range(count))
        sr = SearchRepo(tmp_path / str(count), {"big.py": body})
        conn = sr.reader()
        out = _CountingSink()
        tracemalloc.start()
        assert export_jsonl(conn, out, MODEL).lines == count
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert out.chars > count * 100
        sr.close()
    assert peaks[1] < peaks[0] * 1.5 + 64_000


class _CountingSink(io.TextIOBase):
    """A writable text stream that keeps nothing but a count."""

    chars = 0

    def write(self, text: str) -> int:
        self.chars += len(text)
        return len(text)


def test_a_file_replaced_by_a_symlink_to_itself_is_not_fresh(config, repos, capsys):
    """`mv a.py moved.py; ln -s moved.py a.py`: the scanner never follows the symlink (the next
    scan drops a.py), so export flags a.py's spans deleted, search hides them and show has
    none, though the symlink's target has a.py's very size and mtime."""
    root = repos[0].root
    (root / "a.py").rename(root / "moved.py")
    (root / "a.py").symlink_to("moved.py")
    assert cli.main(["export", "-c", str(config.source)]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["path"], r["fresh"], r["deleted"]) for r in rows] == [
        ("a.py", False, True), ("a.py", False, True), ("b.js", True, False)]
    assert err.startswith("llmc-rag: export: warning: 2 of 3 records are of 1 file deleted")
    assert cli.main(["search", "--json", "-c", str(config.source), "returns a number"]) == 0
    assert [h["path"] for h in json.loads(capsys.readouterr().out)["hits"]] == []
    assert cli.main(["show", "-c", str(config.source), str(root / "a.py")]) == 1
    assert "symlink" in capsys.readouterr().err
