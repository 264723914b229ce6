"""Combining rankings: reciprocal rank fusion, exact names first, and narrowest-first ordering.

Reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009): a span's
fused score is the sum over the lists it appears in of ``1 / (k + rank)``,
rank 1-based. It needs no calibration between BM25 and cosine scores; the
fused score reflects positions, not similarity, so there is no cut-off on it.

``k`` = :data:`RRF_K` = 10, not the paper's 60: the paper fused dozens of
TREC runs 1000 deep; here two lists of about 50 are fused and the answer is
read from the top 10, where a smaller ``k`` lets a span ranked first by one
list outweigh one ranked middling by both. Chosen on the tune half of
bench/search_quality.py (k in 10, 20, 60; MRR@10 +0.01 to +0.02 for both
embedders), reported on the held-out half.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

RRF_K = 10

T = TypeVar("T")


def rank_of(ids: Sequence[int]) -> dict[int, int]:
    """1-based rank of each id in a best-first list."""
    return {span_id: rank for rank, span_id in enumerate(ids, start=1)}


def rrf(*rankings: Sequence[int], k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuse best-first id lists: ``(id, fused score)`` best first; ties go to
    the id with the better best rank in any list, then the smaller id."""
    fused: dict[int, float] = {}
    best: dict[int, int] = {}
    for ranking in rankings:
        for span_id, rank in rank_of(ranking).items():
            fused[span_id] = fused.get(span_id, 0.0) + 1.0 / (k + rank)
            best[span_id] = min(best.get(span_id, rank), rank)
    return sorted(fused.items(), key=lambda item: (-item[1], best[item[0]], item[0]))


def named_first(items: Sequence[T], named: Callable[[T], bool]) -> list[T]:
    """The items the query names exactly (``named(item)``) first, each group in its order.

    An identifier query is navigational: "JobQueue" asks for the class, and
    its methods (whose names and bodies hold the same words, in shorter
    documents BM25 prefers) or its callers come after it.
    """
    return [i for i in items if named(i)] + [i for i in items if not named(i)]


def narrowest_first(items: Sequence[T], place: Callable[[T], tuple[object, int, int]],
                    named: Callable[[T], bool] = lambda item: False) -> list[T]:
    """Move each item just above the first higher-ranked item that encloses it.

    ``place(item)`` is ``(file key, start_line, end_line)``. A method ranked
    below its class (whose span covers it) moves right above the class, so
    the precise answer is read first and never crowded out; the order is
    otherwise kept. An enclosing item for which ``named(item)`` is true (the
    query names it exactly, e.g. the class ``JobQueue`` for "JobQueue") is
    the precise answer itself: nothing moves above it.
    """
    out: list[T] = []
    for item in items:
        key, start, end = place(item)
        at = next((i for i, other in enumerate(out)
                   if _encloses(place(other), key, start, end) and not named(other)), len(out))
        out.insert(at, item)
    return out


def _encloses(outer: tuple[object, int, int], key: object, start: int, end: int) -> bool:
    okey, ostart, oend = outer
    return okey == key and ostart <= start and end <= oend and (ostart, oend) != (start, end)
