"""Secret values in source text are replaced by <redacted:KIND>, the code around them kept."""

from __future__ import annotations

import email
import json
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from llmc_rag_service.config import ConfigError, load_config
from llmc_rag_service.index import redact as redact_mod
from llmc_rag_service.index import secret_scan
from llmc_rag_service.index.redact import Finding, Redactor, fingerprint
from llmc_rag_service.models import Enrichment

CANARIES = Path(__file__).resolve().parent / "data" / "canaries"
MANIFEST = json.loads((CANARIES / "manifest.json").read_text())
SOURCE_FILES = sorted({item["file"] for item in MANIFEST["source"]})

#: The kind each planted kind must be reported as (planted kinds not listed may
#: carry the detector's own name, e.g. sendgrid-api-token).
EXPECTED_KIND = {
    "aws-access-key": "aws-access-key", "aws-secret-key": "aws-secret-key", "github-token": "github-token",
    "private-key": "private-key", "gcp-private-key": "private-key", "password": "password",
    "connection-url-password": "connection-url-password", "jwt": "jwt", "slack-token": "slack-token",
    "slack-webhook": "slack-webhook", "stripe-key": "stripe-key", "gcp-api-key": "gcp-api-key",
    "gitlab-token": "gitlab-token", "high-entropy": "high-entropy", "django-secret-key": "high-entropy",
}


def planted(file: str) -> list[dict]:
    return [item for item in MANIFEST["source"] if item["file"] == file]


def line_of(text: str, value: str) -> int:
    return text[:text.index(value)].count("\n") + 1


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


@pytest.mark.parametrize("file", SOURCE_FILES)
def test_every_planted_value_is_redacted(redactor, file):
    """No byte of any canary planted in a source file is left in the redacted text."""
    out = redactor.redact((CANARIES / file).read_text(), path=file)
    for item in planted(file):
        for part in item["value"].split("\n"):
            assert part not in out.text, f"{item['kind']} left in {file}"


@pytest.mark.parametrize("file", SOURCE_FILES)
def test_each_value_has_a_finding_with_its_line_and_kind(redactor, file):
    """A finding per planted value names its line and kind; none holds a value."""
    text = (CANARIES / file).read_text()
    out = redactor.redact(text, path=file)
    by_line = {}
    for found in out.findings:
        by_line.setdefault(found.line, set()).add(found.kind)
    for item in planted(file):
        line = line_of(text, item["value"])
        assert line in by_line, f"no finding at {file}:{line} ({item['kind']})"
        if item["kind"] in EXPECTED_KIND:
            assert EXPECTED_KIND[item["kind"]] in by_line[line], (item["kind"], by_line[line])
    shown = repr(out.findings)
    assert not any(part in shown for item in planted(file) for part in item["value"].split("\n"))


@pytest.mark.parametrize("file", SOURCE_FILES)
def test_the_code_around_secrets_is_kept(redactor, file):
    """Only lines holding a secret change; the line count stays."""
    text = (CANARIES / file).read_text()
    before, after = text.split("\n"), redactor.redact(text, path=file).text.split("\n")
    assert len(after) == len(before)
    secret_rows = {line_of(text, item["value"]) - 1 + k for item in planted(file)
                   for k in range(item["value"].count("\n") + 1)}
    changed = {row for row, (old, new) in enumerate(zip(before, after)) if old != new}
    assert changed and changed <= secret_rows


def test_markers_name_the_kind_in_place():
    """The value, and only the value, becomes <redacted:KIND>."""
    out = Redactor().redact('GITHUB_TOKEN = "ghp_aMxxNDi9LE1Ki3ylOjt6o0NpUmkVO8JmR8y4"\n')
    assert out.text == 'GITHUB_TOKEN = "<redacted:github-token>"\n'
    assert out.findings == (Finding("github-token", 1, "betterleaks:github-pat"),)


def test_connection_url_keeps_user_and_host():
    """Only the password of a connection URL is redacted."""
    out = Redactor().redact('DSN = "postgres://shop_app:qlTaWEITclor@db.internal:5432/shop"')
    assert out.text == 'DSN = "postgres://shop_app:<redacted:connection-url-password>@db.internal:5432/shop"'


