"""Typed data shapes shared across modules.

Each shape is a small frozen dataclass; every field's meaning and unit is
documented here so the modules that pass them around do not have to repeat it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

#: Version of the prompt and answer schema. Part of the enrichment key, so a
#: change to the prompt re-enriches everything once and never mixes answers.
PROMPT_VERSION = 2  # 2: every answer field bounded (maxLength, maxItems) to fit the answer cap


def span_hash_of(language: str, text: str) -> str:
    """Content hash of a span: ``sha256(language + "\\n" + text)`` as 64 hex chars.

    The path and the name are deliberately not part of it, so identical or
    moved code maps to the same hash and is never enriched twice.
    """
    return hashlib.sha256(f"{language}\n{text}".encode("utf-8")).hexdigest()


#: Budget units of one non-ASCII UTF-8 byte, and of one ASCII digit. An ASCII
#: character is one unit and the prompt budget counts about 3 units per token; a
#: byte-level tokenizer (BPE with byte fallback, as Ollama's models use) may spend a
#: whole token on each byte of a CJK character or an emoji, and Qwen2's, Llama 2's
#: and Mistral's pre-tokenizers make every digit a token of its own (a table of
#: numbers is about one token per 1.1 characters, not 3), so each is counted as a
#: token's worth.
NON_ASCII_BYTE_UNITS = 3


def budget_units(text: str) -> int:
    """Size of ``text`` for the prompt budget: 1 per ASCII character but digits,
    :data:`NON_ASCII_BYTE_UNITS` per ASCII digit and per UTF-8 byte of any other character.

    Span cutting (``index/spans.py``) and the budget (``enrich/prompt.py``
    ``span_char_budget``) share this measure, so a span of CJK or emoji text, or
    of numbers, fits ``num_ctx`` as surely as one of ASCII code.
    """
    digits = sum(map(text.count, "0123456789"))  # ten C-speed scans: faster than a regex or translate
    if text.isascii():
        return len(text) + (NON_ASCII_BYTE_UNITS - 1) * digits
    data = text.encode("utf-8", "surrogatepass")
    non_ascii = len(data) - len(data.decode("ascii", "ignore"))
    return len(data) - non_ascii + NON_ASCII_BYTE_UNITS * non_ascii + (NON_ASCII_BYTE_UNITS - 1) * digits


@dataclass(frozen=True)
class Span:
    """One unit of enrichment work cut from a source file.

    Attributes:
        kind: ``function``, ``method``, ``class``, ``block`` (module-level code
            between definitions), ``window`` (line window of a non-parsed file)
            or ``error`` (a region the parser could not read; kept as text).
        name: Human name, e.g. ``f``, ``Cls.method``, ``Cls``, ``lines 10-42``;
            a split part gets a `` (part 2/3)`` suffix.
        start_line: First line, 1-based, inclusive.
        end_line: Last line, 1-based, inclusive.
        text: The span's source, normalised: no BOM, ``\\n`` line endings.
        language: Language id (``python``, ``javascript``, ..., or ``text``).
        span_hash: :func:`span_hash_of` of ``language`` and ``text``.
    """

    kind: str
    name: str
    start_line: int
    end_line: int
    text: str
    language: str
    span_hash: str = field(default="")

    def __post_init__(self) -> None:
        if not self.span_hash:
            object.__setattr__(self, "span_hash", span_hash_of(self.language, self.text))


@dataclass(frozen=True)
class Enrichment:
    """A validated model answer for one span (the fields of the JSON schema).

    Attributes:
        summary: One or two sentences, never empty.
        inputs: Parameters / data read, one string each.
        outputs: Return values / data produced.
        side_effects: I/O, mutation, global state touched.
        pitfalls: Edge cases and misuse to watch for.
        usage: A short usage example (code or prose).
    """

    summary: str
    inputs: list[str]
    outputs: list[str]
    side_effects: list[str]
    pitfalls: list[str]
    usage: str


@dataclass(frozen=True)
class Job:
    """One enrichment job as claimed from the queue.

    Attributes:
        id: Row id in ``jobs``.
        span_hash: The span content hash the job enriches.
        model: Ollama model name the job is for.
        attempts: Attempts already made before this claim (0 on the first).
        priority: Lower runs first (0 = a just-saved file, 10 = backfill).
    """

    id: int
    span_hash: str
    model: str
    attempts: int
    priority: int
