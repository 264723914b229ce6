"""Which files of a repository are indexed: .gitignore rules, defaults, secrets, editor temps.

A path (POSIX, relative to the repo root) is ignored when any of these holds:

1. a directory above it is ignored (git cannot re-include below an excluded dir);
2. it matches :data:`DEFAULT_EXCLUDES` or the repo's configured excludes
   (``repos[].exclude``, gitignore syntax relative to the root; a ``!pattern``
   there can re-include a default, e.g. ``!build/`` for a source dir so named);
3. its nearest deciding ``.gitignore`` says so, git-style: every directory's
   ``.gitignore`` applies to its subtree with its own anchoring, deeper files
   override shallower ones, the last matching line of a file wins, then
   ``.git/info/exclude``;
4. it is a secret file by name (:func:`is_secret`, kinds in ``secret_files.py``) or an
   editor temp (:func:`is_editor_temp`); these two are decided by name first,
   so no ``.gitignore`` negation un-ignores them.

Matching uses ``pathspec.GitIgnoreSpec`` (git's wildmatch semantics).
"""

from __future__ import annotations

import os
import re
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog
from pathspec import GitIgnoreSpec

from llmc_rag_service.index.secret_files import secret_file_kind

log = structlog.get_logger(__name__)

DEFAULT_EXCLUDES: tuple[str, ...] = (
    # Version control internals.
    ".git/", ".hg/", ".svn/",
    # Dependencies and virtualenvs: huge, not the user's code, one inotify watch per dir.
    "node_modules/", ".venv/", "venv/", "bower_components/", "vendor/bundle/",
    # Tool caches.
    "__pycache__/", ".mypy_cache/", ".pytest_cache/", ".ruff_cache/", ".tox/", ".nox/",
    ".cache/", ".gradle/", ".next/", ".nuxt/", ".parcel-cache/", ".turbo/", ".terraform/",
    # Build outputs and packaging metadata.
    "build/", "dist/", "target/", "out/", "*.egg-info/", ".eggs/",
    # Coverage reports.
    "coverage/", "htmlcov/", ".coverage", ".coverage.*",
    # IDE project state.
    ".idea/", ".vscode/", ".vs/",
    # Compiled objects and bytecode: binary, never worth a span.
    "*.pyc", "*.pyo", "*.o", "*.so", "*.a", "*.class", "*.dll", "*.exe",
)

# One regex per editor/tool convention, matched against the basename.
_EDITOR_TEMP_RES: tuple[tuple[str, str], ...] = (
    ("vim: probe file 4913 (then 5036, ... on clash) written to test the dir", r"\d+"),
    ("vim: swap files .name.swp/.swo/... and .swx", r"\..*\.sw[a-px]|.*\.sw[pox]"),
    ("vim/emacs/nano: backup name~", r".*~"),
    ("emacs: autosave #name#", r"#.*#"),
    ("emacs: lock symlink .#name", r"\.#.*"),
    ("JetBrains safe-write temp and old copy", r".*___jb_(tmp|old)___"),
    ("atomic replace: sibling .name.tmpNNNN renamed over the target", r"\..*\.tmp(?!l$)[^.]*"),
    ("generic temp files", r".*\.tmp"),
    ("browser/downloader partial files", r".*\.(part|crdownload)"),
    ("LibreOffice lock .~lock.name#", r"\.~lock\..*#"),
    ("MS Office owner file ~$name", r"~\$.*"),
    ("sed -i temp sedXXXXXX", r"sed[A-Za-z0-9]{6}"),
    ("Kate swap .name.kate-swp", r".*\.kate-swp"),
    ("gedit/GIO atomic save .goutputstream-XXXXXX", r"\.goutputstream-.*"),
)
_EDITOR_TEMP_RE = re.compile("|".join(f"(?:{rx})" for _, rx in _EDITOR_TEMP_RES), re.DOTALL)


_INFO_EXCLUDE = "\0info-exclude"  # cache key of .git/info/exclude; no real dir has a NUL


def _basename(relpath: str) -> str:
    return relpath.rstrip("/").rpartition("/")[2]




def is_secret(relpath: str) -> bool:
    """True if the file is a secret file by its name (see ``secret_files.SECRET_FILES``).

    Secret files are never read, whatever ``.gitignore`` says.
    """
    return secret_file_kind(relpath) is not None


def is_editor_temp(relpath: str) -> bool:
    """True if the basename is an editor/tool temp, swap, lock or backup name.

    The conventions (vim, emacs, JetBrains, atomic-save tools, sed -i, ...) are
    listed with their source in ``_EDITOR_TEMP_RES``; see editor_saves.json.
    """
    return _EDITOR_TEMP_RE.fullmatch(_basename(relpath)) is not None


