"""``search``: a query -> ranked spans, lexical, semantic or both fused.

Shapes are the ``search --json`` contract (DESIGN.md): :class:`SearchResult`
``{query, mode, degraded, hits}`` and :class:`Hit`. ``mode`` is the ranking
actually used: when semantic ranking was asked for but cannot be used (no
embedding model configured, no vectors computed yet, the embedder failed,
answered a wrong vector or took longer than the budget) the answer is
lexical and ``degraded`` says why -- never an error, never a longer wait.

Every hit is re-checked against the file system: ``fresh`` is false when the
file's size or mtime differ from what was indexed (line numbers may be off),
and a hit whose file is gone from disk is dropped (a deleted file's spans
never appear, even before the daemon notices the deletion).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmc_rag_service.enrich.embed_text import query_text
from llmc_rag_service.index.syntax import GRAMMARS
from llmc_rag_service.search import fusion, lexical, semantic
from llmc_rag_service.search.query import ParsedQuery, QueryError, parse_query
from llmc_rag_service.search.semantic import EmbedQuery, PendingEmbedding, SemanticUnavailable
from llmc_rag_service.store import reader, fts, searchview, vectors
from llmc_rag_service.store.views import file_freshness
from llmc_rag_service.store.reader import StoreUnusable
from llmc_rag_service.store.searchview import SpanFilter

MODES = ("hybrid", "lexical", "semantic")
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
#: Span kinds cut by index/spans.py (see models.Span).
KINDS = ("function", "method", "class", "block", "window", "error")
#: Language ids of index/sources.py: the parsed ones and ``text``.
LANGUAGES = tuple(sorted(GRAMMARS)) + ("text",)
#: Seconds the query embedding may take (one request to Ollama /api/embed).
EMBED_BUDGET_S = 5.0
#: Characters of the query sent to the embedder (a 10 KB paste is cut, not refused).
MAX_EMBED_CHARS = 2000


@dataclass(frozen=True)
class SearchSettings:
    """What a search reads, from the config.

    Attributes:
        chat_model: ``ollama.model``: whose enrichments give ``state``, ``summary``, ``pitfalls``.
        embed_model: ``search.embed_model``; None turns semantic ranking off.
        input_version: Version of the embedded text; None = the newest stored for ``embed_model``.
        embed_budget_s: Seconds the query embedding may take.
    """

    chat_model: str
    embed_model: str | None = None
    input_version: int | None = None
    embed_budget_s: float = EMBED_BUDGET_S


@dataclass(frozen=True)
class Hit:
    """One ranked span. ``path`` is POSIX, relative to ``repo``; lines are
    1-based inclusive; ``state`` is enriched|pending|failed; ``score`` is the
    fused RRF score (hybrid), -BM25 (lexical) or the cosine (semantic), higher
    is better; ``lexical_rank``/``semantic_rank`` are 1-based positions in each
    list (None: not in it); ``summary``/``pitfalls`` come from the enrichment
    (None while there is none)."""

    repo: str
    path: str
    start_line: int
    end_line: int
    kind: str
    name: str
    language: str
    span_hash: str
    state: str
    fresh: bool
    score: float
    lexical_rank: int | None
    semantic_rank: int | None
    summary: str | None
    pitfalls: list[str] | None


@dataclass(frozen=True)
class SearchResult:
    """The answer: ``mode`` used, ``degraded`` (None, or why semantic ranking was not used), hits best first;
    ``indexed`` False when there was no store to search; ``by_meaning_only`` True when
    semantic ranking gave hits and none of them holds a word of the query (neither is
    part of the JSON: plain output says them)."""

    query: str
    mode: str
    degraded: str | None
    hits: list[Hit] = field(default_factory=list)
    indexed: bool = True
    by_meaning_only: bool = False

    def to_json(self) -> dict[str, Any]:
        """The ``search --json`` object."""
        return {"query": self.query, "mode": self.mode, "degraded": self.degraded,
                "hits": [asdict(h) for h in self.hits]}


def validate(mode: str, limit: int, filt: SpanFilter) -> None:
    """Raise QueryError naming the bad value of mode, limit, language or kind."""
    if mode not in MODES:
        raise QueryError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be between 1 and {MAX_LIMIT}, not {limit!r}")
    if filt.language is not None and filt.language not in LANGUAGES:
        raise QueryError(f"unknown language {filt.language!r}; known: {', '.join(LANGUAGES)}")
    if filt.kind is not None and filt.kind not in KINDS:
        raise QueryError(f"unknown kind {filt.kind!r}; known: {', '.join(KINDS)}")
    for name, value in (("path", filt.path_glob), ("repo", filt.repo)):
        if value is not None and not _is_unicode(value):
            raise QueryError(f"the {name} filter is not valid UTF-8")


def _is_unicode(text: str) -> bool:
    """False for a string holding undecodable bytes (surrogate escapes of a non-UTF-8 argument)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def search(conn: sqlite3.Connection, query: str, settings: SearchSettings, *,
           embed_query: EmbedQuery | None = None, mode: str = "hybrid", limit: int = DEFAULT_LIMIT,
           filters: SpanFilter = SpanFilter()) -> SearchResult:
    """Rank the spans of the store for ``query``.

    Args:
        conn: A connection to a migrated store (read-only is enough; see store.reader).
        query: Any user text (see search.query for how it is read).
        settings: Models and budget (:class:`SearchSettings`).
        embed_query: ``text -> vector`` with the same model as the stored
            vectors (e.g. Ollama ``POST /api/embed``); may raise. None: lexical only.
        mode: ``hybrid`` (RRF of both), ``lexical`` or ``semantic``.
        limit: Hits wanted, 1..:data:`MAX_LIMIT`.
        filters: Repo, path glob, language, kind.

    Raises:
        QueryError: empty or non-UTF-8 query, bad mode, limit, language or kind.
        StoreUnusable: the store has no search index (an older schema, not migrated).
        sqlite3.Error: the store cannot be read.
    """
    validate(mode, limit, filters)
    parsed = parse_query(query)
    if not fts.has_index(conn):
        raise StoreUnusable(reader.database_file(conn), "the store predates search",
                            "open it once with llmc-rag serve or enrich to migrate it")
    depth = min(max(limit * 3, 50), 300)
    started, degraded = (None, None) if mode == "lexical" else _start_semantic(conn, query, settings, embed_query)
    lexical = _lexical(conn, parsed, filters, depth) if mode != "semantic" else []
    semantic_ids: list[tuple[int, float]] = []
    if started is not None:
        try:
            semantic_ids = _semantic(conn, settings, *started, filters, depth)
        except SemanticUnavailable as exc:
            degraded = str(exc)
    if degraded is not None and mode == "semantic":
        lexical = _lexical(conn, parsed, filters, depth)
    used = "lexical" if degraded is not None else mode
    ranks = (fusion.rank_of([i for i, _ in lexical]), fusion.rank_of([i for i, _ in semantic_ids]))
    ordered = _combine(used, lexical, semantic_ids)
    # A span the query names goes first from anywhere among the candidates, not only
    # from the top limit * 3: a large class ranks below dozens of its own methods.
    names = searchview.span_names(conn, [i for i, _ in ordered])
    ordered = fusion.named_first(ordered, lambda item: parsed.names(names.get(item[0], "")))
    found = _hits(conn, ordered, ranks, settings.chat_model, limit)
    hits = fusion.narrowest_first([hit for _, hit in found], lambda h: ((h.repo, h.path), h.start_line, h.end_line),
                                  lambda h: parsed.names(h.name))
    return SearchResult(query, used, degraded, hits, by_meaning_only=_by_meaning_only(conn, used, parsed, found))


