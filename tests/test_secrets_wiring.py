"""How the scanner and the pipeline use the secret redaction: credential files by content,
redaction before cutting, a failing scanner, ``secrets.allow``, and a store written before redaction."""

from __future__ import annotations

import base64
import hashlib
import betterleaks
import pytest
from structlog.testing import capture_logs

from llmc_rag_service.enrich import workers
from llmc_rag_service.index.redact import RedactionError, fingerprint
from llmc_rag_service.index.scanner import Scanner
from llmc_rag_service.models import Span
from llmc_rag_service.service.explain import why_no_spans
from llmc_rag_service.service.pipeline import Pipeline
from llmc_rag_service.service.status import status_report
from llmc_rag_service.store import db as store_mod
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.jobs import JobQueue
from tests.helpers import TempPipeline, chats, fast_backoffs, make_config, wait_for, write_tree

TOKEN = "ghp_aMxxNDi9LE1Ki3ylOjt6o0NpUmkVO8JmR8y4"
CLIENT = f'import os\n\nTOKEN = "{TOKEN}"\n\n\ndef client():\n    return os.environ.get("X", TOKEN)\n'
#: A config file that holds a credential by content (its name says nothing).
SERVICE_JSON = '{"client_id": "shop", "client_secret": "Yr5tE2wQ8uI4oP7aS1dF"}\n'


def scanner_for(tmp_path, root):
    store = Store(tmp_path / "state" / "db")
    return Scanner(store, JobQueue(store, "m"), root), store


def texts(store: Store) -> str:
    """Every stored span text, joined."""
    return "\n".join(r[0] for r in store.conn.execute("SELECT text FROM span_texts"))


def test_a_credential_file_by_content_is_stored_skipped_with_no_span(tmp_path):
    """A JSON file whose keys say client_secret is skipped (reason secret, the key named, no value, no hash);
    once its secret is gone it is indexed like any file."""
    root = tmp_path / "repo"
    write_tree(root, {"config/service.json": SERVICE_JSON})
    scanner, store = scanner_for(tmp_path, root)
    with capture_logs() as logs:
        result = scanner.full_scan()
    (record,) = store.files(scanner.repo_id).values()
    assert (record.skipped, record.content_hash, result.skipped) == ("secret", "secret", 1)
    assert store.conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0] == 0
    (event,) = [e for e in logs if e["event"] == "file_skipped"]
    assert event["reason"] == "secret" and event["detail"] == "key 'client_secret' has a literal value"
    assert "Yr5tE2wQ8uI4oP7aS1dF" not in repr(logs)
    (root / "config/service.json").write_text('{"client_id": "shop", "client_secret": "${CLIENT_SECRET}"}\n')
    scanner.full_scan()
    (record,) = store.files(scanner.repo_id).values()
    assert record.skipped is None and "${CLIENT_SECRET}" in texts(store)
    store.close()


def test_secret_values_are_redacted_before_the_file_is_cut(tmp_path):
    """Span texts and hashes hold the marker, never the value; the function around it is a span of its own."""
    root = tmp_path / "repo"
    write_tree(root, {"client.py": CLIENT})
    scanner, store = scanner_for(tmp_path, root)
    result = scanner.full_scan()
    stored = texts(store)
    assert TOKEN not in stored and 'TOKEN = "<redacted:github-token>"' in stored
    assert "def client():" in stored and result.redacted == 1
    assert store.conn.execute("SELECT redacted FROM files").fetchone()[0] == 1
    store.close()


def test_a_private_key_across_two_spans_is_redacted_whole(tmp_path):
    """A key block that two window spans share (lines 51-92, windows of 60 lines) is found whole
    in the file before it is cut: neither span holds a line of it."""
    body = [base64.b64encode(hashlib.sha256(bytes([i])).digest() * 2).decode()[:64] for i in range(40)]
    pem = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(body) + "\n-----END RSA PRIVATE KEY-----"
    notes = "".join(f"note {i}\n" for i in range(50))
    root = tmp_path / "repo"
    write_tree(root, {"keys.txt": f"{notes}{pem}\n{notes}"})
    scanner, store = scanner_for(tmp_path, root)
    scanner.full_scan()
    rows = store.conn.execute("SELECT start_line, end_line FROM spans ORDER BY start_line").fetchall()
    assert [tuple(r) for r in rows][:2] == [(1, 60), (61, 120)]
    stored = texts(store)
    assert not any(line in stored for line in body) and "PRIVATE KEY-----" not in stored
    assert "<redacted:private-key>" in stored and "note 49" in stored
    store.close()


