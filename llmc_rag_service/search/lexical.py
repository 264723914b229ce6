"""Lexical ranking: FTS5 BM25 over the span index, with a cost cap.

FTS5 computes BM25 for every row that matches any term of an OR query, about
1.5 us per row: a term found in half of 100k spans costs ~90 ms while its
inverse document frequency (~0) adds nothing to the ranking. So the terms are
taken rarest first (cost = the document counts of their tokens, read from
``span_fts_vocab``) until together they reach :data:`POSTINGS_BUDGET` rows;
the rarest term is always kept, prefix terms are always kept, and terms that
no document holds are dropped (they cannot change the answer).
"""

from __future__ import annotations

import sqlite3

from llmc_rag_service.search.query import ParsedQuery, Term
from llmc_rag_service.store import fts, searchview
from llmc_rag_service.store.searchview import SpanFilter

#: Rows BM25 may visit per query, summed over the kept terms' posting lists.
POSTINGS_BUDGET = 10_000


def affordable_terms(conn: sqlite3.Connection, parsed: ParsedQuery, budget: int = POSTINGS_BUDGET) -> list[Term]:
    """The terms worth ranking by, in query order (see the module docstring); may be empty."""
    tokens = fts.index_tokens([" ".join(t.words) for t in parsed.terms])
    frequency: dict[str, int] = {}
    costed: list[tuple[int, int]] = []  # (cost, position)
    for position, (term, term_tokens) in enumerate(zip(parsed.terms, tokens)):
        if term.prefix:
            costed.append((0, position))
            continue
        counts = [frequency.setdefault(t, fts.document_frequency(conn, t)) for t in term_tokens]
        if counts and min(counts) > 0:
            costed.append((sum(counts), position))
    kept: list[int] = []
    total = 0
    for cost, position in sorted(costed):
        if kept and total + cost > budget:
            break
        kept.append(position)
        total += cost
    return [parsed.terms[p] for p in sorted(kept)]


def ranked(conn: sqlite3.Connection, parsed: ParsedQuery, filt: SpanFilter, depth: int) -> list[tuple[int, float]]:
    """``(span_id, -BM25)`` best first, at most ``depth``, of spans passing ``filt``."""
    terms = affordable_terms(conn, parsed)
    if not terms:
        return []
    return fts.ranked(conn, " OR ".join(t.expression for t in terms), searchview.filter_sql(filt), depth)


def holding(conn: sqlite3.Connection, parsed: ParsedQuery, span_ids: list[int]) -> set[int]:
    """Which of ``span_ids`` hold a word of the query (the terms :func:`ranked` ranks by)."""
    terms = affordable_terms(conn, parsed)
    if not terms or not span_ids:
        return set()
    return fts.matching_ids(conn, " OR ".join(t.expression for t in terms), span_ids)
