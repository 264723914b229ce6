"""Text that is not UTF-8: UTF-16/32 with a byte order mark, a BOM inside a file, and a
prompt budget that holds for CJK and emoji text."""

from __future__ import annotations

import codecs

import pytest

from llmc_rag_service.enrich.prompt import (CHARS_PER_TOKEN, build_messages, effective_options,
                                            plan_num_predict, span_char_budget)
from llmc_rag_service.index.scanner import Scanner
from llmc_rag_service.index.spans import SkipFile, decode_source, split_file
from llmc_rag_service.models import budget_units
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.jobs import JobQueue

MAX = 1 << 20
SOURCE = (
    "import os\r\n\r\n\r\n"
    "def alpha(x):\r\n    return x + 1\r\n\r\n\r\n"
    "class Beta:\r\n    def gamma(self):\r\n        return 'ü → 字'\r\n"
)
WIDE = [
    ("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
    ("utf-32-le", codecs.BOM_UTF32_LE), ("utf-32-be", codecs.BOM_UTF32_BE),
]


def shape(spans) -> list[tuple]:
    return [(s.kind, s.name, s.start_line, s.end_line, s.text, s.span_hash) for s in spans]


@pytest.mark.parametrize("codec,bom", WIDE, ids=[c for c, _ in WIDE])
def test_wide_encodings_with_a_bom_are_indexed_like_utf8(codec, bom):
    """A UTF-16/32 file with a BOM (Windows-made, CRLF) gives the same spans, lines and hashes as its UTF-8 twin."""
    wide = split_file("m.py", bom + SOURCE.encode(codec), max_file_bytes=MAX)
    plain = split_file("m.py", SOURCE.encode("utf-8"), max_file_bytes=MAX)
    assert shape(wide) == shape(plain)
    assert [(s.name, s.start_line, s.end_line) for s in wide if s.kind != "block"] == \
        [("alpha", 1, 5), ("Beta", 8, 10), ("Beta.gamma", 9, 10)]  # the one-line import joins alpha (tiny block)


def test_a_windows_script_in_utf16_is_windowed_with_right_lines():
    """A PowerShell script in UTF-16 LE (not a parsed language) becomes text windows holding its lines."""
    text = "".join(f"Write-Host 'line {n}'\r\n" for n in range(1, 71))
    spans = split_file("build.ps1", codecs.BOM_UTF16_LE + text.encode("utf-16-le"), max_file_bytes=MAX)
    assert [(s.kind, s.start_line, s.end_line) for s in spans] == [("window", 1, 60), ("window", 61, 70)]
    assert spans[1].text.split("\n")[0] == "Write-Host 'line 61'"


def test_nul_bytes_without_a_bom_are_still_binary_and_a_broken_wide_file_says_why():
    """Without a BOM a NUL byte still means binary; a BOM followed by bytes of another encoding is a decode error."""
    with pytest.raises(SkipFile) as info:
        decode_source("def f(): pass\n".encode("utf-16-le"), "python")
    assert info.value.reason == "binary"
    with pytest.raises(SkipFile) as info:
        decode_source(codecs.BOM_UTF16_LE + b"a\x00\x00\xdc", "python")  # a lone low surrogate
    assert info.value.reason == "decode_error" and "utf-16-le" in info.value.detail
    with pytest.raises(SkipFile) as info:
        decode_source(codecs.BOM_UTF16_LE + "a\x00b".encode("utf-16-le"), "text")
    assert info.value.reason == "binary"


def test_a_bom_in_the_middle_of_a_file_never_reaches_a_span():
    """Two BOM'd files concatenated: no U+FEFF in any span's text, and the second file's lines stay where they are."""
    first = codecs.BOM_UTF8 + b"def one():\n    return 1\n"
    second = codecs.BOM_UTF8 + b"def two():\n    return 2\n"
    spans = split_file("cat.py", first + b"\n\n" + second, max_file_bytes=MAX)
    assert all("\ufeff" not in s.text for s in spans)
    assert [(s.name, s.start_line, s.end_line) for s in spans] == [("one", 1, 2), ("two", 5, 6)]


def test_the_scanner_indexes_a_utf16_file_instead_of_skipping_it(tmp_path):
    """Through the real scanner and store: a UTF-16 LE C# file gets spans and jobs, not a binary skip."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "Program.cs").write_bytes(codecs.BOM_UTF16_LE + "class P {\r\n  static void Main() {}\r\n}\r\n".encode("utf-16-le"))
    store = Store(tmp_path / "s.db")
    scanner = Scanner(store, JobQueue(store, "m"), root)
    result = scanner.full_scan()
    record = store.files(scanner.repo_id)["Program.cs"]
    assert result.skipped == 0 and record.skipped is None and result.jobs == 1
    assert [(r["start_line"], r["end_line"]) for r in store.file_spans(record.id)] == [(1, 3)]
    store.close()


@pytest.mark.parametrize("line", ["# 注释：计算两个数的和并返回结果。" * 4, "# 🚀✨🔥 " * 10, "x = '€' * 3  # ünïcödé"],
                         ids=["cjk", "emoji", "latin"])
def test_non_ascii_spans_fit_num_ctx_counted_by_utf8_bytes(line):
    """Spans of CJK, emoji or accented text are cut so that their whole prompt, counted by UTF-8 bytes
    (3 per token), leaves the answer's room in num_ctx, and the answer cap never overruns it."""
    options = {"num_ctx": 2048}
    body = "".join(f"    {line}\n" for _ in range(150))
    data = f"def big():\n{body}    return 1\n".encode()
    spans = split_file("big.py", data, max_file_bytes=MAX, max_span_chars=span_char_budget(options))
    assert len(spans) > 1 and "".join(s.text for s in spans).count(line) == 150
    for span in spans:
        messages = build_messages(path="big.py", language="python", kind=span.kind, name=span.name,
                                  start_line=span.start_line, text=span.text)
        prompt_bytes = sum(len(m["content"].encode()) for m in messages)
        assert prompt_bytes / CHARS_PER_TOKEN + effective_options(options)["num_predict"] <= options["num_ctx"]
        assert prompt_bytes / CHARS_PER_TOKEN + plan_num_predict(messages, options) <= options["num_ctx"]


def test_budget_units_count_ascii_by_characters_and_other_text_by_bytes():
    """ASCII text costs one unit a character, but a digit three (a token of its own); each UTF-8
    byte of other text costs three."""
    assert budget_units("def f(): pass") == 13 and budget_units("x = 12") == 10 and budget_units("a字1") == 13
    assert budget_units("é") == 6 and budget_units("字") == 9 and budget_units("🚀") == 12
    assert budget_units("a字b") == 11


def _digit_tokens_and_ceiling(span, options) -> tuple[int, int]:
    """(the prompt's ASCII digits, its planned ceiling in tokens) for ``span``."""
    messages = build_messages(path="data.py", language="python", kind=span.kind, name=span.name,
                              start_line=span.start_line, text=span.text)
    digits = sum(ch.isascii() and ch.isdigit() for m in messages for ch in m["content"])
    return digits, plan_num_predict(messages, options)


def test_a_table_of_numbers_is_cut_so_its_digits_alone_fit_num_ctx():
    """Qwen2's (the default model's), Llama 2's and Mistral's tokenizers make each digit a token:
    a span of a numeric table is cut so that its digits alone, line numbers included, plus the
    answer cap fit num_ctx (counted as 3 characters a token it overflowed 8192 by 1.7x)."""
    options = {"num_ctx": 8192}
    rows = "".join(f"    {', '.join(str(1000000 + 7919 * (r * 8 + c)) for c in range(8))},\n" for r in range(1500))
    spans = split_file("data.py", f"TABLE = [\n{rows}]\n".encode(), max_file_bytes=MAX,
                       max_span_chars=span_char_budget(options))
    assert len(spans) > 1
    for span in spans:
        digits, cap = _digit_tokens_and_ceiling(span, options)
        assert digits + cap <= options["num_ctx"]
        assert cap == effective_options(options)["num_predict"]


def test_a_span_of_blank_lines_is_cut_before_its_numbered_prompt_outgrows_num_ctx():
    """Each line of the prompt carries its number ("5001 | "): a function holding 5000 blank lines
    (1 unit each as text) is cut into parts that each keep the full answer cap, instead of one
    span whose prompt was refused as prompt_too_large and dead-lettered."""
    options = {"num_ctx": 8192}
    spans = split_file("blank.py", ("def f():\n" + "\n" * 5000 + "    return 1\n").encode(), max_file_bytes=MAX,
                       max_span_chars=span_char_budget(options))
    assert len(spans) > 1 and spans[0].start_line == 1 and spans[-1].end_line == 5002
    for span in spans:
        assert _digit_tokens_and_ceiling(span, options)[1] == effective_options(options)["num_predict"]