def _undecodable(relpath: str) -> bool:
    """True if the name holds bytes that are not UTF-8 (``os.fsdecode`` surrogates)."""
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _normalize(relpath: str) -> str:
    """'./a//b/' -> 'a/b' (POSIX separators, no leading './' or '/')."""
    parts = [p for p in relpath.replace(os.sep, "/").split("/") if p not in ("", ".")]
    return "/".join(parts)


# How pathspec's regex of a pattern without a leading or inner ``/`` begins.
_ANY_DEPTH = "^(?:.+/)?"


def _one_regex(spec: GitIgnoreSpec) -> re.Pattern[str] | None:
    """All of ``spec``'s patterns as one regex (one search per path instead of one
    per pattern: 40-odd default excludes), or None when a negation makes their
    order matter. Built from pathspec's own per-pattern regexes, so the matching
    is git's wildmatch as pathspec implements it."""
    patterns = [p for p in spec.patterns if p.include is not None]
    if any(not p.include for p in patterns) or not all(hasattr(p, "regex") for p in patterns):
        return None
    regexes = [p.regex.pattern.replace("(?P<ps_d>", "(?:") for p in patterns]  # type: ignore[union-attr]
    # Most patterns match a name at any depth (``^(?:.+/)?NAME``): one optional
    # prefix before their alternation, not one per pattern (whose backtracking made
    # this 5 us per path, the largest cost of a restart's catch-up scan; now ~1.3).
    anywhere = [r[len(_ANY_DEPTH):] for r in regexes if r.startswith(_ANY_DEPTH)]
    rooted = [f"(?:{r})" for r in regexes if not r.startswith(_ANY_DEPTH)]
    if anywhere:
        rooted.insert(0, f"{_ANY_DEPTH}(?:{'|'.join(f'(?:{r})' for r in anywhere)})")
    return re.compile("|".join(rooted))



