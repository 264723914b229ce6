"""A real store built from a real temp repo (scanner, queue, store methods), for the search tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable, Mapping

from llmc_rag_service.index.scanner import Scanner
from llmc_rag_service.models import Enrichment
from llmc_rag_service.search import SearchResult, SearchSettings, open_store, search
from llmc_rag_service.store import vectors
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.jobs import JobQueue
from llmc_rag_service.testing.vectors import hashed_embedding
from tests.helpers import write_tree

MODEL = "test-model"
EMBED = "embed-model"
DIM = 64


def enrichment(summary: str, pitfalls: tuple[str, ...] = ()) -> Enrichment:
    return Enrichment(summary=summary, inputs=[], outputs=[], side_effects=[], pitfalls=list(pitfalls), usage="")


def embed(text: str) -> list[float]:
    """The test embedder: hashed bag of identifier parts, :data:`DIM` floats."""
    return hashed_embedding(text, DIM)


class SearchRepo:
    """A temp repo of ``files`` scanned into a fresh store at ``<tmp>/state/llmc-rag.db``."""

    def __init__(self, tmp_path: Path, files: Mapping[str, str], root_name: str = "repo"):
        self.root = tmp_path / root_name
        write_tree(self.root, files)
        self.db_path = tmp_path / "state" / "llmc-rag.db"
        self.store = Store(self.db_path)
        self.queue = JobQueue(self.store, MODEL)
        self.scanner = Scanner(self.store, self.queue, self.root)
        self.scanner.full_scan()
        self._readers: list[sqlite3.Connection] = []

    def write(self, files: Mapping[str, str]) -> None:
        """Change files on disk and let the scanner see them (as the watcher would)."""
        write_tree(self.root, files)
        self.scanner.process_paths(files)

    def delete(self, relpath: str, rescan: bool = True) -> None:
        (self.root / relpath).unlink()
        if rescan:
            self.scanner.process_paths([relpath])

    def enrich(self, answer: Callable[[str], Enrichment | None]) -> None:
        """Run every pending job: ``answer(span name)`` is stored, or None dead-letters the job."""
        while (job := self.queue.claim()) is not None:
            result = answer(self.store.span_text(job.span_hash)["name"])
            if result is None:
                self.queue.fail(job, "invalid_json: test")
            else:
                self.queue.complete(job, result, 0.1)

    def embed_all(self, model: str = EMBED, version: int = 1, fn: Callable[[str], list[float]] = embed) -> int:
        """Store an embedding of every span (name + text) for ``model``; returns how many."""
        rows = []
        for span_hash in self.hashes():
            span = self.store.span_text(span_hash)
            rows.append((span_hash, model, version, fn(f"{span['name']}\n{span['text']}")))
        return vectors.put_embeddings(self.store, rows)

    def hashes(self) -> list[str]:
        """Span hashes of every current span, via the export view."""
        from llmc_rag_service.store.searchview import export_rows

        with self.reader() as conn:
            return list(dict.fromkeys(r["span_hash"] for r in export_rows(conn, MODEL)))

    def reader(self) -> sqlite3.Connection:
        conn = open_store(self.db_path)
        self._readers.append(conn)
        return conn

    def search(self, query: str, *, embed_model: str | None = EMBED, embed_query=embed, input_version=None,
               budget_s: float = 5.0, **kwargs) -> SearchResult:
        settings = SearchSettings(MODEL, embed_model, input_version, budget_s)
        with self.reader() as conn:
            return search(conn, query, settings, embed_query=embed_query, **kwargs)

    def names(self, query: str, **kwargs) -> list[str]:
        return [h.name for h in self.search(query, **kwargs).hits]

    def close(self) -> None:
        for conn in self._readers:
            conn.close()
        self.store.close()