def test_private_key_block_is_replaced_whole_keeping_its_lines():
    """A PEM block becomes one marker and as many newlines: lines after it keep their numbers."""
    text = (CANARIES / "src/client.py").read_text()
    out = Redactor().redact(text)
    assert "-----BEGIN EC PRIVATE KEY-----" not in out.text and "-----END EC PRIVATE KEY-----" not in out.text
    lines = out.text.split("\n")
    assert lines[9] == "<redacted:private-key>" and lines[10:14] == ["", "", "", ""]
    assert lines[14] == '"""'


def test_a_private_key_block_cut_short_is_redacted():
    """A span part that holds a key block's start but not its END line still loses the key."""
    body = ["MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB",
            "aFDrBz9vFqU4yQ6cT8x4dKq2Lr7mNpW3sYvX9zA1bC5dE8fG0hJ2kL4mN6pQ8rS"]
    text = 'KEY = """\n-----BEGIN RSA PRIVATE KEY-----\n' + "\n".join(body) + "\n"
    out = Redactor().redact(text, first_line=100)
    assert not any(line in out.text for line in body)
    assert out.text.count("\n") == text.count("\n")
    assert [(f.kind, f.line) for f in out.findings] == [("private-key", 101)]


def test_line_numbers_count_from_the_spans_first_line():
    """A span starting at line 40 reports its finding at 40 + the row in the span."""
    out = Redactor().redact('def f():\n    pw = "x"\n    token = "ghp_aMxxNDi9LE1Ki3ylOjt6o0NpUmkVO8JmR8y4"\n',
                            path="src/a.py", first_line=40)
    assert [(f.kind, f.line) for f in out.findings] == [("github-token", 42)]


def test_an_aws_access_key_id_alone_is_redacted():
    """An AWS key id with no secret key near it (betterleaks needs both) is still found, in prose
    too; one inside a longer word is not."""
    out = Redactor().redact("Uploads to S3 with the access key AKIAJ5QZ3XWV7R2MB6TD.", code=False)
    assert out.text == "Uploads to S3 with the access key <redacted:aws-access-key>."
    assert out.findings == (Finding("aws-access-key", 1, "aws-key-id"),)
    assert Redactor().redact("XAKIAJ5QZ3XWV7R2MB6TD").findings == ()


def test_an_answer_is_redacted_field_by_field():
    """redact_enrichment replaces values in every field of a model answer and counts them."""
    answer = Enrichment(summary="Signs in with ghp_aMxxNDi9LE1Ki3ylOjt6o0NpUmkVO8JmR8y4.", inputs=["name"],
                        outputs=["AKIAJ5QZ3XWV7R2MB6TD"], side_effects=[], pitfalls=[], usage="f()")
    with capture_logs() as logs:
        clean, count = Redactor().redact_enrichment(answer, "src/a.py", 12)
    assert count == 2 and clean.summary == "Signs in with <redacted:github-token>."
    assert clean.outputs == ["<redacted:aws-access-key>"] and clean.inputs == ["name"] and clean.usage == "f()"
    assert [(e["path"], e["line"], e["source"]) for e in logs] == [("src/a.py", 12, "answer")] * 2
    untouched = Enrichment("Adds.", [], [], [], [], "")
    assert Redactor().redact_enrichment(untouched, "a.py", 1) == (untouched, 0)


def test_a_found_value_is_redacted_wherever_it_repeats():
    """A random-looking value found once is also replaced where no rule would see it."""
    text = 'api_key = "hYPX6I9BT6th9Nje5pw1Tdkk94uGRZJ/M2mJHYAB"\nsend(value="hYPX6I9BT6th9Nje5pw1Tdkk94uGRZJ/M2mJHYAB")\n'
    out = Redactor().redact(text)
    assert "hYPX6I9BT6" not in out.text
    assert [f.detector for f in out.findings][1] == "same-value"


def test_a_word_found_as_a_password_stays_elsewhere():
    """``password = "password"`` hides the value, not every later use of the word."""
    out = Redactor().redact('password = "password"\nask(password)\n')
    assert out.text.endswith("ask(password)\n")


