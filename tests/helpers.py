"""Helpers shared by the pipeline tests: temp repos, configs, waiting with deadlines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping

import yaml

from llmc_rag_service.config import Config, load_config


def write_tree(root: Path, files: Mapping[str, str | bytes]) -> None:
    """Create ``files`` (relative path -> text or bytes) under ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def make_config(tmp_path: Path, url: str, repos: list[Path], **sections) -> Config:
    """Write a config file for ``repos`` against ``url`` and load it.

    ``sections`` override/extend top-level sections, e.g. ``queue={"max_attempts": 2}``.
    """
    data = {
        "state_dir": str(tmp_path / "state"),
        "repos": [{"path": str(r)} for r in repos],
        "ollama": {"url": url, "model": "test-model", "concurrency": 2, "timeout_s": 20, "keep_alive": "15m",
                   "options": {"temperature": 0.2, "num_ctx": 8192}},
        "watch": {"debounce_ms": 50},
        "queue": {"max_attempts": 3},
        "logging": {"level": "debug", "format": "json"},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def wait_for(condition: Callable[[], object], timeout_s: float = 15.0, what: str = "condition") -> object:
    """Poll ``condition`` until it is truthy; fail after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)
