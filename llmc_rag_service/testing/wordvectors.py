"""Real embeddings for the emulator's ``/api/embed``: WordLlama (optional extra ``[wordllama]``).

WordLlama (PyPI ``wordllama`` 0.4, MIT) is a small text embedding model: the
token embedding table of a large language model, distilled and trained
contrastively on sentence pairs; a text's vector is the average of its
tokens' vectors. Its weights ship inside the wheel
(``wordllama/weights/l2_supercat_256.safetensors``, 256 dimensions) with its
tokenizer, so it runs offline, on a CPU, in about a millisecond per text.
It is not nomic-embed-text, but it is a real learned model (paraphrases and
synonyms land near each other), which the hashed bag of words of
:mod:`~llmc_rag_service.testing.vectors` is not: benchmarks use it to measure
what semantic search adds with a real model (``bench/search_quality.py``).

Loading: ``WordLlama.load()`` looks for its bundled tokenizer in a folder
named ``tokenizer`` while the wheel has it in ``tokenizers``, then tries to
download it; passing the package's own folder as ``cache_dir`` (which the
loader does search under ``tokenizers``) finds both files, and
``disable_download`` makes any miss an error instead of a network request.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any


#: Dimension of the shipped weights.
WORDLLAMA_DIM = 256
#: The name ``python -m llmc_rag_service.testing --embedder wordllama`` installs by default.
WORDLLAMA_MODEL = "wordllama-256"

_lock = threading.Lock()
_model: Any = None


class WordLlamaMissing(RuntimeError):
    """The ``wordllama`` package is not installed (``pip install 'llmc-rag-service[wordllama]'``)."""


def _load() -> Any:
    """The model, loaded once per process (about 0.5 s, 130 MB of float32 weights)."""
    global _model
    with _lock:
        if _model is None:
            try:
                import wordllama
            except ImportError:
                raise WordLlamaMissing("the wordllama embedder needs the [wordllama] extra: "
                                       "pip install 'llmc-rag-service[wordllama]'") from None
            package = Path(wordllama.__file__).parent
            _model = wordllama.WordLlama.load(dim=WORDLLAMA_DIM, cache_dir=package, disable_download=True)
        return _model


def wordllama_embeddings(texts: list[str], dim: int = WORDLLAMA_DIM) -> list[list[float]]:
    """One L2-normalised vector of ``dim`` floats per text.

    ``dim`` below :data:`WORDLLAMA_DIM` keeps the leading dimensions and
    re-normalises (the model is trained Matryoshka-style, so a prefix is a
    valid smaller embedding). A text without any token maps to a fixed unit
    vector, so no vector is all zeros (Ollama never answers one).

    Raises:
        WordLlamaMissing: the extra is not installed.
        ValueError: ``dim`` is not in 1..:data:`WORDLLAMA_DIM`.
    """
    if not 1 <= dim <= WORDLLAMA_DIM:
        raise ValueError(f"wordllama embeds in 1..{WORDLLAMA_DIM} dimensions, not {dim}")
    if not texts:
        return []
    # Imported here: the emulator's hashed vectors need only the standard library, so
    # `python -m llmc_rag_service.testing` runs with structlog alone (as in tests/system).
    import numpy as np

    matrix = np.asarray(_load().embed(texts, norm=False), dtype=np.float32)[:, :dim]
    matrix = np.nan_to_num(matrix)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    empty = norms[:, 0] == 0
    matrix[empty, 0], norms[empty] = 1.0, 1.0
    result: list[list[float]] = (matrix / norms).tolist()
    return result
