"""The layout's import rule: a stage imports only the stages below it (DESIGN.md "Architecture")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llmc_rag_service"
#: What each subpackage may import from the product, besides itself and the shared
#: top-level modules (config, models, logs, clock, paths). Lower stages never import higher ones.
ALLOWED: dict[str, set[str]] = {
    "store": set(),
    "index": {"store"},
    "watch": {"index"},
    "enrich": {"store"},
    "search": {"store", "enrich", "index"},
    "team": {"store", "enrich"},
    "service": {"store", "index", "watch", "enrich", "search", "team"},
    "mcp": {"store", "search", "service"},
    "testing": set(),
}
SHARED = {"config", "models", "logs", "clock", "paths", "__init__", "__version__"}


def _imports(path: Path) -> set[str]:
    """The first component under llmc_rag_service of every import in ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "llmc_rag_service" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_stage_imports_only_the_stages_below_it():
    """No module of a subpackage imports a higher stage (e.g. index never imports service)."""
    wrong = []
    for stage, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / stage).rglob("*.py")):
            for imported in _imports(path) - allowed - SHARED - {stage}:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {imported}")
    assert wrong == []


def test_the_rule_sees_a_violation(tmp_path):
    """The checker finds a higher-stage import when one is there."""
    sample = tmp_path / "sample.py"
    sample.write_text("from llmc_rag_service.service.pipeline import Pipeline\nimport llmc_rag_service.watch.repo\n")
    assert _imports(sample) == {"service", "watch"}


def test_no_module_shadows_the_standard_library():
    """No module of the package is named like a standard-library module (logging, queue…)."""
    import sys

    names = {p.stem for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert names & set(sys.stdlib_module_names) == set()


def test_the_emulator_program_needs_only_structlog():
    """The emulator runs from a venv holding structlog alone (tests/system runs it so, before and after
    llmc-rag is installed): its modules must not import numpy, httpx or the other dependencies at load."""
    blocked = ["numpy", "httpx", "yaml", "watchdog", "pathspec", "psycopg", "wordllama", "tree_sitter"]
    code = ("import sys\n"
            f"for name in {blocked!r}: sys.modules[name] = None\n"
            "import llmc_rag_service.testing.emulator\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
