"""Tests for llmc_rag_service.index.ignore on real temp trees."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from llmc_rag_service.index import ignore as ignore_mod
from llmc_rag_service.index.ignore import RepoIgnore, is_editor_temp, is_secret

CASES = Path(__file__).resolve().parent / "data" / "editor_saves.json"


def make_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def walked(ig: RepoIgnore, under: str = "") -> list[str]:
    return [rel for rel, _ in ig.walk(under)]


def editor_case_names() -> tuple[list[str], list[str]]:
    """(temp names the editor cases must not index, real target names) from editor_saves.json."""
    temps, targets = set(), set()
    for case in json.loads(CASES.read_text())["cases"]:
        if not isinstance(case["ops"], list):
            continue  # branch-switch: a git scenario, not editor names
        jobs_for = set(case["expect"].get("jobs_for", {}))
        targets |= jobs_for | set(case["before"])
        temps |= {op[1] for op in case["ops"]} - jobs_for - set(case["before"])
        temps |= {op[2] for op in case["ops"] if op[0] == "rename"} - jobs_for
        temps |= set(case["expect"].get("no_spans_under", [])) - jobs_for - set(case["before"])
    return sorted(temps), sorted(targets)


TEMP_NAMES, TARGET_NAMES = editor_case_names()


def test_case_file_yields_names():
    """The editor cases provide both temp names and real targets to check."""
    assert "src/4913" in TEMP_NAMES and "pkg/x.py___jb_tmp___" in TEMP_NAMES
    assert "src/a.py" in TARGET_NAMES and "lib/u.js" in TARGET_NAMES


@pytest.mark.parametrize("name", TEMP_NAMES + [
    "src/5036", "a.py.swo", ".a.py.swx", ".a.py.swn", "src/.#d.py", ".~lock.report.odt#",
    "sedAb12Cd", "x.tmp", ".x.py.tmpa8_2k9", "movie.part", "big.crdownload", "~$doc.docx",
    ".goutputstream-ABC123", "notes.txt.kate-swp",
])
def test_editor_temp_names_are_ignored(tmp_path, name):
    """Every temp, swap, lock or backup name of an editor is an editor temp and ignored."""
    assert is_editor_temp(name)
    assert RepoIgnore(tmp_path).is_ignored(name)


@pytest.mark.parametrize("name", TARGET_NAMES + [
    "a.py", "x.py", "u.js", "4913.py", "sed.py", "sedimentary.py", "README", ".gitignore",
    "templates/.page.tmpl", "Makefile", "test_swp.py", "src/tmp.py",
])
def test_real_source_names_are_not_editor_temps(tmp_path, name):
    """Real source names are neither editor temps nor ignored."""
    assert not is_editor_temp(name)
    assert not RepoIgnore(tmp_path).is_ignored(name)


def test_nested_gitignore_negation_and_anchoring(tmp_path):
    """A subdir .gitignore applies to its subtree with its own anchoring and can negate parent rules."""
    make_tree(tmp_path, {
        ".gitignore": "*.log\n/only_root.txt\n",
        "sub/.gitignore": "!keep.log\n/anchored.txt\n",
        "a.log": "", "sub/keep.log": "", "sub/other.log": "", "only_root.txt": "",
        "sub/only_root.txt": "", "sub/anchored.txt": "", "sub/deep/anchored.txt": "",
        "sub/deep/keep.log": "",
    })
    ig = RepoIgnore(tmp_path)
    assert walked(ig) == [
        ".gitignore", "sub/.gitignore", "sub/deep/anchored.txt", "sub/deep/keep.log",
        "sub/keep.log", "sub/only_root.txt",
    ]


def test_directory_patterns_and_no_reinclusion_below_ignored_dir(tmp_path):
    """'logs/' ignores a directory but not a file so named; a file under an ignored dir stays ignored."""
    make_tree(tmp_path, {
        ".gitignore": "logs/\ngen/\n", "logs/a.py": "", "pkg/logs": "", "gen/.gitignore": "!x.py\n",
        "gen/x.py": "",
    })
    ig = RepoIgnore(tmp_path)
    assert ig.is_ignored("logs", is_dir=True)
    assert not ig.is_ignored("pkg/logs")
    assert ig.is_ignored("gen/x.py")
    assert walked(ig) == [".gitignore", "pkg/logs"]


def test_git_info_exclude_applies(tmp_path):
    """Patterns in .git/info/exclude ignore files like a root .gitignore."""
    make_tree(tmp_path, {".git/info/exclude": "scratch.py\n", "scratch.py": "", "main.py": ""})
    assert walked(RepoIgnore(tmp_path)) == ["main.py"]


def test_extra_excludes_apply_and_can_reinclude_a_default(tmp_path):
    """Configured excludes ignore their matches, and '!build/' re-includes a default-excluded dir."""
    make_tree(tmp_path, {"vendor/lib/v.py": "", "a.gen.py": "", "build/b.py": "", "main.py": ""})
    ig = RepoIgnore(tmp_path, ["vendor/**", "*.gen.py", "!build/"])
    assert walked(ig) == ["build/b.py", "main.py"]
    assert walked(RepoIgnore(tmp_path)) == ["a.gen.py", "main.py", "vendor/lib/v.py"]


def test_default_excludes_are_pruned_without_descending(tmp_path, monkeypatch):
    """Default-excluded directories are neither yielded nor even listed by the walk."""
    make_tree(tmp_path, {
        "node_modules/pkg/index.js": "", ".venv/lib/site.py": "", ".git/HEAD": "",
        "src/__pycache__/a.cpython-311.pyc": "", "pkg.egg-info/PKG-INFO": "", "src/a.py": "",
    })
    listed: list[str] = []
    real_scandir = os.scandir

    def spy(path):
        listed.append(os.path.relpath(path, tmp_path))
        return real_scandir(path)

    monkeypatch.setattr(ignore_mod.os, "scandir", spy)
    assert walked(RepoIgnore(tmp_path)) == ["src/a.py"]
    assert sorted(listed) == [".", "src"]


def test_symlinks_are_never_followed(tmp_path):
    """Neither a file symlink nor a directory symlink (inside or outside the repo) is walked."""
    outside = tmp_path / "outside"
    make_tree(outside, {"secret_code.py": "", "d/inner.py": ""})
    repo = tmp_path / "repo"
    make_tree(repo, {"real.py": "", "sub/x.py": ""})
    (repo / "file_link.py").symlink_to(outside / "secret_code.py")
    (repo / "dir_link").symlink_to(outside / "d", target_is_directory=True)
    (repo / "inner_link").symlink_to(repo / "sub", target_is_directory=True)
    assert walked(RepoIgnore(repo)) == ["real.py", "sub/x.py"]
    assert walked(RepoIgnore(repo), "dir_link") == []


def test_secrets_are_never_yielded_even_when_negated(tmp_path):
    """Secret files stay excluded even when .gitignore says '!.env' or '!*.pem'."""
    make_tree(tmp_path, {
        ".gitignore": "!.env\n!*.pem\n!id_rsa\n", ".env": "K=1", "cfg/.env.local": "K=2",
        "certs/server.pem": "", "id_rsa": "", "id_ed25519.pub": "", ".netrc": "", "app.py": "",
    })
    ig = RepoIgnore(tmp_path)
    assert walked(ig) == [".gitignore", "app.py"]
    assert ig.is_ignored(".env") and is_secret("cfg/.env.local") and is_secret("aws/credentials")
    assert not is_secret("secrets.py") and not is_secret("env.py")


def test_walk_is_sorted_and_returns_lstat(tmp_path):
    """The walk yields regular files in relpath order, each with its lstat."""
    make_tree(tmp_path, {"a0.py": "0", "a/b.py": "bb", "a.py": "a", "Z.py": ""})
    os.mkfifo(tmp_path / "fifo")
    result = list(RepoIgnore(tmp_path).walk())
    rels = [rel for rel, _ in result]
    assert rels == sorted(rels) == ["Z.py", "a.py", "a/b.py", "a0.py"]
    assert dict(result)["a/b.py"].st_size == 2


def test_walk_tolerates_entries_vanishing(tmp_path):
    """Files and directories deleted while the walk runs are skipped without error."""
    make_tree(tmp_path, {"a.py": "", "b/x.py": "", "c.py": ""})
    walk = RepoIgnore(tmp_path).walk()
    assert next(walk)[0] == "a.py"
    shutil.rmtree(tmp_path / "b")
    (tmp_path / "c.py").unlink()
    assert list(walk) == []


def test_walk_under_a_subtree(tmp_path):
    """walk(under) yields only that subtree, relpaths still relative to the root."""
    make_tree(tmp_path, {"a.py": "", "pkg/m.py": "", "pkg/node_modules/x.js": "", "pkg/q/r.py": ""})
    assert walked(RepoIgnore(tmp_path), "pkg") == ["pkg/m.py", "pkg/q/r.py"]
    assert walked(RepoIgnore(tmp_path), "pkg/node_modules") == []


def test_invalidate_reloads_edited_gitignore(tmp_path):
    """After a .gitignore edit, invalidate() makes the new rules apply (cached until then)."""
    make_tree(tmp_path, {".gitignore": "", "sub/.gitignore": "", "sub/gen.py": "", "sub/keep.py": ""})
    ig = RepoIgnore(tmp_path)
    assert not ig.is_ignored("sub/gen.py")
    (tmp_path / "sub/.gitignore").write_text("gen.py\n")
    assert not ig.is_ignored("sub/gen.py")  # cached
    ig.invalidate()
    assert ig.is_ignored("sub/gen.py")
    (tmp_path / ".gitignore").write_text("sub/\n")
    ig.invalidate()
    assert ig.is_ignored("sub/keep.py")
    assert walked(ig) == [".gitignore"]


def test_the_one_regex_of_the_excludes_says_what_pathspec_says(tmp_path):
    """The default and configured excludes run as one regex (the patterns that match at any depth share one
    optional prefix): for names at the root, deep, as files and as directories it gives pathspec's verdict."""
    ignore = RepoIgnore(tmp_path, ["docs/", "/top.txt", "*.log", "a/**/b", "!keep.log"])
    assert ignore._base_re is None  # a negation makes the order matter: pathspec decides then
    ignore = RepoIgnore(tmp_path, ["docs/", "/top.txt", "*.log", "a/**/b"])
    assert ignore._base_re is not None
    names = ["main.py", ".git/", "x/.git/", "x/.git", "node_modules/", "a/node_modules/", "b/x.pyc", "vendor/bundle/",
             "a/vendor/bundle/", "build/", "x/build", "x.egg-info/", "y/z.egg-info/", ".coverage", ".coverage.1",
             "a/.coverage.x", "lib.so", "x/lib.so.1", "top.txt", "d/top.txt", "docs/", "q/docs/", "k.log",
             "a/b/k.log", "a/x/y/b", "a/b", "dist", "dist/", "out/", "src/output.py", "venv2/", "my.venv/"]
    said = {n: bool(ignore._base_re.search(n)) for n in names}
    assert said == {n: bool(ignore._base.match_file(n)) for n in names}
    assert said["a/vendor/bundle/"] is False and said["x/.git/"] and said["a/x/y/b"] and not said["d/top.txt"]