def _by_meaning_only(conn: sqlite3.Connection, mode: str, parsed: ParsedQuery, found: list[tuple[int, Hit]]) -> bool:
    """Whether semantic ranking gave ``found`` (``(span_id, hit)``) and no hit holds a word of the query:
    in hybrid mode none has a lexical rank; in semantic mode none matches the lexical terms."""
    if mode == "lexical" or not found:
        return False
    if mode == "hybrid":
        return all(hit.lexical_rank is None for _, hit in found)
    return not lexical.holding(conn, parsed, [span_id for span_id, _ in found])


def _start_semantic(conn: sqlite3.Connection, query: str, settings: SearchSettings,
                    embed_query: EmbedQuery | None) -> tuple[tuple[int, PendingEmbedding] | None, str | None]:
    """``((input version, pending query embedding), None)``, or ``(None, why not)``."""
    try:
        version = _input_version(conn, settings)
        if embed_query is None:
            raise SemanticUnavailable("no query embedder is available")
    except SemanticUnavailable as exc:
        return None, str(exc)
    text = query_text(query[:MAX_EMBED_CHARS])  # read as the spans' embedded text is (enrich/embed_text.py)
    return (version, PendingEmbedding(embed_query, text, settings.embed_budget_s)), None


def _input_version(conn: sqlite3.Connection, settings: SearchSettings) -> int:
    """The input version to rank, or SemanticUnavailable when there is nothing to rank."""
    model = settings.embed_model
    if model is None:
        raise SemanticUnavailable("semantic search is off (search.embed_model is null)")
    version = settings.input_version
    if version is None:
        version = vectors.latest_input_version(conn, model)
    if version is None or not vectors.has_vectors(conn, model, version):
        raise SemanticUnavailable(f"no embeddings of {model} are computed yet")
    return version