def test_a_failing_secret_scanner_stores_nothing_and_the_file_is_retried(tmp_path, monkeypatch):
    """When the scanner library fails, the file is not stored (fail closed) and a later scan indexes it."""
    root = tmp_path / "repo"
    write_tree(root, {"client.py": CLIENT})
    scanner, store = scanner_for(tmp_path, root)

    def broken(text: str) -> list:
        raise betterleaks.BetterleaksError("engine crashed")

    with monkeypatch.context() as mp:
        mp.setattr(betterleaks, "scan_string", broken)
        result = scanner.full_scan()
    assert result.failed == ["client.py"] and store.files(scanner.repo_id) == {}
    assert store.conn.execute("SELECT COUNT(*) FROM span_texts").fetchone()[0] == 0
    scanner.full_scan()
    assert TOKEN not in texts(store) and "<redacted:github-token>" in texts(store)
    store.close()


def test_secrets_allow_by_fingerprint_keeps_a_value_and_a_change_recuts_every_file(tmp_path):
    """A value allowed by its sha256 fingerprint stays in the span text; taking it off the list
    re-reads the unchanged file at the next start, and the value is redacted again."""
    root = tmp_path / "repo"
    write_tree(root, {"client.py": CLIENT})
    config = make_config(tmp_path, "http://127.0.0.1:9", [root], secrets={"allow": [fingerprint(TOKEN)[:16]]})
    with capture_logs() as first:
        pipeline = Pipeline(config)
    pipeline.scan_all()
    assert TOKEN in texts(pipeline.store)
    assert status_report(config)["secrets"]["redacted"] == 0
    pipeline.close(0)
    config = make_config(tmp_path, "http://127.0.0.1:9", [root], secrets={"allow": []})
    with capture_logs() as second:
        pipeline = Pipeline(config)
    # A new store has nothing to cut again: no line says the list changed; the change marks the one file.
    assert not [e for e in first if e["event"] == "files_marked_for_reread"]
    assert [e["files"] for e in second if e["event"] == "files_marked_for_reread"] == [1]
    pipeline.scan_all()
    assert TOKEN not in texts(pipeline.store) and "<redacted:github-token>" in texts(pipeline.store)
    pipeline.close(0)
    assert status_report(config)["secrets"]["redacted"] == 1


def test_secrets_allow_by_regex_keeps_matching_values(tmp_path):
    """A regex entry keeps every value it matches whole (here a fixture's test token); others are redacted."""
    other = "gho_EMfAdggcG9qpVTzqA05MFsHl7UeioEJP2NNe"
    root = tmp_path / "repo"
    write_tree(root, {"client.py": CLIENT, "oauth.py": f'OAUTH = "{other}"\n'})
    config = make_config(tmp_path, "http://127.0.0.1:9", [root], secrets={"allow": [r"ghp_aMxx\w+"]})
    pipeline = Pipeline(config)
    pipeline.scan_all()
    assert TOKEN in texts(pipeline.store) and other not in texts(pipeline.store)
    pipeline.close(0)


def test_a_store_written_before_redaction_loses_its_secret_texts_and_answers(tmp_path, monkeypatch):
    """A store of the previous schema with an unredacted span and its enrichment: the first scan after
    the upgrade re-cuts the unchanged file, drops the old text and answer, and queues the redacted span."""
    root = tmp_path / "repo"
    write_tree(root, {"client.py": CLIENT})
    config = make_config(tmp_path, "http://127.0.0.1:9", [root])
    old_span = Span("block", "lines 1-7", 1, 7, CLIENT.rstrip("\n"), "python")
    with monkeypatch.context() as mp:
        mp.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:2])
        old = Store(config.db_path)
        repo_id, st = old.repo_id(str(root)), (root / "client.py").stat()
        with old.write() as tx:  # the rows as that version wrote them
            tx.execute("INSERT INTO files(repo_id, path, size, mtime_ns, content_hash, language, updated_at) "
                       "VALUES (?, 'client.py', ?, ?, 'h', 'python', 0)", (repo_id, st.st_size, st.st_mtime_ns))
            tx.execute("INSERT INTO spans(file_id, kind, name, start_line, end_line, span_hash) "
                       "SELECT id, 'block', 'lines 1-7', 1, 7, ? FROM files", (old_span.span_hash,))
            tx.execute("INSERT INTO span_texts(span_hash, language, text) VALUES (?, 'python', ?)",
                       (old_span.span_hash, old_span.text))
            tx.execute("INSERT INTO enrichments(span_hash, model, prompt_version, summary, inputs, outputs, "
                       "side_effects, pitfalls, usage, created_at) VALUES (?, 'test-model', 1, ?, '[]', '[]', "
                       "'[]', '[]', '', 0)", (old_span.span_hash, f"Uses the token {TOKEN}."))
        old.close()
    assert status_report(config)["secrets"]["redacted"] == 0  # an old store, read as it is
    pipeline = Pipeline(config)
    pipeline.scan_all()
    conn = pipeline.store.conn
    assert TOKEN not in texts(pipeline.store)
    assert conn.execute("SELECT COUNT(*) FROM enrichments WHERE summary LIKE ?", (f"%{TOKEN}%",)).fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM span_texts WHERE span_hash = ?", (old_span.span_hash,)).fetchone()[0] == 0
    assert pipeline.queue.counts()["pending"] >= 1
    pipeline.close(0)
    assert status_report(config)["secrets"]["redacted"] == 1


