"""The repository stands alone: no test, script, benchmark or doc names a path outside the clone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: A machine's work trees and admin homes: where a clone's neighbours (and shared/) live.
ABS_PATH = re.compile(r"""(?<![\w.:/~$-])(/(?:work|root|mnt|Users)/[\w.+-]+[\w./+-]*)""")
#: Climbing above the clone from a file's own location.
CLIMB = re.compile(r"parents\[(?:[2-9])\]|\.\./\.\./")
#: The neighbour directory a clone must not name, and its case folder; joined at run time
#: so this file holds no such path itself and is scanned like every other.
SHARED, SHARED_CASES = "/".join(["..", "shared"]), "/".join(["", "shared", "cases"])


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / name for name in out.splitlines()
            if not name.startswith("tests/data/") and (ROOT / name).is_file()]


def test_no_file_names_a_path_outside_the_clone():
    """Scanning every tracked file finds no absolute path into a machine's home or work tree, and no shared/ neighbour."""
    offenders = []
    for path in _tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if SHARED in text or SHARED_CASES in text:
            offenders.append(f"{path.relative_to(ROOT)}: names shared/")
        for match in ABS_PATH.finditer(text):
            offenders.append(f"{path.relative_to(ROOT)}: {match.group(1)}")
        if path.suffix == ".py" and CLIMB.search(text):
            offenders.append(f"{path.relative_to(ROOT)}: climbs above the clone")
    assert offenders == []


def test_the_scan_would_catch_an_outside_path(tmp_path):
    """The pattern itself finds the kind of path that broke collection before (a case file in the work tree)."""
    case_file = "/".join(["", "work", "shared", "cases", "editor_saves.json"])
    assert ABS_PATH.search(f'CASES = Path("{case_file}")')
    assert SHARED_CASES in case_file
    assert CLIMB.search('Path(__file__).resolve().parents[' + '2] / "shared"')
    assert not ABS_PATH.search("state_dir: /var/lib/llmc-rag")
