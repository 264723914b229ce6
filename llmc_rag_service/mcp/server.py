"""``llmc-rag mcp``: the index as MCP tools for coding agents, over stdio.

Built on the official SDK (``mcp.server.mcpserver.MCPServer``): input schemas
come from the type hints below (``limit`` 1-50), stdout carries only the
protocol (logs go to stderr), and a bad argument or an unknown path is a tool
error (``isError: true``) the agent can read, never a crash of the server.
The store is read-only here (``mode=ro``), so the server runs beside ``serve``.
"""

from __future__ import annotations

import sqlite3
from typing import Annotated, Any, Literal

from pydantic import Field

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from llmc_rag_service import __version__
from llmc_rag_service.config import Config
from llmc_rag_service.mcp import tools
from llmc_rag_service.store.faults import StoreUnusable, classify

INSTRUCTIONS = """\
An index of this project's code, kept fresh by the llmc-rag daemon: every function, method and class
(a "span") with an LLM-written summary, inputs, outputs, side effects and pitfalls, searchable by
meaning and by identifier. Prefer search_code over grep for meaning-level questions ("where is the
retry policy", "what parses the config", "where is X handled"); use grep for exact strings, literal
error messages or every occurrence of a name. Hits with fresh=false come from a file changed since it
was indexed: re-read the file before trusting line numbers."""

Language = Literal["python", "javascript", "typescript", "tsx", "go", "rust", "java", "c", "cpp", "text"]
Kind = Literal["function", "method", "class", "block", "window", "error"]


def build_server(config: Config, embed_query: Any = None) -> MCPServer:
    """The MCP server with its three tools, reading the store of ``config``.
    ``embed_query`` (``text -> vector``) enables the semantic half of search."""
    server: MCPServer = MCPServer("llmc-rag", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool()
    def search_code(
        query: Annotated[str, Field(min_length=1, max_length=10_000,
                                    description="what you look for, in words or identifiers")],
        limit: Annotated[int, Field(ge=1, le=50, description="hits to return")] = 10,
        path: Annotated[str | None, Field(description="glob on the path relative to the repo, e.g. 'src/**/*.py'")] = None,
        language: Annotated[Language | None, Field(description="only spans of this language")] = None,
        kind: Annotated[Kind | None, Field(description="only spans of this kind")] = None,
        include_code: Annotated[bool, Field(description="also return each span's code")] = False,
    ) -> dict[str, Any]:
        """Find code by meaning or by name: functions, methods and classes ranked by hybrid search
        (BM25 over names, paths, summaries and code, fused with embedding similarity). Use it for
        "where is X handled / how does Y work" questions before grepping; use grep for exact strings.
        Returns compact hits (path, lines, kind, name, summary, fresh); call get_span for a hit's code
        and full enrichment."""
        return _call(tools.search_code, config, query, limit, path, language, kind, include_code, embed_query)

    @server.tool()
    def get_span(
        path: Annotated[str, Field(min_length=1, description="file path, absolute or relative to the repo root")],
        line: Annotated[int, Field(ge=1, description="a 1-based line inside the span")],
    ) -> dict[str, Any]:
        """The function/method/class holding path:line: its code, its enrichment (summary, inputs,
        outputs, side effects, pitfalls, usage), and whether the file changed since it was indexed."""
        return _call(tools.get_span, config, path, line)

    @server.tool()
    def index_status() -> dict[str, Any]:
        """How complete the index is: files, spans, enriched/pending/failed counts per repository, and
        what the daemon is doing now (its STATUS line). Check it when results look thin."""
        return _call(tools.index_status, config)

    return server


def _call(fn: Any, config: Config, *args: Any) -> dict[str, Any]:
    """Run a tool function; an input the agent can fix, or an unusable store (corrupt, another
    application's, unreadable), becomes a ToolError whose message says which, with no traceback."""
    try:
        result: dict[str, Any] = fn(config, *args)
        return result
    except tools.ToolInputError as exc:
        raise ToolError(str(exc)) from None
    except (StoreUnusable, sqlite3.Error, OSError) as exc:
        raise ToolError(f"the index store cannot be used: {classify(exc, config.db_path) or exc}") from None


def run(config: Config) -> None:
    """Serve on stdin/stdout until the client closes stdin (EOF)."""
    build_server(config).run("stdio")
