"""The store side of search: the FTS index kept in sync, the embeddings table, the migration."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from llmc_rag_service.models import Span
from llmc_rag_service.store import db as store_mod
from llmc_rag_service.store import fts, vectors
from llmc_rag_service.store.db import Store
from tests.searchkit import EMBED, SearchRepo, enrichment

CODE = {
    "src/http.py": "def parseJsonBody(request):\n    return request.json()\n\n\n"
                   "def send_reply(sock):\n    sock.sendall(b'ok')\n",
    "src/util.py": "def helper():\n    return 42\n",
}


@pytest.fixture
def sr(tmp_path):
    made = SearchRepo(tmp_path, CODE)
    yield made
    made.close()


def test_identifier_parts_split_camel_and_snake_case():
    """camelCase, snake_case and acronyms split into the same lower-cased parts; digits stay with letters."""
    assert fts.identifier_parts("parseJsonBody") == ["parse", "json", "body"]
    assert fts.identifier_parts("parse_json_body") == ["parse", "json", "body"]
    assert fts.identifier_parts("HTTPServer") == ["http", "server"]
    assert fts.identifier_parts("utf8Decode") == ["utf8", "decode"]
    assert fts.split_terms("x = parseJsonBody(y) + parseJsonBody(z)") == "parse json body"


def test_every_scanned_span_is_indexed_with_nothing_left_dirty(sr):
    """After a scan every span has an FTS document and no row waits to be indexed."""
    conn = sr.store.conn
    ids = [r[0] for r in conn.execute("SELECT id FROM spans")]
    assert len(ids) == 3 and fts.indexed_ids(conn, ids) == set(ids)
    assert fts.dirty(conn) == 0


def test_enrichment_landing_reindexes_the_span(sr):
    """A word that only the enrichment contains is searchable once the enrichment is stored."""
    assert sr.names("teapot", mode="lexical") == []
    sr.enrich(lambda name: enrichment("Brews a teapot of tea." if name == "helper" else "Something else."))
    assert sr.names("teapot", mode="lexical") == ["helper"]


def test_changed_file_replaces_its_documents(sr):
    """Re-indexing a changed file drops the old text from the index and adds the new."""
    sr.write({"src/util.py": "def helper():\n    return frobnicate()\n"})
    assert sr.names("frobnicate", mode="lexical") == ["helper"]
    sr.write({"src/util.py": "def helper():\n    return 42\n"})
    assert sr.names("frobnicate", mode="lexical") == []


def test_deleted_file_spans_leave_the_index(sr):
    """Deleting a file (its spans cascade) removes their documents."""
    conn = sr.store.conn
    before = {r[0] for r in conn.execute("SELECT id FROM spans")}
    sr.delete("src/http.py")
    after = {r[0] for r in conn.execute("SELECT id FROM spans")}
    assert fts.indexed_ids(conn, before) == after and len(after) == 1
    assert sr.names("parse json", mode="lexical") == []


def test_older_store_is_migrated_and_backfilled(tmp_path, monkeypatch):
    """A store of schema 1 with spans and an enrichment gets the index on open, backfilled from its rows."""
    path = tmp_path / "old.db"
    with monkeypatch.context() as mp:
        mp.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:1])
        old = Store(path)
        span = Span("function", "readConfigFile", 1, 2, "def readConfigFile():\n    pass", "python")
        repo_id = old.repo_id("/r")
        with old.write() as tx:
            # rows as schema 1 had them (today's put_file writes later columns)
            tx.execute("INSERT INTO files(repo_id, path, size, mtime_ns, content_hash, language, skipped, updated_at) "
                       "VALUES (?, 'cfg.py', 1, 1, 'h', 'python', NULL, 1)", (repo_id,))
            tx.execute("INSERT INTO spans(file_id, kind, name, start_line, end_line, span_hash) "
                       "VALUES (last_insert_rowid(), ?, ?, ?, ?, ?)",
                       (span.kind, span.name, span.start_line, span.end_line, span.span_hash))
            tx.execute("INSERT INTO span_texts(span_hash, language, text) VALUES (?, ?, ?)",
                       (span.span_hash, span.language, span.text))
            tx.execute("INSERT INTO enrichments VALUES (?, 'm', 1, 'Loads the settings.', '[]', '[]', '[]', '[]', '', 1, 1)",
                       (span.span_hash,))
        assert not fts.has_index(old.conn)
        old.close()
    new = Store(path)
    conn = new.conn
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(store_mod.MIGRATIONS)
    assert fts.dirty(conn) == 0
    found = {r[0] for r in conn.execute("SELECT rowid FROM span_fts WHERE span_fts MATCH 'settings AND \"config file\"'")}
    assert found == {r[0] for r in conn.execute("SELECT id FROM spans")} and len(found) == 1
    new.close()


def test_migration_statements_keep_trigger_bodies_whole():
    """The migration splitter does not cut a trigger at the semicolons inside its body."""
    script = "CREATE TABLE a(x);\nCREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; SELECT 'a;b'; END;\n"
    assert [s.strip() for s in store_mod._statements(script)] == [
        "CREATE TABLE a(x);", "CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; SELECT 'a;b'; END;"]
    with pytest.raises(ValueError, match="incomplete"):
        list(store_mod._statements("CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1"))


def test_put_and_load_embeddings_round_trip_as_float32(sr):
    """Vectors come back bit-exact as float32 (or float16 on request), keyed by span hash."""
    rows = [(f"h{i}", EMBED, 1, np.arange(4, dtype=np.float32) + i) for i in range(3)]
    assert vectors.put_embeddings(sr.store, rows) == 3
    hashes, matrix = vectors.load_embeddings(sr.store.conn, EMBED, 1)
    assert hashes == ["h0", "h1", "h2"] and matrix.dtype == np.float32
    assert np.array_equal(matrix[2], [2, 3, 4, 5])
    blob = sr.store.conn.execute("SELECT vector FROM embeddings WHERE span_hash = 'h1'").fetchone()[0]
    assert blob == np.array([1, 2, 3, 4], dtype="<f4").tobytes()
    assert vectors.load_embeddings(sr.store.conn, EMBED, 1, np.float16)[1].dtype == np.float16
    none_hashes, none_matrix = vectors.load_embeddings(sr.store.conn, EMBED, 2)
    assert none_hashes == [] and none_matrix.shape[0] == 0


@pytest.mark.parametrize("bad, message", [
    ([1.0, float("nan"), 0.0, 1.0], "NaN or infinite"),
    ([1.0, float("inf"), 0.0, 1.0], "NaN or infinite"),
    ([1e39, 0.0, 0.0, 1.0], "NaN or infinite"),  # overflows float32
    ([1.0, 2.0, 3.0], "dimension 3, but model embed-model has dimension 4"),
    ([], "not a non-empty list"),
])
def test_put_embeddings_refuses_bad_vectors_and_writes_nothing(sr, bad, message):
    """NaN, infinity, an empty vector or a dimension other than the model's is refused; the batch is not written."""
    vectors.put_embeddings(sr.store, [("h0", EMBED, 1, [0.0, 0.0, 0.0, 1.0])])
    with pytest.raises(ValueError, match=message):
        vectors.put_embeddings(sr.store, [("h1", EMBED, 1, [1.0, 0.0, 0.0, 0.0]), ("h2", EMBED, 1, bad)])
    assert vectors.count(sr.store.conn, EMBED, 1) == 1