class RepoIgnore:
    """Ignore rules of one repository rooted at ``root``; thread-safe.

    ``.gitignore`` files are read lazily, once per directory, and cached until
    :meth:`invalidate`. ``extra_excludes`` are the config's ``repos[].exclude``.
    """

    def __init__(self, root: Path, extra_excludes: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self._base = GitIgnoreSpec.from_lines([*DEFAULT_EXCLUDES, *extra_excludes])
        self._base_re = _one_regex(self._base)
        self._lock = threading.Lock()
        self._specs: dict[str, GitIgnoreSpec | None] = {}  # dir relpath ('' = root) -> spec
        self._dirs: dict[str, bool] = {}  # dir relpath -> ignored
        self._undecodable_seen: set[str] = set()  # names already logged as undecodable

    def invalidate(self) -> None:
        """Forget cached ``.gitignore`` specs and decisions (a ``.gitignore`` changed)."""
        with self._lock:
            self._specs.clear()
            self._dirs.clear()

    def forget(self, rel_dir: str) -> None:
        """Forget what is cached for directory ``rel_dir`` and below (a directory was
        created or moved in: a tree seen before under that name may have had other
        ``.gitignore`` files). Costs nothing for a name never looked at."""
        rel = _normalize(rel_dir)
        with self._lock:
            if rel not in self._specs and rel not in self._dirs:
                return
            prefix = rel + "/"
            for cache in (self._specs, self._dirs):
                for key in [k for k in cache if k == rel or k.startswith(prefix)]:
                    del cache[key]

    def is_ignored(self, relpath: str, is_dir: bool = False) -> bool:
        """True if ``relpath`` (POSIX, relative to root) is excluded from indexing.

        ``is_dir`` says the path is a directory (so ``dir/`` patterns apply and the
        file-only rules, secrets and editor temps, do not). The root itself is never ignored.
        """
        rel = _normalize(relpath)
        if not rel:
            return False
        if _undecodable(rel):
            # SQLite text must be UTF-8; a name with undecodable bytes (read
            # as surrogates) cannot be stored, so it is skipped, not crashed on.
            self._log_undecodable(rel)
            return True
        if not is_dir and (is_secret(rel) or is_editor_temp(rel)):
            return True
        parent = rel.rpartition("/")[0]
        if parent and self._dir_ignored(parent):
            return True
        return self._decide(rel, is_dir)

    def _dir_ignored(self, rel: str) -> bool:
        # Iterative: find the nearest cached ancestor, then decide downwards.
        chain = []
        with self._lock:
            while rel and rel not in self._dirs:
                chain.append(rel)
                rel = rel.rpartition("/")[0]
            ignored = self._dirs[rel] if rel else False
        for path in reversed(chain):
            ignored = ignored or self._decide(path, True)
            with self._lock:
                self._dirs[path] = ignored
        return ignored

    def _log_undecodable(self, rel: str) -> None:
        with self._lock:
            if rel in self._undecodable_seen:
                return
            self._undecodable_seen.add(rel)
        log.info("file_skipped", path=rel.encode("utf-8", "backslashreplace").decode(), reason="undecodable_name")

    def _decide(self, rel: str, is_dir: bool) -> bool:
        """The rules for ``rel`` itself, ancestors not considered."""
        probe = rel + "/" if is_dir else rel
        if self._base_match(rel, probe):
            return True
        parts = rel.split("/")
        for depth in range(len(parts) - 1, -1, -1):  # deepest .gitignore first
            spec = self._spec_for("/".join(parts[:depth]))
            if spec is not None:
                verdict = spec.check_file("/".join(parts[depth:]) + ("/" if is_dir else "")).include
                if verdict is not None:
                    return verdict
        info = self._spec_for(_INFO_EXCLUDE)
        return info is not None and bool(info.match_file(probe))

    def _base_match(self, rel: str, probe: str) -> bool:
        """The default and configured excludes' verdict on ``probe`` (``rel`` plus a
        ``/`` for a directory)."""
        if self._base_re is not None:
            return self._base_re.search(probe) is not None
        return bool(self._base.match_file(probe))

    def _spec_for(self, key: str) -> GitIgnoreSpec | None:
        """The parsed ``<key>/.gitignore`` (or ``.git/info/exclude``), None if absent."""
        with self._lock:
            if key in self._specs:
                return self._specs[key]
        name = ".git/info/exclude" if key == _INFO_EXCLUDE else os.path.join(key, ".gitignore")
        try:
            text = (self.root / name).read_text(encoding="utf-8", errors="replace")
            spec: GitIgnoreSpec | None = GitIgnoreSpec.from_lines(text.splitlines())
        except FileNotFoundError:
            spec = None
        except OSError as exc:  # unreadable or a directory: act as if absent
            log.debug("gitignore_unreadable", path=str(self.root / name), error=str(exc))
            spec = None
        with self._lock:
            self._specs[key] = spec
        return spec

    def walk(self, under: str = "", secrets: list[str] | None = None) -> Iterator[tuple[str, os.stat_result]]:
        """Yield ``(relpath, lstat)`` for every indexed regular file, sorted by relpath.

        ``under`` (a dir relpath, default the root) limits the walk to that subtree;
        relpaths stay relative to the root. Never follows symlinks; ignored directories
        are pruned without being read; entries that vanish or cannot be read during
        the walk are skipped (debug log). ``secrets``, if given, gets the relpath of
        every secret file by name met in a directory walked (never opened), for the
        audit in ``status --json``.
        """
        start = _normalize(under)
        if start and (self.is_ignored(start, is_dir=True) or (self.root / start).is_symlink()):
            return
        yield from self._walk_dir(start, secrets)

    def _walk_dir(self, rel_dir: str, secrets: list[str] | None) -> Iterator[tuple[str, os.stat_result]]:
        # An explicit stack, not recursion: a tree 1,000+ directories deep must
        # not hit Python's recursion limit. Sorting dirs as 'name/' and pushing
        # in reverse keeps the depth-first order equal to the relpath order.
        stack: list[tuple[str, bool]] = [(rel_dir, True)]
        while stack:
            rel, is_dir = stack.pop()
            if not is_dir:
                found = self._file_stat(rel)
                if found is not None:
                    yield rel, found
                continue
            children = []
            for entry, child_is_dir in self._entries(rel):
                child = f"{rel}/{entry.name}" if rel else entry.name
                if not self.is_ignored(child, is_dir=child_is_dir):
                    children.append((entry.name + "/" if child_is_dir else entry.name, child, child_is_dir))
                elif secrets is not None and not child_is_dir and is_secret(child):
                    secrets.append(child)
            stack.extend((child, child_is_dir) for _, child, child_is_dir in sorted(children, reverse=True))

    def _entries(self, rel_dir: str) -> list[tuple[os.DirEntry[str], bool]]:
        """The entries of a directory with their is-dir flag (no symlink followed)."""
        path = self.root / rel_dir if rel_dir else self.root
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as exc:
            log.info("file_skipped", path=rel_dir or ".", reason="unreadable_dir", error=str(exc))
            return []
        out = []
        for entry in entries:
            try:
                out.append((entry, entry.is_dir(follow_symlinks=False)))
            except OSError:
                continue
        return out

    def _file_stat(self, rel: str) -> os.stat_result | None:
        try:
            st = os.lstat(self.root / rel)
        except OSError as exc:
            log.debug("walk_file_skipped", path=rel, error=str(exc))
            return None
        if stat.S_ISREG(st.st_mode):
            return st
        if not stat.S_ISLNK(st.st_mode):  # FIFOs, sockets, devices: never read
            log.info("file_skipped", path=rel, reason="not_a_regular_file")
        return None
