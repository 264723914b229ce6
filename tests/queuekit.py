"""A real SQLite store and files of spans in it, for the queue tests."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from llmc_rag_service.models import Span
from llmc_rag_service.store.db import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A fresh store file under ``tmp_path/state``, closed after the test."""
    s = Store(tmp_path / "state" / "llmc-rag.db")
    yield s
    s.close()


def add_file(store: Store, path: str, texts: Sequence[str], repo: str = "/repo") -> list[str]:
    """Store ``path`` with one one-line function span per text; returns the span hashes in order."""
    spans = [Span("function", f"f{i}", i + 1, i + 1, t, "python") for i, t in enumerate(texts)]
    rid = store.repo_id(repo)
    with store.write() as tx:
        store.put_file(tx, rid, path, size=1, mtime_ns=1, content_hash=path, language="python",
                       skipped=None, spans=spans)
    return [s.span_hash for s in spans]