def _lexical(conn: sqlite3.Connection, parsed: ParsedQuery, filt: SpanFilter, depth: int) -> list[tuple[int, float]]:
    return lexical.ranked(conn, parsed, filt, depth)


def _semantic(conn: sqlite3.Connection, settings: SearchSettings, version: int, pending: PendingEmbedding,
              filt: SpanFilter, depth: int) -> list[tuple[int, float]]:
    model = settings.embed_model
    if model is None:  # _start_semantic said so already; nothing gets here without a model
        raise SemanticUnavailable("semantic search is off (search.embed_model is null)")
    index = semantic.vector_index(conn, model, version)  # loads while the embedder works
    vector = semantic.query_vector(pending.result(), index.dim, model)
    return semantic.ranked(conn, index, vector, filt, depth)


def _combine(mode: str, lexical: list[tuple[int, float]], semantic_ids: list[tuple[int, float]]) -> list[tuple[int, float]]:
    if mode == "lexical":
        return lexical
    if mode == "semantic":
        return semantic_ids
    return fusion.rrf([i for i, _ in lexical], [i for i, _ in semantic_ids])


def _hits(conn: sqlite3.Connection, ordered: list[tuple[int, float]], ranks: tuple[dict[int, int], dict[int, int]],
          chat_model: str, limit: int) -> list[tuple[int, Hit]]:
    """The first ``limit`` of ``ordered`` whose span and file still exist, as ``(span_id, hit)``."""
    hits: list[tuple[int, Hit]] = []
    for start in range(0, len(ordered), limit * 2):
        batch = ordered[start:start + limit * 2]
        details = searchview.span_details(conn, [i for i, _ in batch], chat_model)
        for span_id, score in batch:
            row = details.get(span_id)
            fresh = _freshness(row) if row is not None else None
            if row is not None and fresh is not None:
                hits.append((span_id, _hit(row, fresh, score, ranks[0].get(span_id), ranks[1].get(span_id))))
                if len(hits) == limit:
                    return hits
    return hits


def _freshness(row: sqlite3.Row) -> bool | None:
    """:func:`~llmc_rag_service.store.views.file_freshness` of a hit's file."""
    return file_freshness(Path(row["repo"]) / row["path"], row["size"], row["mtime_ns"])


def _hit(row: sqlite3.Row, fresh: bool, score: float, lexical_rank: int | None, semantic_rank: int | None) -> Hit:
    pitfalls = json.loads(row["pitfalls"]) if row["pitfalls"] is not None else None
    return Hit(repo=row["repo"], path=row["path"], start_line=row["start_line"], end_line=row["end_line"],
               kind=row["kind"], name=row["name"], language=row["language"], span_hash=row["span_hash"],
               state=searchview.state_of(row["summary"], row["job_state"]), fresh=fresh,
               score=round(float(score), 6), lexical_rank=lexical_rank, semantic_rank=semantic_rank,
               summary=row["summary"], pitfalls=pitfalls)
