"""The answer schema bounds every field, the bounds fit the answer cap, and validation enforces them."""

from __future__ import annotations

import json

import pytest

from llmc_rag_service.config import OllamaConfig
from llmc_rag_service.enrich.answer_schema import (GRAMMAR_SPACE_CHARS, LIST_FIELDS, answer_schema, bounds,
                                                   max_answer_chars, minimum_tokens)
from llmc_rag_service.enrich.prompt import (DEFAULT_NUM_PREDICT, MIN_NUM_PREDICT, SCHEMA, InvalidAnswer, chat_client,
                                            effective_options, parse_answer, validate_fields)
from llmc_rag_service.testing.emulator import OllamaEmulator

CAPS = [minimum_tokens(), 1024, 1500, 2048, DEFAULT_NUM_PREDICT, 8192]


def longest_answer(schema: dict) -> str:
    """The longest text the grammar admits: every string and list full, the most whitespace at every place."""
    ws = "\n" + " " * (GRAMMAR_SPACE_CHARS - 1)

    def value(sub: dict) -> str:
        if sub["type"] == "string":
            return '"' + "x" * sub["maxLength"] + '"' + ws
        if sub["type"] == "array":
            return "[" + ws + ("," + ws).join(value(sub["items"]) for _ in range(sub["maxItems"])) + "]" + ws
        pairs = [f'"{name}"{ws}:{ws}{value(v)}' for name, v in sub["properties"].items()]
        return "{" + ws + ("," + ws).join(pairs) + "}" + ws

    return value(schema)


@pytest.mark.parametrize("cap", CAPS)
def test_every_field_is_bounded_and_the_longest_answer_fits_the_cap(cap):
    """Strings have maxLength, lists maxItems, no other property; the longest admissible answer,
    one token per character, is within the cap."""
    schema = answer_schema(cap)
    assert schema["additionalProperties"] is False and set(schema["required"]) == set(schema["properties"])
    for name, sub in schema["properties"].items():
        assert ("maxItems" in sub and "maxLength" in sub["items"]) if name in LIST_FIELDS else "maxLength" in sub
    text = longest_answer(schema)
    assert len(text) == max_answer_chars(schema) <= cap
    assert json.loads(text)["summary"] == "x" * schema["properties"]["summary"]["maxLength"]


def test_a_larger_cap_gives_more_room_and_the_default_schema_is_generous():
    """Bounds grow with the cap; under the default cap a summary has hundreds of characters and 3 items per list."""
    sizes = [bounds(answer_schema(cap))["summary"][0] for cap in CAPS]
    assert sizes == sorted(sizes)
    assert SCHEMA == answer_schema(DEFAULT_NUM_PREDICT)
    assert bounds(SCHEMA)["summary"][0] >= 400 and bounds(SCHEMA)["pitfalls"] >= (80, 3)


def test_a_cap_too_small_for_any_bounded_answer_is_refused():
    """Below the minimum no schema exists; effective_options raises a configured cap to it."""
    with pytest.raises(ValueError, match="no room"):
        answer_schema(minimum_tokens() - 1)
    assert MIN_NUM_PREDICT == minimum_tokens()
    assert effective_options({"num_predict": 100})["num_predict"] == MIN_NUM_PREDICT
    assert effective_options({"num_ctx": 4096})["num_predict"] == 2048
    assert effective_options({"num_ctx": 32768})["num_predict"] == DEFAULT_NUM_PREDICT


def test_an_unbounded_schema_cannot_be_counted():
    """A string without maxLength, a list without maxItems or an open object is refused by the count."""
    for schema in ({"type": "string"}, {"type": "array", "items": {"type": "string", "maxLength": 1}},
                   {"type": "object", "properties": {}}):
        with pytest.raises(ValueError, match="unbounded"):
            max_answer_chars(schema)


def answer(**fields) -> dict:
    base = {"summary": "Parses JSON.", "inputs": ["body"], "outputs": [], "side_effects": [], "pitfalls": [],
            "usage": "f(b)"}
    return {**base, **fields}


def test_validation_enforces_the_same_bounds():
    """At the bound an answer is stored; one character or one item more, or a field of its own, is refused."""
    schema = answer_schema(2048)
    limits = bounds(schema)
    summary_max, (item_max, items_max) = limits["summary"][0], limits["pitfalls"]
    assert validate_fields(answer(summary="s" * summary_max, pitfalls=["p" * item_max] * items_max), schema)
    for bad, why in [(answer(summary="s" * (summary_max + 1)), "summary longer"),
                     (answer(pitfalls=["p"] * (items_max + 1)), "pitfalls has 4 items"),
                     (answer(pitfalls=["p" * (item_max + 1)]), "pitfalls longer"),
                     (answer(extra="x"), "unknown fields extra")]:
        with pytest.raises(InvalidAnswer, match=why) as info:
            validate_fields(bad, schema)
        assert info.value.reason == "schema"


def test_the_client_sends_the_schema_of_its_cap_and_the_emulator_answer_passes_validation():
    """chat_client's format is the schema of its num_predict; a grammar-bound answer validates against it."""
    with OllamaEmulator() as emu:
        client = chat_client(OllamaConfig(url=emu.url, model="test-model", options={"num_ctx": 4096}))
        try:
            reply = client.chat([{"role": "user", "content": "def f(): pass " * 40}])
        finally:
            client.close()
    assert client.answer_format == answer_schema(2048)
    assert reply["done_reason"] == "stop" and parse_answer(reply, schema=client.answer_format).summary
