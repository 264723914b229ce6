"""Any user text -> a valid FTS5 query.

FTS5 has its own query language (``AND``/``OR``/``NOT``/``NEAR``, ``-``,
``(``, ``:``, ``*``, ``^``, quotes), in which most pasted text is a syntax
error. Here the text is read as words instead, and every word becomes a
double-quoted FTS5 string holding only letters and digits, so no input can
produce an invalid expression:

- A word is a run of letters, digits and ``_``; it becomes the phrase of its
  identifier parts (``parseJsonBody`` and ``parse_json_body`` -> ``"parse json
  body"``), which matches both spellings in the index (see ``store/fts.py``),
  or, failing that, its parts near each other in any order (``NEAR``), so
  ``parseQueryParams`` also finds code about "query params" that "parse" them.
- Text in double quotes is one phrase; a word directly followed by ``*`` is a
  prefix (at least :data:`MIN_PREFIX` characters); every other character is a
  separator, and ``AND``/``OR``/``NOT``/``NEAR`` are ordinary words.
- Common English words are dropped unless nothing else is left; at most
  :data:`MAX_TERMS` terms are kept (a 10 KB paste stays a fast query).
- The terms are joined with ``OR`` and ranked by BM25, so a span matching more
  (and rarer) terms ranks first, and a natural-language question still finds
  spans that share only some of its words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmc_rag_service.store.fts import identifier_parts

#: Terms kept from one query.
MAX_TERMS = 32
#: Tokens an identifier's parts may lie apart and still match it (FTS5 ``NEAR``).
NEAR_DISTANCE = 8
#: Shortest prefix honoured for ``word*`` (shorter ones match too much to be useful).
MIN_PREFIX = 3

_TOKEN = re.compile(r'"([^"]*)"|(\w+)(\*?)')

#: Dropped from queries: common English, and words that are in most spans of
#: code (keywords), which add nothing to BM25 but cost a pass over most rows.
STOPWORDS = frozenset("""
a an and are as at be by for from has have how i if in into is it its of on or that the their then there
these this those to was were what when where which who why will with does do did not no can could should
would may might we you your our they them he she his her any all some such than so but about also only
self cls return returns none null true false def else elif var let const
""".split())


class QueryError(ValueError):
    """The query cannot be searched for; the message says why (for the user)."""


@dataclass(frozen=True)
class Term:
    """One search term: its lower-cased words (one word, or a phrase) and whether it is a prefix."""

    words: tuple[str, ...]
    prefix: bool = False
    identifier: bool = False  # an unquoted word of several parts (camelCase, snake_case)

    @property
    def expression(self) -> str:
        """The term in FTS5 syntax: a double-quoted string of letters and digits, ``*`` for a
        prefix; an identifier also matches its parts within :data:`NEAR_DISTANCE` tokens."""
        quoted = '"' + " ".join(self.words) + '"'
        if self.prefix:
            return quoted + " *"
        if self.identifier:
            parts = " ".join(f'"{w}"' for w in self.words)
            return f"({quoted} OR NEAR({parts}, {NEAR_DISTANCE}))"
        return quoted


@dataclass(frozen=True)
class ParsedQuery:
    """A user query read as search terms.

    Attributes:
        text: The query as given.
        terms: The terms kept, in query order (never empty).
    """

    text: str
    terms: tuple[Term, ...]

    @property
    def match(self) -> str:
        """Every term OR-ed, in FTS5 syntax."""
        return " OR ".join(t.expression for t in self.terms)

    def names(self, name: str) -> bool:
        """Whether the query names the span ``name`` exactly: the identifier parts of
        its last dotted part (``Shape.area`` -> ``area``) are every word of the
        query in order (``JobQueue``, ``job queue`` and ``area`` name ``JobQueue``,
        ``JobQueue`` and ``Shape.area``), or the words of one term of several
        words (the identifier ``JobQueue`` in "where is JobQueue built"); a
        single common word inside a sentence names nothing."""
        wanted = tuple(identifier_parts(name.rsplit(".", 1)[-1]))
        if not wanted:
            return False
        every = tuple(w for t in self.terms for w in t.words)
        return wanted == every or any(len(t.words) > 1 and t.words == wanted for t in self.terms)


def parse_query(text: str) -> ParsedQuery:
    """Read ``text`` as search terms (see the module docstring).

    Raises:
        QueryError: the text is empty or blank, is not valid Unicode (e.g. an
            argument that was not UTF-8), or has no letter or digit.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise QueryError(f"the query is not valid UTF-8 (undecodable byte at position {exc.start})") from None
    if not text.strip():
        raise QueryError("the query is empty")
    found: list[tuple[Term, bool]] = []  # (term, from a quoted phrase)
    for match in _TOKEN.finditer(text):
        phrase, word, star = match.groups()
        words = identifier_parts(phrase if phrase is not None else word)
        if words:
            prefix = bool(star) and len(words[-1]) >= MIN_PREFIX
            identifier = phrase is None and len(words) > 1 and not prefix
            found.append((Term(tuple(words), prefix, identifier), phrase is not None))
    if not found:
        raise QueryError("nothing to search for: the query has no letters or digits")
    kept = [t for t, quoted in found if quoted or t.prefix or len(t.words) > 1 or t.words[0] not in STOPWORDS]
    terms = list(dict.fromkeys(kept or [t for t, _ in found]))[:MAX_TERMS]
    return ParsedQuery(text, tuple(terms))
