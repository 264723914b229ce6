"""The deterministic hashed embedding shipped for tests, benchmarks and the emulator's /api/embed."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from llmc_rag_service.testing.vectors import embedding_words, hashed_embedding


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def test_same_text_same_unit_vector_in_another_process():
    """The vector depends on the text only: a fresh interpreter computes the same one."""
    here = hashed_embedding("parse the JSON body", 32)
    code = "from llmc_rag_service.testing.vectors import hashed_embedding as h; print(h('parse the JSON body', 32))"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert repr(here) == there.strip()
    assert math.isclose(sum(v * v for v in here), 1.0)


def test_shared_words_are_close_and_unrelated_texts_are_not():
    """Identifier spellings of the same words are near each other; unrelated text is far."""
    query = hashed_embedding("parse json body")
    assert cosine(query, hashed_embedding("def parseJsonBody(request): ...")) > 0.7
    assert cosine(query, hashed_embedding("open a socket connection")) < 0.2
    assert cosine(hashed_embedding("decompress"), hashed_embedding("decompressor")) > 0.5


def test_words_are_split_lowered_stemmed_and_stopped():
    """Counted words: identifier parts, lower-cased, stemmed, without common words."""
    assert embedding_words("Returns the parsedHeaders of a request") == ["pars", "header", "request"]


def test_empty_text_is_a_fixed_unit_vector_and_dim_is_checked():
    """No countable word gives bucket 0; a dimension below 1 is refused."""
    assert hashed_embedding("", 4) == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="dim"):
        hashed_embedding("x", 0)
