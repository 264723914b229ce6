"""The enrichment's answer schema, every field bounded so a whole answer fits the answer cap.

Ollama turns ``format`` into a llama.cpp grammar (``json-schema-to-grammar``)
that constrains the model's tokens, so a model keeps writing until the
grammar lets it stop or ``num_predict`` runs out (``done_reason: "length"``).
With unbounded strings and lists a small model rambles into the cap and no
answer is ever complete. Here every string has a ``maxLength``, every list a
``maxItems`` and no other property is allowed, chosen so that the longest
answer the grammar admits, counted one token per character (no tokenizer
makes a token of less than a character), fits the cap:

* each string: its quotes and ``maxLength`` characters (an escape such as
  ``\\n`` is one of them, as the grammar counts it);
* the JSON syntax: braces, brackets, keys, colons, commas;
* whitespace: the grammar's ``space`` rule (``| " " | "\\n" [ \\t]{0,20}``)
  may put :data:`GRAMMAR_SPACE_CHARS` characters after every token of the
  syntax, so it is counted at that size.

:func:`answer_schema` builds the schema for a cap (the longest strings, then
the most list items, that fit); :func:`max_answer_chars` is the count above,
for any schema of objects, arrays and strings. ``prompt.validate_fields``
enforces the same bounds on what comes back.
"""

from __future__ import annotations

import functools
from typing import Any

LIST_FIELDS = ("inputs", "outputs", "side_effects", "pitfalls")
#: Most characters the grammar's ``space`` rule admits at one place: a newline and 20 spaces or tabs.
GRAMMAR_SPACE_CHARS = 22
#: Most items of each list (fewer when the cap is small).
MAX_ITEMS = 3
#: Shares of the room left for text: summary, usage; the lists share the rest equally.
SUMMARY_SHARE, USAGE_SHARE = 0.24, 0.16
#: The shortest bound worth giving a list item or the usage, in characters.
MIN_TEXT_CHARS = 24


def max_answer_chars(schema: dict[str, Any]) -> int:
    """The longest JSON text ``schema`` admits under Ollama's grammar, in characters
    (see the module docstring). Raises ValueError for a string without
    ``maxLength``, an array without ``maxItems`` or an object that allows other properties."""
    space = GRAMMAR_SPACE_CHARS
    kind = schema.get("type")
    if kind == "string":
        if "maxLength" not in schema:
            raise ValueError("a string without maxLength is unbounded")
        return 2 + int(schema["maxLength"]) + space
    if kind == "array":
        if "maxItems" not in schema:
            raise ValueError("an array without maxItems is unbounded")
        items = int(schema["maxItems"])
        return 1 + space + items * max_answer_chars(schema["items"]) + max(0, items - 1) * (1 + space) + 1 + space
    if kind == "object":
        if schema.get("additionalProperties", True) is not False:
            raise ValueError("an object that allows other properties is unbounded")
        props = schema.get("properties", {})
        pairs = sum(len(name) + 2 + space + 1 + space + max_answer_chars(sub) for name, sub in props.items())
        return 1 + space + pairs + max(0, len(props) - 1) * (1 + space) + 1 + space
    raise ValueError(f"cannot bound a schema of type {kind!r}")


def _schema(summary: int, usage: int, items: int, item_chars: int) -> dict[str, Any]:
    item = {"type": "string", "maxLength": item_chars}
    return {
        "type": "object",
        "properties": {
            "summary": {"type": "string", "minLength": 1, "maxLength": summary},
            **{name: {"type": "array", "items": item, "maxItems": items} for name in LIST_FIELDS},
            "usage": {"type": "string", "maxLength": usage},
        },
        "required": ["summary", *LIST_FIELDS, "usage"],
        "additionalProperties": False,
    }


def answer_schema(max_tokens: int) -> dict[str, Any]:
    """The answer schema whose longest answer fits ``max_tokens`` (the ``num_predict`` cap).

    The room left by the syntax is shared out by :data:`SUMMARY_SHARE`,
    :data:`USAGE_SHARE` and the lists; with a small cap the lists hold fewer
    items. Raises ValueError below :func:`minimum_tokens`.
    """
    schema = _fitting(max_tokens)
    if schema is None:
        raise ValueError(f"an answer cap of {max_tokens} tokens leaves no room for a bounded answer "
                         f"(at least {minimum_tokens()} are needed)")
    return schema


def _fitting(max_tokens: int) -> dict[str, Any] | None:
    for items in range(MAX_ITEMS, 0, -1):
        room = max_tokens - max_answer_chars(_schema(0, 0, items, 0))
        usage = int(room * USAGE_SHARE)
        item_chars = int(room * (1 - SUMMARY_SHARE - USAGE_SHARE) / (len(LIST_FIELDS) * items))
        if min(usage, item_chars) >= MIN_TEXT_CHARS:
            summary = room - usage - item_chars * items * len(LIST_FIELDS)  # what rounding left over, too
            return _schema(summary, usage, items, item_chars)
    return None


@functools.cache
def minimum_tokens() -> int:
    """The smallest cap :func:`answer_schema` accepts (one item per list, the shortest texts)."""
    low, high = max_answer_chars(_schema(0, 0, 1, 0)), 1 << 16  # _fitting(high) exists
    while low < high:  # the least cap with a schema (having one is monotonic in the cap)
        middle = (low + high) // 2
        if _fitting(middle) is None:
            low = middle + 1
        else:
            high = middle
    return low


def bounds(schema: dict[str, Any]) -> dict[str, tuple[int, int | None]]:
    """Each field's bounds as validation checks them: name -> (maxLength of the
    string or of each item, maxItems of a list or None for a string)."""
    out: dict[str, tuple[int, int | None]] = {}
    for name, sub in schema["properties"].items():
        if sub["type"] == "array":
            out[name] = (int(sub["items"]["maxLength"]), int(sub["maxItems"]))
        else:
            out[name] = (int(sub["maxLength"]), None)
    return out
