"""Why ``show`` has no span to print: one sentence a person can act on.

``show PATH[:LINE]`` exits 1 when it finds nothing (DESIGN.md "Contract:
command line"); :func:`why_no_spans` says which of these it is, checked in
this order:

* the path is in no configured repo, or its repo directory is missing;
* its name is not valid UTF-8 (never indexed: SQLite text is UTF-8);
* it is excluded: a secret file, an editor temp file, or by ignore rules
  (``.gitignore``, ``repos[].exclude``, the default excludes);
* it is a symlink (never followed), a directory, does not exist, or is no
  regular file (a FIFO, socket or device: never read);
* it was skipped when scanned, with the reason the scanner stored
  (``binary``, ``too_large``, ``decode_error``, ...);
* it has not been scanned yet (no store, or not in it);
* LINE is past the file's spans, or between them.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmc_rag_service.config import Config, RepoConfig
from llmc_rag_service.index.ignore import RepoIgnore, is_editor_temp, is_secret
from llmc_rag_service.paths import printable_name
from llmc_rag_service.service.status import known_repos, resolve_file
from llmc_rag_service.store.views import StoreReader

#: What the scanner's ``skipped`` reasons mean.
SKIP_REASONS = {
    "binary": "binary (it holds NUL bytes)",
    "too_large": "too large (over watch.max_file_bytes)",
    "decode_error": "undecodable (not UTF-8, and no coding cookie that decodes it)",
    "secret": "a secret file by its content (credential keys with literal values; never indexed)",
}


def utf8_name(path: str) -> bool:
    """Whether ``path`` is valid UTF-8 (``os.fsdecode`` keeps bad bytes as surrogates)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with undecodable bytes and control characters as ``\\xNN``-style escapes,
    safe to print anywhere (:func:`~llmc_rag_service.paths.printable_name`)."""
    return printable_name(text)


def why_no_spans(config: Config, path: str, line: int | None = None) -> str:
    """The reason ``show`` found no span for ``path`` (and ``line``), naming the path."""
    shown = printable(path) + (f":{line}" if line is not None else "")
    where = resolve_file(config, path)
    if where is None:
        repos = ", ".join(str(r.path) for r in config.repos)
        return f"{shown}: not in a configured repo (repos: {repos}; config {config.source})"
    repo_path, relpath = where
    repo = next(r for r in known_repos(config) if r.path == repo_path)
    if not repo_path.is_dir():
        return f"{shown}: its repo {repo_path} is missing (not a directory)"
    if not utf8_name(relpath):
        return f"{shown}: not indexed: its name is not valid UTF-8 (rename it to index it)"
    reason = _excluded(repo, relpath)
    if reason:
        return f"{shown}: excluded: {reason}"
    full = repo_path / relpath
    if os.path.islink(full):
        return f"{shown}: a symlink (to {printable(os.readlink(full))}); symlinks are never followed: show the file itself"
    if os.path.isdir(full):
        return f"{shown}: a directory; show takes a file"
    if not os.path.exists(full):  # os.path, not Path: a name too long is "no such file", not an OSError
        return f"{shown}: no such file"
    if not os.path.isfile(full):
        return f"{shown}: not a regular file (a FIFO, socket or device); only regular files are indexed"
    return f"{shown}: {_stored_reason(config, repo_path, relpath, line)}"


def _excluded(repo: RepoConfig, relpath: str) -> str | None:
    if is_secret(relpath):
        return "a secret file (never read)"
    if is_editor_temp(relpath):
        return "an editor temp or backup file"
    if RepoIgnore(repo.path, repo.exclude).is_ignored(relpath, is_dir=os.path.isdir(repo.path / relpath)):
        return "by .gitignore, repos[].exclude or the default excludes"
    return None


def _stored_reason(config: Config, repo: Path, relpath: str, line: int | None) -> str:
    reader = StoreReader.open(config.db_path)
    if reader is None:
        return f"not scanned yet (no store at {config.db_path}; run llmc-rag enrich, or start the service)"
    with reader:
        record = reader.stored_file(repo, relpath)
    if record is None:
        return "not scanned yet (the service or llmc-rag enrich has not indexed it)"
    if record.skipped:
        return f"skipped: {SKIP_REASONS.get(record.skipped, record.skipped)}"
    if record.spans == 0:
        return "has no spans (empty)"
    if line is not None and line < 1:
        return f"there is no line {line}: line numbers start at 1 (its spans cover lines 1-{record.last_line})"
    if line is not None and line > record.last_line:
        return f"no span covers line {line}: the file's spans end at line {record.last_line}"
    return f"no span covers line {line} (a blank or skipped stretch between spans)"