def test_put_embeddings_on_a_connection_and_another_models_dimension(sr):
    """A raw connection works too; another model may have another dimension; a batch must agree with itself."""
    conn = sr.store.conn
    vectors.put_embeddings(conn, [("h0", EMBED, 1, [1.0, 0.0])])
    vectors.put_embeddings(conn, [("h0", "other", 1, [1.0, 0.0, 0.0])])
    with pytest.raises(ValueError, match="dimension 2, but model new has dimension 3"):
        vectors.put_embeddings(conn, [("a", "new", 1, [1.0, 0.0, 0.0]), ("b", "new", 1, [1.0, 0.0])])
    assert not conn.in_transaction
    assert sorted(vectors.stored_models(conn)) == [(EMBED, 1, 1), ("other", 1, 1)]


def test_stamp_tells_appends_from_deletes_and_updates(sr):
    """A replaced vector gets a higher rowid (readers append it); a delete or in-place update bumps the epoch."""
    conn = sr.store.conn
    vectors.put_embeddings(sr.store, [("h0", EMBED, 1, [1.0, 0.0]), ("h1", EMBED, 1, [0.0, 1.0])])
    epoch, top = vectors.stamp(conn)
    vectors.put_embeddings(sr.store, [("h0", EMBED, 1, [0.0, 1.0])])
    assert vectors.stamp(conn) == (epoch, top + 1) and vectors.count(conn, EMBED, 1) == 2
    newer = list(vectors.iter_embeddings(conn, EMBED, 1, after_rowid=top))
    assert [h for h, _ in newer] == [["h0"]]
    conn.execute("DELETE FROM embeddings WHERE span_hash = 'h1'")
    assert vectors.stamp(conn)[0] == epoch + 1
    conn.execute("UPDATE embeddings SET created_at = 0")
    assert vectors.stamp(conn)[0] == epoch + 2


def test_reader_connection_cannot_write(sr):
    """A search connection is read-only (query_only): a write raises instead of changing the store."""
    conn = sr.reader()
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("DELETE FROM spans")
    assert sr.store.conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0] == 3
