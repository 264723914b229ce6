"""Keys and values as they travel to and from the team database.

Enrichments are keyed exactly like the local table, ``(span_hash, model,
prompt_version)``, so a team row can be stored locally as is. Embeddings have
the same shape of key, ``(hash, embed_model, input_version)``, but the hash
is that of the exact text embedded (see :class:`EmbeddingKey`): the vector is
then stored locally under the span that made that text. Values are an
enrichment's fields as JSON, and vectors as float32 little-endian bytes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any, NamedTuple

from llmc_rag_service.models import Enrichment

_HASH = re.compile(r"^[0-9a-f]{64}$")
#: Largest embedding dimension accepted from the team database.
MAX_DIM = 16384
#: Rows that must share a dimension before it is taken as the model's (see :func:`usable_vectors`).
DIM_QUORUM = 2


class EnrichmentKey(NamedTuple):
    """``span_hash`` (64 hex, ``models.span_hash_of``), Ollama ``model``, ``prompt_version`` (``models.PROMPT_VERSION``)."""

    span_hash: str
    model: str
    prompt_version: int


class EmbeddingKey(NamedTuple):
    """``span_hash``, Ollama ``embed_model``, ``input_version`` (version of the text sent to ``/api/embed``).

    In the team database ``span_hash`` is the hash of the exact text embedded
    (``enrich.embed_text.input_hash``), not of the span: a span's text gains
    its enrichment's summary once that lands, and is capped to the model's
    context, so the span alone does not say which vector it has."""

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
    """None if ``vector`` is little-endian float32 bytes of ``dim`` finite
    values (0 < dim <= :data:`MAX_DIM`), else why not (one line)."""
    if not isinstance(vector, (bytes, bytearray, memoryview)):
        return f"vector is {type(vector).__name__}, not bytes"
    if not isinstance(dim, int) or isinstance(dim, bool) or not 0 < dim <= MAX_DIM:
        return f"dim {dim!r} out of range"
    if len(vector) != 4 * dim:
        return f"vector of {len(vector)} bytes for dim {dim}"
    # Imported here: config imports this package, and numpy would add a sixth of a second to every command.
    import numpy as np

    if not np.isfinite(np.frombuffer(vector, dtype="<f4")).all():
        return "vector has NaN or infinite values"
    return None


def usable_vectors(rows: Iterable[tuple[str, str, int, Any, Any, str]], dim: int | None,
                   ) -> tuple[dict[EmbeddingKey, bytes], list[tuple[str, str, str]]]:
    """Sort team rows ``(hash, embed_model, input_version, vector, dim, producer)``
    into ``(found, rejected)``: ``found`` maps keys to vectors of ``dim``
    finite float32 values; ``rejected`` lists ``(hash, producer, reason)``.

    ``dim`` is the model's dimension as the caller knows it (its stored
    vectors). None (it has none yet): the dimension at least
    :data:`DIM_QUORUM` sound rows share and more rows than any other; with
    too few rows, or a tie, nothing is found and nothing rejected (no row is
    trusted to set the dimension alone).
    """
    sound, rejected = [], []
    for span_hash, model, version, vector, size, producer in rows:
        problem = vector_problem(vector, size)
        if problem:
            rejected.append((span_hash, producer, problem))
        else:
            sound.append((EmbeddingKey(span_hash, model, version), bytes(vector), size, producer))
    ranked = Counter(size for _, _, size, _ in sound).most_common(2)
    if dim is None and ranked and ranked[0][1] >= DIM_QUORUM and (len(ranked) == 1 or ranked[1][1] < ranked[0][1]):
        dim = ranked[0][0]
    if dim is None:
        return {}, rejected
    found = {key: vector for key, vector, size, _ in sound if size == dim}
    rejected += [(key.span_hash, producer, f"dimension {size}, but the model's is {dim}")
                 for key, _, size, producer in sound if size != dim]
    return found, rejected


def distinct_keys(keys: Iterable[tuple[Any, ...]], kind: type[Any]) -> list[Any]:
    """Well-formed keys as ``kind``, deduplicated and sorted (the lock order of ``store.team_pg``)."""
    return sorted({kind(*k) for k in keys if well_formed(k)})
