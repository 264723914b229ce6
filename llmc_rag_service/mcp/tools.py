"""What the MCP tools do, as plain functions of the config: no MCP types here.

Each returns a JSON-ready dict, or raises :class:`ToolInputError` with a
message for the agent (a bad argument or an unknown path), which the server
turns into a tool error (``isError: true``), never a crash.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from llmc_rag_service.config import Config
from llmc_rag_service.models import PROMPT_VERSION
from llmc_rag_service.service.status import resolve_file, span_json, status_report
from llmc_rag_service.store.views import StoreReader, file_freshness


class ToolInputError(Exception):
    """An argument the agent can fix: the message says what was wrong."""


def search_code(config: Config, query: str, limit: int, path: str | None, language: str | None,
                kind: str | None, include_code: bool, embed_query: Any = None) -> dict[str, Any]:
    """Compact hits for ``query``: ``{mode, degraded, hits: [{path, lines, kind, name, summary, fresh,
    state, code?}]}``, best first; ``path`` is relative to its repo, ``lines`` ``"start-end"`` (1-based)."""
    from llmc_rag_service.search.cli_view import run_search
    from llmc_rag_service.search.query import QueryError

    try:
        result = run_search(config, query, mode="hybrid", limit=limit, repo=None, path=path, language=language,
                            kind=kind, err=io.StringIO(), embed_query=embed_query)
    except QueryError as exc:
        raise ToolInputError(str(exc)) from None
    hits = []
    reader = StoreReader.open(config.db_path) if include_code else None
    try:
        for h in result.hits:
            hit = {"path": h.path, "repo": h.repo, "lines": f"{h.start_line}-{h.end_line}", "kind": h.kind,
                   "name": h.name, "summary": h.summary, "fresh": h.fresh, "state": h.state}
            if reader is not None:
                hit["code"] = reader.span_text(h.span_hash)
            hits.append(hit)
    finally:
        if reader is not None:
            reader.close()
    return {"query": query, "mode": result.mode, "degraded": result.degraded, "hits": hits}


def get_span(config: Config, path: str, line: int) -> dict[str, Any]:
    """The narrowest span of ``path`` holding ``line`` (1-based): its lines, kind, name, text,
    enrichment (or null), ``state`` and ``fresh`` (the file unchanged since it was indexed).
    ``path`` is absolute, or relative to a configured repo root."""
    where = _locate(config, path)
    reader = StoreReader.open(config.db_path)
    if reader is None:
        raise ToolInputError("nothing is indexed yet: start llmc-rag serve or run llmc-rag enrich")
    with reader:
        record = reader.file_record(*where)
        if record is None:
            raise ToolInputError(f"{path}: not indexed (excluded, skipped or not scanned yet)")
        rows = [r for r in reader.file_spans(record["id"], config.ollama.model, PROMPT_VERSION)
                if r["start_line"] <= line <= r["end_line"]]
        if not rows:
            raise ToolInputError(f"{path}:{line}: no span covers this line")
        row = min(rows, key=lambda r: r["end_line"] - r["start_line"])
        span = span_json(where[1], row, config.ollama.model)
        span["text"] = reader.span_text(row["span_hash"])
    span["repo"] = str(where[0])
    span["fresh"] = file_freshness(where[0] / where[1], record["size"], record["mtime_ns"]) is True
    return span


def index_status(config: Config) -> dict[str, Any]:
    """Counts per repo and in total, pending work, and what the daemon is doing (its STATUS line)."""
    return status_report(config)


def _locate(config: Config, path: str) -> tuple[Path, str]:
    """(repo root, relative POSIX path) for an absolute path or one relative to a repo root.
    Resolved as ``show`` resolves it (``..`` and symlinked directories followed, never out of
    a repo; a name no file can have is simply not found), never raising anything but ToolInputError."""
    if os.path.isabs(path) or path.startswith("~"):
        where = resolve_file(config, path)
        if where is None:
            raise ToolInputError(f"{path}: not inside a configured repository")
        return where
    # os.path.lexists, not Path.exists: it is False (not an OSError) for a name too long or with a NUL.
    candidates = [r.path / path for r in config.repos if os.path.lexists(r.path / path)]
    if not candidates and len(config.repos) == 1:
        candidates = [config.repos[0].path / path]
    for candidate in candidates:
        where = resolve_file(config, str(candidate))
        if where is not None:
            return where
    if candidates:
        raise ToolInputError(f"{path}: outside every configured repository")
    raise ToolInputError(f"{path}: not found in any configured repository "
                         f"({', '.join(str(r.path) for r in config.repos)}); pass an absolute path")
