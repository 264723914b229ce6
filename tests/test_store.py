"""The SQLite store: migrations, files and spans, content-addressed texts."""



from llmc_rag_service.store import db as store_mod
from llmc_rag_service.models import Span
from llmc_rag_service.store.db import Store


def test_migrations_apply_forward_and_keep_data(tmp_path, monkeypatch):
    """Opening a store at an older schema version applies only the newer migrations and keeps its rows."""
    path = tmp_path / "llmc-rag.db"
    s = Store(path)
    rid = s.repo_id("/r")
    s.close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS + ("ALTER TABLE repos ADD COLUMN note TEXT",))
    s = Store(path)
    assert s.conn.execute("PRAGMA user_version").fetchone()[0] == len(store_mod.MIGRATIONS)
    assert s.repo_id("/r") == rid
    assert "note" in [r[1] for r in s.conn.execute("PRAGMA table_info(repos)")]
    s.close()


def test_state_dir_is_created_private(tmp_path):
    """The state directory is created with mode 0700."""
    s = Store(tmp_path / "new" / "llmc-rag.db")
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    s.close()


def test_put_file_replaces_spans_and_span_text_is_found_by_hash(tmp_path):
    """Re-putting a file replaces its spans; span_text finds text and a current location by hash."""
    s = Store(tmp_path / "db")
    rid = s.repo_id("/r")
    one = Span("function", "f", 1, 2, "def f():\n    pass", "python")
    two = Span("function", "g", 4, 5, "def g():\n    pass", "python")
    with s.write() as tx:
        fid = s.put_file(tx, rid, "a.py", size=1, mtime_ns=2, content_hash="h", language="python",
                         skipped=None, spans=[one, two])
    with s.write() as tx:
        s.put_file(tx, rid, "a.py", size=1, mtime_ns=3, content_hash="h2", language="python",
                   skipped=None, spans=[two])
    assert [r["name"] for r in s.file_spans(fid)] == ["g"]
    row = s.span_text(two.span_hash)
    assert (row["repo"], row["path"], row["name"], row["text"]) == ("/r", "a.py", "g", two.text)
    assert s.span_text(one.span_hash) is None  # no file holds it any more
    with s.write() as tx:
        s.delete_files(tx, rid, ["a.py"])
    assert s.files(rid) == {}
    s.close()


def test_files_under_a_directory_prefix(tmp_path):
    """files(under=dir) returns the files of that subtree only, not siblings sharing a name prefix."""
    s = Store(tmp_path / "db")
    rid = s.repo_id("/r")
    with s.write() as tx:
        for p in ("src/a.py", "src/b/c.py", "srcx/d.py", "src"):
            s.put_file(tx, rid, p, size=1, mtime_ns=1, content_hash=p, language=None, skipped=None, spans=[])
    assert sorted(s.files(rid, under="src")) == ["src", "src/a.py", "src/b/c.py"]
    s.close()


def test_writable_reports_a_read_only_database(tmp_path):
    """writable() names the problem when the database cannot be written."""
    s = Store(tmp_path / "db")
    assert s.writable() is None
    s.conn.execute("PRAGMA query_only = ON")
    assert "not writable" in s.writable()
    s.close()
