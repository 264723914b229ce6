"""Deterministic embeddings that carry some meaning, for tests, benchmarks and the emulator's ``/api/embed``.

:func:`hashed_embedding` is a hashed bag of features: the text's identifier
parts (``parseJsonBody`` -> parse, json, body), lower-cased, common English
words dropped, crudely stemmed (``parsing``/``parsed``/``parses`` -> ``pars``),
each weighted ``1 + ln(count)``, plus the character trigrams of each distinct
word at weight :data:`TRIGRAM_WEIGHT` (so ``decompress`` is near
``decompressor`` and ``dir`` near ``directory``); each feature is hashed to one
of ``dim`` buckets with a hashed sign, and the vector L2-normalised. Texts
sharing words get a high cosine; unrelated texts are near 0. No model, no
randomness: the same text always gives the same vector, in any process.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections import Counter

_STOP = frozenset("""
a an and are as at be by for from has have if in into is it its of on or that the their then this to was were
will with not no self none true false def return class import cls
""".split())
_SUFFIXES = ("ing", "ed", "es", "s", "e")
#: Weight of a character trigram relative to a word seen once (tuned on bench/search_quality.py).
TRIGRAM_WEIGHT = 0.5


# The emulator stands alone (testing/ imports nothing of the product), so it
# has its own word splitter: runs of letters/digits, cut at camelCase humps.
_RUN = re.compile(r"[^\W_]+")
_HUMP = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z0-9]+|[A-Z0-9]+(?![a-z])|[^\W_]+")


def _parts(text: str) -> list[str]:
    return [p.lower() for run in _RUN.findall(text) for p in (_HUMP.findall(run) if run.isascii() else [run])]


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def embedding_words(text: str) -> list[str]:
    """The words :func:`hashed_embedding` counts, in order."""
    stems = (_stem(w) for w in _parts(text) if len(w) > 1 and w not in _STOP)
    return [s for s in stems if s not in _STOP]


@functools.lru_cache(maxsize=1 << 16)
def _slot(feature: str, dim: int) -> tuple[int, bool]:
    """The bucket of ``feature`` in a vector of ``dim`` and whether its sign is +.
    Cached: the same words and trigrams recur in every text, and hashing them was most of the work."""
    digest = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
    return digest % dim, bool(digest >> 63)


@functools.lru_cache(maxsize=1 << 14)
def _trigram_slots(word: str, dim: int) -> tuple[tuple[int, bool], ...]:
    """The :func:`_slot` of each character trigram of ``#word#``, in order."""
    padded = f"#{word}#"
    return tuple(_slot("3:" + padded[start:start + 3], dim) for start in range(len(padded) - 2))


def _add(vector: list[float], bucket: int, positive: bool, weight: float) -> None:
    vector[bucket] += weight if positive else -weight


def hashed_embedding(text: str, dim: int = 768) -> list[float]:
    """A unit vector of ``dim`` floats for ``text`` (see the module docstring).

    A text with no countable word maps to a fixed unit vector (bucket 0), so
    the result is never all zeros. Raises ValueError if ``dim`` < 1.
    """
    if dim < 1:
        raise ValueError(f"dim must be at least 1, not {dim}")
    vector = [0.0] * dim
    for word, count in Counter(embedding_words(text)).items():
        _add(vector, *_slot(word, dim), 1.0 + math.log(count))
        for bucket, positive in _trigram_slots(word, dim):
            _add(vector, bucket, positive, TRIGRAM_WEIGHT)
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0:
        vector[0] = norm = 1.0
    return [v / norm for v in vector]
