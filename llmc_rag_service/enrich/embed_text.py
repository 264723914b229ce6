"""What text is embedded for a span and for a query, and how its tokens are counted.

The recipe (version :data:`INPUT_VERSION`, part of every embedding's key, so
a change of recipe re-embeds everything once and never mixes vectors):

* the span's name as words (``JobQueue.claim`` -> ``job queue claim``,
  ``parseJsonBody`` -> ``parse json body``), on a line of its own;
* the enrichment's summary, when the span has one (what the code does, in
  words a query uses), then a blank line;
* the span's code read as words: each line's identifiers split into their
  parts and lower-cased, punctuation dropped (``return json.loads(body)`` ->
  ``return json loads body``).

Why (bench/search_quality.py, tuned on one half of its queries, reported on
the other): queries are natural language, and an embedding model compares
words. A name is the densest statement of what code does, and it was
diluted by the body; identifiers such as ``readConfigFile`` are words the
model only sees once split, and syntax tokens carry little of what a query
asks. Version 1 (summary + raw code) put hybrid search below lexical-only
with a real model; version 2 puts it above.

The query is read the same way (:func:`query_text`), so both sides of the
cosine are made of the same kind of words.

Only what the span's content hash determines goes in (its code, its name
and the enrichment of that hash), never its path or position: identical
code in two places shares one vector (the name is then that of the first of
its spans by name: a method's name includes its class, which its code does
not; with the class the tune half's semantic MRR@10 was 0.275, without 0.240). An enrichment
landing changes the text, so the span is embedded again (see ``store/embed_jobs.py``).

The text is capped to the embedding model's context, counted conservatively
(:func:`estimate_tokens`), because Ollama answers 400 to an over-long input
rather than truncating it (recent versions ignore ``truncate``). The code is
cut at a line end, keeping its head (signature and docstring); the name and
summary are never cut (the answer schema bounds the summary).
"""

from __future__ import annotations

import hashlib
import math
import re

from llmc_rag_service.store.fts import identifier_parts

#: Version of the recipe above (1: summary + raw code).
INPUT_VERSION = 2
#: Context of the embedding model assumed until a 400 says it is smaller, in
#: tokens (nomic-embed-text's trained context; Ollama's default num_ctx).
EMBED_CONTEXT_TOKENS = 2048
#: Tokens kept free in the context (special tokens such as [CLS]/[SEP], a margin).
RESERVED_TOKENS = 16
#: The smallest context worth trying before an input is given up as too long.
MIN_CONTEXT_TOKENS = 64

_PIECES = re.compile(r"[A-Za-z0-9]+|\s+|.", re.DOTALL)
# The pieces of _PIECES by kind: runs of ASCII letters and digits, runs of whitespace, and what is neither.
_WORDS, _SPACES, _NOT_OTHER = re.compile(r"[A-Za-z0-9]+"), re.compile(r"\s+"), re.compile(r"[A-Za-z0-9\s]+")


def estimate_tokens(text: str) -> int:
    """An upper estimate of ``text``'s tokens for any common embedding tokenizer.

    A run of ASCII letters and digits counts one token per 3 characters
    (WordPiece and BPE pieces are longer), whitespace one per 4 characters
    (BPE merges indentation; WordPiece drops it), every other character its
    UTF-8 length in bytes (punctuation is a token of its own; a rare
    character may be one token per byte).
    """
    # Three passes in C, not a Python step per piece: this runs on every span's text, several times.
    words = sum((len(run) + 2) // 3 for run in _WORDS.findall(text))
    spaces = sum((len(run) + 3) // 4 for run in _SPACES.findall(text))
    return words + spaces + len(_NOT_OTHER.sub("", text).encode("utf-8"))


def _head(text: str, budget: int) -> str:
    """The longest head of ``text`` within ``budget`` tokens, cut at a line end when one fits."""
    kept: list[str] = []
    used = 0
    for line in text.split("\n"):
        cost = estimate_tokens(line) + 1
        if used + cost > budget:
            if not kept:  # one long first line: cut inside it
                kept.append(_chars_within(line, budget))
            break
        kept.append(line)
        used += cost
    return "\n".join(kept)


def _chars_within(line: str, budget: int) -> str:
    """The longest head of one line within ``budget`` tokens (cutting inside a long word)."""
    used, end = 0, 0
    for match in _PIECES.finditer(line):
        piece = match.group()
        cost = estimate_tokens(piece)
        if used + cost > budget:
            # A run of letters, digits or spaces can be cut: 3 (4) characters per token left.
            per_token = 3 if piece[0].isascii() and piece[0].isalnum() else 4 if piece[0].isspace() else 0
            return line[:end + min(len(piece), (budget - used) * per_token)]
        used, end = used + cost, match.end()
    return line[:end]


def as_words(text: str) -> str:
    """``text`` read as words, line by line: identifiers split into lower-cased
    parts, everything else dropped; lines with no word are left out."""
    lines = (" ".join(identifier_parts(line)) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def query_text(query: str) -> str:
    """The text embedded for a search query: its words, as a span's code is read
    (the query as given when it has no word, so the embedder still gets it)."""
    return " ".join(identifier_parts(query)) or query


def embed_text(code: str, summary: str | None = None, context_tokens: int = EMBED_CONTEXT_TOKENS,
               name: str | None = None) -> str:
    """The text embedded for a span (see the module docstring).

    Args:
        code: The span's text.
        summary: Its enrichment's summary, or None while it has none.
        context_tokens: The embedding model's context in tokens.
        name: The span's name (``Class.method``), or None.
    """
    budget = max(1, context_tokens - RESERVED_TOKENS)
    title = " ".join(identifier_parts(name)) if name else ""
    head = f"{title}\n" if title else ""
    head += f"{summary.strip()}\n\n" if summary and summary.strip() else ""
    code = as_words(code)
    head_cost = estimate_tokens(head)
    if head_cost >= budget:  # only with a tiny context: the summary alone, cut
        return _head(head.strip(), budget)
    if head_cost + estimate_tokens(code) <= budget:
        return head + code
    return head + _head(code, budget - head_cost)


def input_hash(text: str) -> str:
    """The sha256 (64 lowercase hex) of ``text`` as sent to ``/api/embed``
    (UTF-8): the team cache's key for its vector, which depends on that
    text alone (and the model), not on which span made it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