def test_a_name_in_code_is_not_a_password_but_a_literal_in_a_script_is():
    """``self.password = password`` in Python is a name; ``DB_PASSWORD=supersecret`` in sh is a value."""
    code = "def login(self, password):\n    self.password = password\n    self.username, self.password = credentials\n"
    assert Redactor().redact(code, path="auth.py").findings == ()
    script = Redactor().redact("export DB_PASSWORD=supersecret\n", path="deploy.sh")
    assert script.text == "export DB_PASSWORD=<redacted:password>\n"


def test_literals_of_ordinary_keys_are_kept():
    """Only key names that say secret make a literal a secret: ``key='rsa:3072'`` stays."""
    text = "make_cert(ext='req_x509_extensions_full', key='rsa:3072')\nsort_key = 'Zq8#vL2m'\n"
    assert Redactor().redact(text, path="certs.py").findings == ()


def test_redacting_twice_changes_nothing():
    """Markers are not secrets: a redacted text redacts to itself with no finding."""
    redactor = Redactor()
    once = redactor.redact((CANARIES / "src/settings.py").read_text())
    twice = redactor.redact(once.text)
    assert twice.text == once.text and twice.findings == ()


def test_a_nul_does_not_hide_what_follows():
    """The scanner takes a C string: a NUL before a secret must not end the scan."""
    out = Redactor().redact('x = "\0"\nGITHUB_TOKEN = "ghp_aMxxNDi9LE1Ki3ylOjt6o0NpUmkVO8JmR8y4"\n')
    assert "ghp_aMxx" not in out.text and out.text.startswith('x = "\0"\n')


def test_an_inline_allow_comment_does_not_stop_redaction():
    """``# gitleaks:allow`` silences a CI scanner, not the redaction: only secrets.allow allows."""
    out = Redactor().redact('TOKEN = "ghp_aMxxNDi9LE1Ki3ylOjt6o0NpUmkVO8JmR8y4"  # gitleaks:allow\n')
    assert out.text == 'TOKEN = "<redacted:github-token>"  # gitleaks:allow\n'


def test_allow_list_by_fingerprint_and_by_regex():
    """Allowed values (sha256 prefix, or a regex of the whole value) stay; others are still redacted."""
    text = ('GITHUB_TOKEN = "ghp_aMxxNDi9LE1Ki3ylOjt6o0NpUmkVO8JmR8y4"\n'
            'STRIPE_SECRET_KEY = "sk_live_1AyOHFRuT11NCue1cr3McRTr"\n'
            'OAUTH_TOKEN = "gho_EMfAdggcG9qpVTzqA05MFsHl7UeioEJP2NNe"\n')
    allow = [fingerprint("ghp_aMxxNDi9LE1Ki3ylOjt6o0NpUmkVO8JmR8y4")[:16], r"sk_live_1Ay\w+"]
    out = Redactor(allow).redact(text)
    assert "ghp_aMxxNDi9LE1Ki3ylOjt6o0NpUmkVO8JmR8y4" in out.text and "sk_live_1AyOHFRuT11NCue1cr3McRTr" in out.text
    assert "gho_EMf" not in out.text and [f.line for f in out.findings] == [3]
    full = Redactor([fingerprint("gho_EMfAdggcG9qpVTzqA05MFsHl7UeioEJP2NNe").upper()]).redact(text)
    assert "gho_EMfAdggcG9qpVTzqA05MFsHl7UeioEJP2NNe" in full.text and len(full.findings) == 2


def test_a_bad_allow_regex_is_named():
    """An allow entry that is neither a fingerprint nor a regex is a ValueError naming its index."""
    with pytest.raises(ValueError, match=r"secrets\.allow\[1\]"):
        Redactor(["0123456789abcdef", "sk_(live"])


def test_config_reads_secrets_allow(tmp_path):
    """``secrets.allow`` is read from the config; a bad regex is a ConfigError naming the entry."""
    path = tmp_path / "config.yaml"
    path.write_text("repos: [{path: /tmp}]\nsecrets:\n  allow: ['0123456789abcdef', 'test_\\w+']\n")
    assert load_config(path).secrets.allow == ("0123456789abcdef", r"test_\w+")
    path.write_text("repos: [{path: /tmp}]\nsecrets:\n  allow: ['ok', 'sk_(live']\n")
    with pytest.raises(ConfigError, match=r"secrets\.allow\[1\]") as caught:
        load_config(path)
    assert caught.value.line == 3


