"""The emulator's placeholder answers fit the schema's bounds whole: the span's line range is never cut."""

from __future__ import annotations

import json

import httpx
import pytest

from llmc_rag_service.enrich.answer_schema import answer_schema, minimum_tokens
from llmc_rag_service.enrich.prompt import SCHEMA, build_messages, validate_fields
from llmc_rag_service.testing.answers import default_answer, fill_schema, fit_tail, hint
from llmc_rag_service.testing.emulator import OllamaEmulator

LINES = "(lines 1234-1260)"


def _request(path: str, name: str, schema: dict = SCHEMA) -> dict:
    """The chat request body this project sends for a 27-line span at line 1234 (messages and format)."""
    messages = build_messages(path=path, language="python", kind="method", name=name, start_line=1234,
                              text="\n".join(f"x{i} = {i}" for i in range(27)))
    return {"model": "test-model", "messages": messages, "format": schema, "stream": False}


def _strings(answer: dict) -> list[str]:
    return [answer["summary"], answer["usage"], *(item for key in ("inputs", "outputs", "side_effects", "pitfalls")
                                                  for item in answer[key])]


@pytest.mark.parametrize("path_chars", [4, 40, 70, 100, 160, 260])
@pytest.mark.parametrize("schema", [SCHEMA, answer_schema(minimum_tokens())], ids=["default", "smallest"])
def test_every_placeholder_names_the_line_range_whole_or_not_at_all(path_chars, schema):
    """For short and long paths, with the default bounds and the smallest the schema allows: every string
    of the answer is valid, and one that mentions the line range has it whole; list items always do."""
    path = "/".join(["pkg"] * (path_chars // 4)) + ".py"
    answer = json.loads(default_answer(_request(path, "Registry.resolve_dependency_graph", schema)))
    validate_fields(answer, schema)
    for text in _strings(answer):
        assert ("1234" not in text and "(lines" not in text) or text.endswith(LINES), text
    assert all(item.endswith(LINES) for key in ("inputs", "pitfalls") for item in answer[key]), answer


def test_a_short_prompt_is_named_in_full():
    """A short path and name: every placeholder says all three prompt lines, as before."""
    answer = json.loads(default_answer(_request("a.py", "f")))
    expected = f"File: a.py; Language: python; Span: method f {LINES}"
    assert answer["summary"] == f"emulated summary for {expected}"
    assert answer["inputs"] == [f"emulated inputs for {expected}"]


def test_an_over_long_span_line_keeps_its_end():
    """A name so long the Span line alone does not fit an item: its leading words go, the range stays."""
    name = "very_long_function_name_" * 4
    answer = json.loads(default_answer(_request("a.py", name)))
    assert answer["inputs"][0].startswith("emulated inputs for ") and answer["inputs"][0].endswith(LINES)
    assert name.strip("_") not in answer["inputs"][0]
    assert len(hint(_request("x/" * 120 + "a.py", "f"))) <= 200


def test_fit_tail_drops_leading_parts_then_words_and_gives_up_on_one_long_word():
    assert fit_tail("File: a; Span: f (lines 1-2)", 100) == "File: a; Span: f (lines 1-2)"
    assert fit_tail("File: a; Span: f (lines 1-2)", 21) == "Span: f (lines 1-2)"
    assert fit_tail("File: a; Span: f (lines 1-2)", 12) == "(lines 1-2)"
    assert fit_tail("File: a; Span: f (lines 1-2)", 10) is None  # never '1-2)' alone
    assert fit_tail("abcdefgh", 4) is None
    assert fill_schema({"type": "string", "maxLength": 24}, "Span: f (lines 1234-1260)", _name="inputs") == \
        "inputs (lines 1234-1260)"  # the shorter wording
    assert fill_schema({"type": "string", "maxLength": 17}, "Span: f (lines 1234-1260)") == "(lines 1234-1260)"
    assert fill_schema({"type": "string", "maxLength": 5}, "xyzxyz") == "emula"  # nothing whole fits: as before


@pytest.mark.timeout(30)
def test_the_emulator_server_answers_the_fitted_placeholder():
    """Through the real emulator on 127.0.0.1: /api/chat's message content is that answer."""
    body = _request("/".join(["pkg"] * 30) + ".py", "Registry.resolve_dependency_graph")
    with OllamaEmulator() as emu:
        reply = httpx.post(f"{emu.url}/api/chat", json=body, timeout=20).json()
    answer = json.loads(reply["message"]["content"])
    assert answer == json.loads(default_answer(body))
    assert all(item.endswith(LINES) for item in answer["outputs"])
