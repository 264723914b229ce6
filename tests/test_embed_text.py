"""The embedded text of a span (recipe, cap) and the conservative token count."""

from __future__ import annotations

import inspect
import json

import pytest

from llmc_rag_service.enrich.embed_text import (EMBED_CONTEXT_TOKENS, RESERVED_TOKENS, embed_text, estimate_tokens,
                                                query_text)
from llmc_rag_service.testing.wire import estimate_tokens as emulator_tokens

CODE = "def parse_json_body(request):\n    \"\"\"Parse the body.\"\"\"\n    return json.loads(request.body)\n"


WORDS = "def parse json body request\nparse the body\nreturn json loads request body"


def test_the_name_then_the_summary_then_the_code_as_words():
    """A span embeds its name's words, its summary and a blank line, then its code read as words
    (identifiers split, punctuation dropped); without a name or summary those lines are left out."""
    assert embed_text(CODE, "Parses a request body as JSON.", name="Handler.parseJsonBody") == (
        "handler parse json body\nParses a request body as JSON.\n\n" + WORDS)
    assert embed_text(CODE) == embed_text(CODE, "  ") == WORDS
    assert embed_text(CODE, name="parse_json_body").startswith("parse json body\ndef parse json body request\n")


def test_a_query_is_read_as_words_like_the_code():
    """The query's identifiers are split as the code's are; a query with no word is sent as it is."""
    assert query_text("parseJsonBody from the request!") == "parse json body from the request"
    assert query_text("?!") == "?!"


@pytest.mark.parametrize("text", [
    inspect.getsource(json),                        # real code
    "x" * 20_000,                                   # one endless identifier
    "é€😀" * 3000,                                  # multi-byte characters
    " " * 30_000 + "end",                           # indentation only
    "a, b = (c[d], {e: f})\n" * 2000,               # punctuation-heavy
])
def test_a_long_span_is_capped_to_the_context_by_a_high_count(text):
    """Whatever the text, the result's estimate fits the budget, and the estimate is never below the emulator's count."""
    capped = embed_text(text, "Summary.")
    assert estimate_tokens(capped) <= EMBED_CONTEXT_TOKENS - RESERVED_TOKENS
    assert estimate_tokens(text) >= emulator_tokens(text) and estimate_tokens(capped) >= emulator_tokens(capped)
    assert capped.startswith("Summary.\n\n") and len(capped) > len("Summary.\n\n")


def test_code_is_cut_at_a_line_end_keeping_its_head():
    """An over-long span keeps its first lines (signature, docstring) whole."""
    code = "def handler(event):\n" + "".join(f"    step_{i}(event)\n" for i in range(2000))
    capped = embed_text(code, context_tokens=200)
    assert capped.startswith("def handler event\nstep 0 event\n")
    whole = "def handler event\n" + "".join(f"step {i} event\n" for i in range(2000))
    assert whole.startswith(capped) and capped.endswith("event")


def test_a_smaller_context_gives_a_shorter_text():
    """The cap follows the context the model takes (halved after a 400)."""
    code = "value = compute(value)\n" * 1000
    assert len(embed_text(code, context_tokens=256)) < len(embed_text(code, context_tokens=512)) < len(code)


def test_punctuation_and_rare_characters_count_high():
    """One token per punctuation mark and per UTF-8 byte of a rare character; words by thirds."""
    assert estimate_tokens("parse") == 2 and estimate_tokens("a.b(c)") == 6
    assert estimate_tokens("é") == 2 and estimate_tokens("😀") == 4 and estimate_tokens("") == 0
