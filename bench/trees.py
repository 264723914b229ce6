"""Trees for the scale benchmark: a generated monorepo-like tree and the standard library
replicated under distinct paths.

``generated_tree(root, files)``: ``files`` source files in about ``files / 10`` directories
(four levels: 10 x 10 x 10 x N leaf directories, ten files each), sizes drawn from a
log-normal distribution (median ~2.5 KB, long tail to ~60 KB, as in real repositories),
75 % Python, 15 % JavaScript, 5 % Go, 5 % Markdown; every file's content is distinct.

``stdlib_tree(root, files)``: the ``.py`` files of this Python's standard library, copied
``files / len(stdlib)`` times under ``copy_NNN/``, byte for byte.
"""

from __future__ import annotations

import os
import random
import shutil
import sysconfig
from pathlib import Path

_WORDS = ("value", "item", "count", "total", "name", "path", "data", "result", "index", "size",
          "buffer", "record", "entry", "config", "state", "token", "node", "child", "parent", "key")


def _ident(rng: random.Random, n: int) -> str:
    return "_".join(rng.choice(_WORDS) for _ in range(n))


def _py_function(rng: random.Random, uid: str, lines: int) -> str:
    args = ", ".join(_ident(rng, 1) + str(i) for i in range(rng.randint(0, 4)))
    body = [f'    """{_ident(rng, 4).replace("_", " ").capitalize()} ({uid})."""']
    for i in range(max(1, lines - 3)):
        var = _ident(rng, 2)
        body.append(f"    {var}_{i} = {rng.choice(_WORDS)}_{rng.randint(0, 99)} + {rng.randint(0, 9999)}"
                    if args else f"    {var}_{i} = {rng.randint(0, 9999)} * {len(body)}")
    body.append(f"    return {len(body)}")
    return f"def {_ident(rng, 2)}_{uid}({args}):\n" + "\n".join(body) + "\n"


def _python(rng: random.Random, uid: str, size: int) -> str:
    parts = [f'"""Module {uid}: {_ident(rng, 5).replace("_", " ")}."""\n\nimport os\nimport sys\n\n']
    n = 0
    while sum(map(len, parts)) < size:
        n += 1
        if rng.random() < 0.2:
            methods = "\n".join("    " + line if line else line
                                for m in range(rng.randint(1, 4))
                                for line in _py_function(rng, f"{uid}_{n}_{m}", rng.randint(6, 20)).replace(
                                    "(", "(self, ", 1).replace("(self, )", "(self)").split("\n"))
            parts.append(f"\n\nclass {_ident(rng, 2).title().replace('_', '')}{n}:\n{methods}\n")
        else:
            parts.append("\n\n" + _py_function(rng, f"{uid}_{n}", int(rng.lognormvariate(2.7, 0.6)) + 3))
    return "".join(parts)


def _javascript(rng: random.Random, uid: str, size: int) -> str:
    parts = [f"// {uid}\n'use strict';\n"]
    n = 0
    while sum(map(len, parts)) < size:
        n += 1
        lines = "\n".join(f"  const {_ident(rng, 2)}{i} = {rng.randint(0, 999)} + {i};" for i in range(rng.randint(4, 24)))
        parts.append(f"\nfunction {_ident(rng, 2)}_{uid}_{n}(a, b) {{\n{lines}\n  return a + b;\n}}\n")
    return "".join(parts)


def _go(rng: random.Random, uid: str, size: int) -> str:
    parts = [f"package p{uid[:4]}\n\nimport \"fmt\"\n"]
    n = 0
    while sum(map(len, parts)) < size:
        n += 1
        lines = "\n".join(f"\tv{i} := {rng.randint(0, 999)} + {i}\n\tfmt.Println(v{i})" for i in range(rng.randint(3, 12)))
        parts.append(f"\nfunc F{uid}x{n}(a int) int {{\n{lines}\n\treturn a\n}}\n")
    return "".join(parts)


def _markdown(rng: random.Random, uid: str, size: int) -> str:
    parts = [f"# Notes {uid}\n"]
    while sum(map(len, parts)) < size:
        parts.append("\n" + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 20))) + ".\n")
    return "".join(parts)


_KINDS = ((0.75, "py", _python), (0.90, "js", _javascript), (0.95, "go", _go), (1.0, "md", _markdown))


def source_file(rng: random.Random, uid: str) -> tuple[str, str]:
    """(extension, text) of one generated file with a realistic size."""
    size = min(60_000, int(rng.lognormvariate(7.8, 0.9)))  # median e^7.8 ~ 2.4 KB
    draw = rng.random()
    ext, make = next((e, m) for limit, e, m in _KINDS if draw < limit)
    return ext, make(rng, uid, size)


def leaf_dirs(files: int) -> list[str]:
    """Relative leaf directories, ten files each: a/b/c/leaf four levels deep."""
    leaves = max(1, files // 10)
    return [f"pkg{i // 1000 % 10}/mod{i // 100 % 10}/sub{i // 10 % 10}/leaf{i:05}" for i in range(leaves)]


def generated_tree(root: Path, files: int, seed: int = 7) -> list[str]:
    """Write ``files`` generated source files under ``root``; returns their relative paths."""
    rng = random.Random(seed)
    out = []
    for leaf_index, leaf in enumerate(leaf_dirs(files)):
        (root / leaf).mkdir(parents=True, exist_ok=True)
        for k in range(10):
            if len(out) == files:
                break
            uid = f"{leaf_index:05}{k}"
            ext, text = source_file(rng, uid)
            rel = f"{leaf}/f{k}_{uid}.{ext}"
            (root / rel).write_text(text)
            out.append(rel)
    return out


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files (no site-packages), sorted."""
    base = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in base.rglob("*.py") if "site-packages" not in p.parts and p.is_file())


def stdlib_tree(root: Path, files: int) -> list[str]:
    """``files`` files: the standard library copied again and again under ``copy_NNN/``."""
    sources, out = stdlib_files(), []
    base = Path(sysconfig.get_paths()["stdlib"])
    copy = 0
    while len(out) < files:
        for src in sources:
            if len(out) == files:
                break
            rel = f"copy_{copy:03}/{src.relative_to(base).as_posix()}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, root / rel)
            out.append(rel)
        copy += 1
    return out


def tree_stats(root: Path) -> dict[str, float]:
    """Files, directories and bytes under ``root`` (no symlinks followed)."""
    n_files = n_dirs = n_bytes = 0
    for _top, dirs, names in os.walk(root):
        n_dirs += len(dirs)
        n_files += len(names)
        n_bytes += sum(os.lstat(os.path.join(_top, n)).st_size for n in names)
    return {"files": n_files, "dirs": n_dirs, "mb": n_bytes / 1e6}
