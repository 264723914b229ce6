"""The ``search`` and ``export`` commands behind cli.py: options -> API call -> output.

Errors are raised, never turned into exit codes here (cli.py owns those):
:class:`QueryError` for a bad query or option, :class:`StoreUnusable` and
``sqlite3.Error`` for a store that cannot be used.

Human output, one block per hit::

    src/http/body.py:12-30  function parse_json_body   [stale] [pending]
        Parses the request body as JSON ...
        pitfalls: raises on empty body; ...

The location is relative to the current directory when the file is under it
(so terminals can open it), else absolute. Colour only on a TTY, and never
when ``NO_COLOR`` is set (https://no-color.org).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from llmc_rag_service.enrich.embedder import embed_client
from llmc_rag_service.paths import printable_name, real_path, shown_path, working_dir
from llmc_rag_service.search.access import open_store
from llmc_rag_service.search.api import EMBED_BUDGET_S, Hit, SearchResult, SearchSettings, search, validate
from llmc_rag_service.search.export import ExportCounts, export_jsonl
from llmc_rag_service.search.query import QueryError, parse_query
from llmc_rag_service.search.semantic import EmbedQuery
from llmc_rag_service.store.searchview import SpanFilter
from llmc_rag_service.store.views import StoreReader

_STYLE = {"loc": "\033[36m", "name": "\033[1m", "dim": "\033[2m", "warn": "\033[33m", "bad": "\033[31m"}
_RESET = "\033[0m"


def repo_filter(config: Any, repo: str | None) -> str | None:
    """The repo root that ``--repo`` names (any spelling of its path): a
    configured one, or one the store holds files of (``enrich PATH``); else QueryError."""
    if repo is None:
        return None
    wanted = real_path(repo)
    if wanted is None:
        raise QueryError(f"--repo {repo!r}: no directory can have this name (a NUL byte or an unknown ~user)")
    known = [Path(r.path) for r in config.repos]
    if wanted in known:
        return str(wanted)
    reader = StoreReader.open(config.db_path)
    stored = [] if reader is None else _paths_of(reader)
    if wanted not in stored:
        names = ", ".join(str(p) for p in dict.fromkeys(known + stored))
        raise QueryError(f"--repo {repo!r}: not a configured or indexed repository (known: {names})")
    return str(wanted)


def _paths_of(reader: StoreReader) -> list[Path]:
    with reader:
        return reader.repo_paths()


def query_embedder(config: Any) -> EmbedQuery | None:
    """The query's embedding by ``search.embed_model`` (None when it is null): one
    ``POST /api/embed`` to the first Ollama host per query, whose read deadline
    is the search's budget (:data:`~llmc_rag_service.search.api.EMBED_BUDGET_S`),
    so an abandoned request ends soon after. Raises OllamaError (the search
    then answers lexically and says why)."""
    model = config.search.embed_model
    if model is None:
        return None
    ollama = replace(config.ollama, load_timeout_s=EMBED_BUDGET_S)

    def embed(text: str) -> list[float]:
        client = embed_client(ollama, model, ollama.all_hosts()[0])
        try:
            return client.embed([text])[0]
        finally:
            client.close()

    return embed


def run_search(config: Any, query: str, *, mode: str, limit: int, repo: str | None, path: str | None,
               language: str | None, kind: str | None, err: TextIO,
               embed_query: EmbedQuery | None = None) -> SearchResult:
    """Search the configured store (the query embedded by :func:`query_embedder`
    unless ``embed_query`` is given). With no store yet: an empty answer, and a note on ``err``."""
    filters = SpanFilter(repo=repo_filter(config, repo), path_glob=path, language=language, kind=kind)
    settings = SearchSettings(chat_model=config.ollama.model, embed_model=config.search.embed_model)
    try:
        conn = open_store(config.db_path)
    except FileNotFoundError:
        validate(mode, limit, filters)
        parse_query(query)
        err.write(_nothing_indexed(config))
        return SearchResult(query, mode, None, indexed=False)
    try:
        embed_query = embed_query if embed_query is not None else query_embedder(config)
        return search(conn, query, settings, embed_query=embed_query, mode=mode, limit=limit, filters=filters)
    finally:
        conn.close()


def _nothing_indexed(config: Any) -> str:
    return (f"llmc-rag: nothing is indexed yet ({config.db_path} does not exist); "
            "start llmc-rag serve or run llmc-rag enrich\n")


def run_export(config: Any, out: TextIO, repo: str | None, err: TextIO) -> int:
    """Export the configured store (or one repo) to ``out``; returns the lines
    written (0 with no store: a note on ``err`` says so). Spans of files
    deleted or changed since they were indexed are written flagged
    (``deleted``, ``fresh: false``), and one line on ``err`` counts them."""
    repo_path = repo_filter(config, repo)
    try:
        conn = open_store(config.db_path)
    except FileNotFoundError:
        err.write(_nothing_indexed(config))
        return 0
    try:
        counts = export_jsonl(conn, out, config.ollama.model, repo_path)
    finally:
        conn.close()
    if counts.deleted or counts.changed:
        err.write(_stale_note(counts))
    return counts.lines


def _stale_note(counts: ExportCounts) -> str:
    """One warning line counting the exported records whose file is gone or changed."""
    parts = []
    if counts.deleted:
        files = "1 file" if counts.deleted_files == 1 else f"{counts.deleted_files} files"
        parts.append(f"{counts.deleted} of {counts.lines} records are of {files} deleted since indexed "
                     "(\"deleted\": true)")
    if counts.changed:
        parts.append(f"{counts.changed} of {counts.lines} records are of files changed since indexed "
                     "(line numbers may be off)")
    if counts.missing_repos:
        # serve keeps a missing repo's index (an unmounted disk comes back); a scan cannot drop it.
        gone = ", ".join(sorted(counts.missing_repos))
        advice = (f"repo directory missing: {gone} (its records stay until it is back; "
                  "remove it from the config and restart serve to drop them)")
    else:
        advice = "a running serve or llmc-rag enrich brings the store up to date"
    return f"llmc-rag: export: warning: {'; '.join(parts)}; all have \"fresh\": false; {advice}\n"


def print_result(result: SearchResult, out: TextIO, err: TextIO, as_json: bool) -> None:
    """Write the result as the ``search --json`` object or as human blocks; notes go to ``err``."""
    if as_json:
        out.write(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
        return
    color = _use_color(out)
    if result.degraded:
        err.write(f"llmc-rag: {result.mode} results only: {result.degraded}\n")
    if not result.hits:
        if result.indexed:  # with no store, run_search said so already
            err.write(f"llmc-rag: no matches for {result.query!r}\n")
    elif result.by_meaning_only:
        # Semantic ranking always has nearest neighbours, related or not: say none matched a word.
        err.write(f"llmc-rag: no span holds the words of {result.query!r}; these are the nearest by meaning\n")
    for number, hit in enumerate(result.hits):
        if number:
            out.write("\n")
        out.write(render_hit(hit, color, working_dir()))


def _use_color(out: TextIO) -> bool:
    return not os.environ.get("NO_COLOR") and hasattr(out, "isatty") and out.isatty()


def _paint(text: str, style: str, color: bool) -> str:
    return f"{_STYLE[style]}{text}{_RESET}" if color else text


def location(hit: Hit, cwd: Path | None) -> str:
    """``path:start-end``, the path relative to ``cwd`` when under it, else absolute (control
    characters of a hostile name escaped): :func:`~llmc_rag_service.paths.shown_path`."""
    return f"{shown_path(Path(hit.repo) / hit.path, cwd)}:{hit.start_line}-{hit.end_line}"


def render_hit(hit: Hit, color: bool, cwd: Path | None) -> str:
    """One hit as a human block (head line, summary, pitfalls), ending in a newline."""
    head = f"{_paint(location(hit, cwd), 'loc', color)}  {_paint(hit.kind, 'dim', color)} {_paint(printable_name(hit.name), 'name', color)}"
    if not hit.fresh:
        head += "  " + _paint("[changed since indexed]", "warn", color)
    if hit.state != "enriched":
        head += "  " + _paint(f"[{hit.state}]", "bad" if hit.state == "failed" else "dim", color)
    lines = [head]
    if hit.summary:
        lines.append(f"    {printable_name(hit.summary)}")
    if hit.pitfalls:
        lines.append("    " + _paint("pitfalls: ", "warn", color) + printable_name("; ".join(hit.pitfalls)))
    return "\n".join(lines) + "\n"

