"""Keys and values as they travel to and from the team database.

A key is exactly the local primary key, so a team row can be stored locally as
is: enrichments by ``(span_hash, model, prompt_version)``, embeddings by
``(span_hash, embed_model, input_version)``. Values are an enrichment's
fields as JSON, and vectors as float32 little-endian bytes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

from llmc_rag_service.models import Enrichment

_HASH = re.compile(r"^[0-9a-f]{64}$")
#: Largest embedding dimension accepted from the team database.
MAX_DIM = 16384


class EnrichmentKey(NamedTuple):
    """``span_hash`` (64 hex, ``models.span_hash_of``), Ollama ``model``, ``prompt_version`` (``models.PROMPT_VERSION``)."""

    span_hash: str
    model: str
    prompt_version: int


class EmbeddingKey(NamedTuple):
    """``span_hash``, Ollama ``embed_model``, ``input_version`` (version of the text sent to ``/api/embed``)."""

    span_hash: str
    embed_model: str
    input_version: int


def well_formed(key: tuple[Any, ...]) -> bool:
    """True if ``key`` is (64 lowercase hex, non-empty model, int version): anything else is never sent."""
    return (len(key) == 3 and isinstance(key[0], str) and bool(_HASH.match(key[0]))
            and isinstance(key[1], str) and bool(key[1]) and isinstance(key[2], int) and not isinstance(key[2], bool))


def fields_json(enrichment: Enrichment) -> str:
    """The enrichment's schema fields as compact JSON (what ``llmc_enrichments.fields`` holds)."""
    return json.dumps(dataclasses.asdict(enrichment), ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def vector_problem(vector: object, dim: object) -> str | None:
    """None if ``vector`` is float32 bytes of ``dim`` values (0 < dim <= :data:`MAX_DIM`), else why not."""
    if not isinstance(vector, (bytes, bytearray, memoryview)):
        return f"vector is {type(vector).__name__}, not bytes"
    if not isinstance(dim, int) or not 0 < dim <= MAX_DIM:
        return f"dim {dim!r} out of range"
    if len(vector) != 4 * dim:
        return f"vector of {len(vector)} bytes for dim {dim}"
    return None


def distinct_keys(keys: Iterable[tuple[Any, ...]], kind: type[Any]) -> list[Any]:
    """Well-formed keys as ``kind``, deduplicated and sorted (the lock order of ``store.team_pg``)."""
    return sorted({kind(*k) for k in keys if well_formed(k)})