def test_verdicts_are_cached_by_text(monkeypatch):
    """A text seen before is not scanned again; the LRU forgets the oldest beyond its size."""
    scans = []
    real = redact_mod.find_secrets
    monkeypatch.setattr(redact_mod, "find_secrets", lambda text, code: scans.append(text) or real(text, code))
    redactor = Redactor(cache_size=2)
    texts = ['a = "ghp_aMxxNDi9LE1Ki3ylOjt6o0NpUmkVO8JmR8y4"', "b = 1", "c = 2"]
    first = redactor.redact(texts[0], first_line=1)
    again = redactor.redact(texts[0], first_line=7)
    assert len(scans) == 1 and again.text == first.text and again.findings[0].line == 7
    redactor.redact(texts[1])
    redactor.redact(texts[2])
    redactor.redact(texts[0])
    assert len(scans) == 4


def test_a_log_line_per_redaction_names_file_line_detector_never_the_value():
    """Each redaction logs secret_redacted with path, line, kind and detector, and no value."""
    with capture_logs() as logs:
        Redactor().redact('x = 1\nGITHUB_TOKEN = "ghp_aMxxNDi9LE1Ki3ylOjt6o0NpUmkVO8JmR8y4"\n',
                          path="src/client.py", first_line=5)
    assert logs == [{"event": "secret_redacted", "log_level": "info", "path": "src/client.py", "line": 6,
                     "kind": "github-token", "detector": "betterleaks:github-pat"}]


def test_a_model_answer_is_redacted_in_every_field():
    """Strings anywhere in an answer (also in lists) lose their secrets; the answer given is unchanged."""
    answer = {"summary": "Connects with password Zc8vN3kQ5mT1xB7w to postgres://u:Zc8vN3kQ5mT1xB7w@db/x.",
              "inputs": ["token ghp_aMxxNDi9LE1Ki3ylOjt6o0NpUmkVO8JmR8y4"], "outputs": [], "side_effects": [],
              "pitfalls": ["none"], "usage": "client()"}
    clean, findings = Redactor().redact_answer(answer, path="src/client.py")
    assert "Zc8vN3kQ5mT1xB7w" not in json.dumps(clean) and "ghp_aMxx" not in json.dumps(clean)
    assert clean["pitfalls"] == ["none"] and clean["usage"] == "client()"
    assert {f.kind for f in findings} >= {"github-token", "connection-url-password"}
    assert "Zc8vN3kQ5mT1xB7w" in answer["summary"]


def test_a_scanner_failure_fails_closed(monkeypatch):
    """When the scanner fails the text is not returned: RedactionError, chained."""
    def broken(text):
        raise secret_scan.betterleaks.BetterleaksError("boom")
    monkeypatch.setattr(secret_scan.betterleaks, "scan_string", broken)
    with pytest.raises(redact_mod.RedactionError, match="boom"):
        Redactor().redact("x = 1")


def test_threads_share_one_redactor():
    """Scanner and worker threads may redact at once: each gets the sequential answer."""
    texts = [(CANARIES / file).read_text() for file in SOURCE_FILES] * 4
    expected = [Redactor().redact(text).text for text in texts]
    shared, results = Redactor(cache_size=2), [None] * len(texts)

    def run(index: int) -> None:
        results[index] = shared.redact(texts[index]).text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == expected


#: Findings on ordinary code: the json and email packages of the standard library
#: (about 11,000 lines) hold no secret, and none is reported.
STDLIB_FINDINGS: list[tuple[str, int, str]] = []


def test_no_false_positive_on_ordinary_code():
    """The stdlib json and email packages give the documented (empty) list of findings."""
    found = []
    for package in (json, email):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            out = Redactor().redact(path.read_text(encoding="utf-8"), path=path.name)
            found += [(path.relative_to(root.parent).as_posix(), f.line, f.kind) for f in out.findings]
    assert found == STDLIB_FINDINGS
