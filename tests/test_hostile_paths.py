"""Paths and outputs no file can have or take: symlinks, loops, FIFOs, names too long, a full stdout.

Each is one line on stderr with the documented exit code, never a traceback, and never blamed on
the store (a store fault is exit 74 "state unusable"; a name is not one).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmc_rag_service import cli
from tests.helpers import make_config, write_tree


@pytest.fixture
def enriched(tmp_path, ollama):
    """A repo enriched once, holding a symlink, a symlink loop, a dangling symlink and a FIFO."""
    repo = tmp_path / "repo"
    write_tree(repo, {"a.py": "def f(x):\n    return x\n"})
    (repo / "alias.py").symlink_to("a.py")
    (repo / "loop1").symlink_to("loop2")
    (repo / "loop2").symlink_to("loop1")
    (repo / "dangling.py").symlink_to("/nonexistent-llmc-target")
    os.mkfifo(repo / "pipe.py")
    config = make_config(tmp_path, ollama.url, [repo], logging={"level": "error"})
    assert cli.main(["enrich", "-c", str(config.source)]) == 0
    return config, repo


@pytest.mark.parametrize(("target", "said"), [
    ("alias.py", "alias.py: a symlink (to a.py); symlinks are never followed: show the file itself"),
    ("dangling.py", "dangling.py: a symlink (to /nonexistent-llmc-target); symlinks are never followed"),
    ("loop1", "loop1: a symlink (to loop2); symlinks are never followed"),
    ("loop1/x.py", "loop1/x.py: no such file"),
    ("pipe.py", "pipe.py: not a regular file (a FIFO, socket or device); only regular files are indexed"),
    ("x" * 300 + ".py", "x" * 300 + ".py: no such file"),
])
def test_show_of_a_name_no_span_can_have_says_why_in_one_line(enriched, capsys, target, said):
    """A symlink (even a loop or dangling), a FIFO, a name over NAME_MAX: exit 1 and one line naming
    the path, not a RuntimeError traceback, 'not in a configured repo' or 'state unusable' (74)."""
    config, repo = enriched
    capsys.readouterr()
    assert cli.main(["show", "-c", str(config.source), str(repo / target)]) == 1
    assert capsys.readouterr().err.startswith(f"llmc-rag: {repo}/{said}")


def test_show_of_an_unknown_user_home_is_not_in_a_repo(enriched, capsys):
    """`show ~nosuchuser/x.py` is a path in no repo (pathlib's expanduser raises RuntimeError)."""
    config, _ = enriched
    capsys.readouterr()
    assert cli.main(["show", "-c", str(config.source), "~nosuchuser-llmc/x.py"]) == 1
    assert capsys.readouterr().err.startswith("llmc-rag: ~nosuchuser-llmc/x.py: not in a configured repo")


def test_search_repo_and_enrich_of_impossible_names_say_so(enriched, capsys):
    """`search --repo ~nosuchuser` is a bad option (2); `enrich` of a name too long is a missing repo (66)."""
    config, repo = enriched
    capsys.readouterr()
    assert cli.main(["search", "-c", str(config.source), "--repo", "~nosuchuser-llmc", "f"]) == 2
    assert "--repo '~nosuchuser-llmc': no directory can have this name" in capsys.readouterr().err
    assert cli.main(["enrich", "-c", str(config.source), str(repo / ("x" * 300))]) == 66
    assert f"repo {repo / ('x' * 300)}: no such directory" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["export"], ["status", "--json"], ["search", "--json", "f"], ["show", "a.py"]])
def test_a_stdout_that_cannot_be_written_is_named_not_the_store(enriched, args):
    """`> /dev/full` (a full disk under the output file): exit 74 with one line naming stdout; the
    store, which is fine, is not called unusable, and nothing is printed at exit."""
    config, repo = enriched
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "llmc_rag_service", args[0], "-c", str(config.source), *args[1:]],
                              stdout=full, stderr=subprocess.PIPE, text=True, cwd=repo, timeout=60)
    assert proc.returncode == 74
    assert proc.stderr == f"llmc-rag: {args[0]}: cannot write the output to stdout: No space left on device\n"


def test_a_file_name_with_control_characters_prints_escaped(tmp_path, ollama, capsys):
    """A name holding ESC (a terminal sequence) or a newline is printed escaped by search, show
    and show's reasons: one name, one line, and nothing sent to the terminal but text."""
    repo = tmp_path / "repo"
    write_tree(repo, {"evil\x1b[2Jx.py": "def wiped_screen():\n    return 1\n",
                      "two\nlines.py": "def split_name():\n    return 2\n"})
    config = make_config(tmp_path, ollama.url, [repo], logging={"level": "error"})
    assert cli.main(["enrich", "-c", str(config.source)]) == 0
    capsys.readouterr()
    assert cli.main(["search", "-c", str(config.source), "--mode", "lexical", "wiped_screen"]) == 0
    assert cli.main(["search", "-c", str(config.source), "--mode", "lexical", "split_name"]) == 0
    assert cli.main(["show", "-c", str(config.source), str(repo / "evil\x1b[2Jx.py")]) == 0
    assert cli.main(["show", "-c", str(config.source), str(repo / "two\nlines.py:9")]) == 1
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err
    assert f"{repo}/evil\\x1b[2Jx.py:1-2  function wiped_screen" in out and "evil\\x1b[2Jx.py:1-2 function" in out
    assert f"{repo}/two\\nlines.py:1-2  function split_name" in out
    assert err == f"llmc-rag: {repo}/two\\nlines.py:9: no span covers line 9: the file's spans end at line 2\n"


def test_show_and_search_from_a_deleted_working_directory_print_absolute_paths(enriched, tmp_path, monkeypatch,
                                                                              capsys):
    """A shell still in a directory removed since (`rm -rf` of a build dir): show of an absolute path
    shows it (was 'not in a configured repo', exit 1) and search prints hits absolute (was 'state
    unusable ... No such file or directory', exit 74, blaming the store)."""
    config, repo = enriched
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    capsys.readouterr()
    assert cli.main(["show", "-c", str(config.source), str(repo / "a.py")]) == 0
    assert capsys.readouterr().out.startswith(f"{repo}/a.py:1-2 function f")
    assert cli.main(["search", "-c", str(config.source), "f"]) == 0
    assert capsys.readouterr().out.startswith(f"{repo}/a.py:1-2")


def test_a_file_is_shown_absolute_from_the_root_directory(enriched, monkeypatch, capsys):
    """From / every path is "under" the working directory; `tmp/.../a.py` reads as a typo: absolute."""
    config, repo = enriched
    monkeypatch.chdir("/")
    capsys.readouterr()
    assert cli.main(["show", "-c", str(config.source), str(repo / "a.py")]) == 0
    assert capsys.readouterr().out.startswith(f"{repo}/a.py:1-2 function f")
