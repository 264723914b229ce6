"""Query -> ranked spans: lexical (FTS5 BM25), semantic (vectors, cosine), fused (RRF), with freshness.

The API (shapes: DESIGN.md ``search --json`` and ``export``)::

    from llmc_rag_service.search import SearchSettings, SpanFilter, open_store, search, export_jsonl

    conn = open_store(config.db_path)                 # read-only; migrates an older store first
    result = search(conn, "parse json", SearchSettings(chat_model="qwen2.5:7b", embed_model="nomic-embed-text"),
                    embed_query=lambda text: vector, mode="hybrid", limit=10,
                    filters=SpanFilter(language="python"))
    result.to_json()                                  # {"query", "mode", "degraded", "hits": [...]}
    export_jsonl(conn, sys.stdout, chat_model="qwen2.5:7b", repo=None)

``search`` raises :class:`QueryError` for a bad query or option (its message is
for the user) and :class:`StoreUnusable` for a store it cannot use.
"""

from llmc_rag_service.search.api import (DEFAULT_LIMIT, KINDS, LANGUAGES, MAX_LIMIT, MODES, Hit, SearchResult,
                                         SearchSettings, search)
from llmc_rag_service.search.export import export_jsonl
from llmc_rag_service.search.access import open_store
from llmc_rag_service.search.query import QueryError
from llmc_rag_service.store.reader import StoreUnusable
from llmc_rag_service.store.searchview import SpanFilter

__all__ = ["DEFAULT_LIMIT", "KINDS", "LANGUAGES", "MAX_LIMIT", "MODES", "Hit", "QueryError", "SearchResult",
           "SearchSettings", "SpanFilter", "StoreUnusable", "export_jsonl", "open_store", "search"]