def test_status_counts_secret_files_by_name_and_by_content_per_repo(tmp_path):
    """status --json counts, per repo and in all, the secret files not indexed: by name (never opened)
    and by content."""
    one, two = tmp_path / "one", tmp_path / "two"
    write_tree(one, {".env": "A=b\n", "deploy/id_rsa": "x\n", "config/service.json": SERVICE_JSON, "a.py": CLIENT})
    write_tree(two, {"b.py": "def b():\n    return 1\n"})
    config = make_config(tmp_path, "http://127.0.0.1:9", [one, two])
    pipeline = Pipeline(config)
    pipeline.scan_all()
    pipeline.close(0)
    report = status_report(config)
    assert [r["secrets"] for r in report["repos"]] == [{"redacted": 1, "secret_files_skipped": 3},
                                                      {"redacted": 0, "secret_files_skipped": 0}]
    assert report["secrets"] == {"redacted": 1, "secret_files_skipped": 3, "answers_redacted": 0}
    assert report["totals"]["files"] == 2  # a skipped file is no indexed file


def test_show_explains_a_credential_file_by_content(tmp_path):
    """show on a file skipped for its content says why."""
    root = tmp_path / "repo"
    write_tree(root, {"config/service.json": SERVICE_JSON})
    config = make_config(tmp_path, "http://127.0.0.1:9", [root])
    pipeline = Pipeline(config)
    pipeline.scan_all()
    pipeline.close(0)
    assert "a secret file by its content" in why_no_spans(config, str(root / "config/service.json"))


def test_an_answer_whose_redaction_fails_is_not_stored(tmp_path, ollama, monkeypatch):
    """If the answer cannot be scanned for secrets, it is not stored: the job goes back, and the next try stores it."""
    monkeypatch.setattr(workers, "JOB_ERROR_PAUSE_S", 0.05)
    fast_backoffs(monkeypatch)  # the job's retry comes after a tenth of a second, not 1-2 s
    temp = TempPipeline(tmp_path, ollama.url, files=1)
    real, calls = temp.pipeline.redactor.redact_enrichment, []

    def fails_once(enrichment, path, first_line):
        calls.append(path)
        if len(calls) == 1:
            raise RedactionError("secret scanner failed: engine crashed")
        return real(enrichment, path, first_line)

    temp.pipeline.redactor.redact_enrichment = fails_once
    try:
        temp.start()
        wait_for(lambda: temp.pipeline.queue.counts()["done"] == 1, 15, "the job done after a failed redaction")
        assert calls == ["m0.py", "m0.py"] and len(chats(ollama)) == 2
        assert temp.jobs()[0]["state"] == "done"
    finally:
        temp.close()


def test_a_reload_that_changes_secrets_allow_recuts_the_files(tmp_path):
    """A reload (apply_config) with a new secrets.allow restarts every repo with the new list and
    has its unchanged files cut again."""
    root = tmp_path / "repo"
    write_tree(root, {"client.py": CLIENT})
    old = make_config(tmp_path, "http://127.0.0.1:9", [root])
    pipeline = Pipeline(old)
    try:
        pipeline.scan_all()
        assert TOKEN not in texts(pipeline.store)
        new = make_config(tmp_path, "http://127.0.0.1:9", [root], secrets={"allow": [fingerprint(TOKEN)]})
        changed = pipeline.apply_config(old, new)
        assert "secrets" in changed["sections"] and changed["restarted"] == [str(root)]
        pipeline.scan_all()
        assert TOKEN in texts(pipeline.store)
    finally:
        pipeline.close(0)
