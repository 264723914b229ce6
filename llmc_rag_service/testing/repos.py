"""Temporary repositories and configs for tests, benchmarks and demos.

Shipped with the package (like the emulator) so that ``bench/`` scripts and
users' own tests can build a repo and a config pointing at an
:class:`~llmc_rag_service.testing.OllamaEmulator` without importing ``tests``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from llmc_rag_service.config import Config, load_config


def write_tree(root: Path, files: Mapping[str, str | bytes]) -> None:
    """Create ``files`` (relative path -> text or bytes) under ``root``, with parent directories."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def make_config(tmp_path: Path, url: str, repos: list[Path], **sections: Any) -> Config:
    """Write ``tmp_path/config.yaml`` for ``repos`` against the Ollama at ``url`` and load it.

    The state goes to ``tmp_path/state``; the model is ``test-model``; no
    embeddings (``search.embed_model`` null), so a test of enrichment sees chat
    traffic only: pass ``search={"embed_model": "nomic-embed-text"}`` for them.
    ``sections`` override/extend top-level sections, e.g. ``queue={"max_attempts": 2}``.

    Raises:
        ConfigError: the resulting config is invalid.
    """
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "repos": [{"path": str(r)} for r in repos],
        "ollama": {"url": url, "model": "test-model", "concurrency": 2, "timeout_s": 20, "keep_alive": "15m",
                   "options": {"temperature": 0.2, "num_ctx": 8192}},
        "watch": {"debounce_ms": 50},
        "queue": {"max_attempts": 3},
        "search": {"embed_model": None},
        "logging": {"level": "debug", "format": "json"},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    if "hosts" in data["ollama"]:  # hosts replace the single-host url/concurrency
        data["ollama"].pop("url", None)
        data["ollama"].pop("concurrency", None)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)
