"""What the emulator answers: JSON filling a ``format`` schema, or plain text.

Ollama's structured outputs (API doc, "Chat request (Structured outputs)")
constrain the model's tokens to the schema; the emulator writes a document
that conforms, honouring ``maxLength``/``minLength`` and ``minItems``/``maxItems``
the way a grammar-constrained model must.
"""

from __future__ import annotations

import json
from typing import Any


def fill_schema(schema: Any, hint: str, _root: Any = None, _name: str = "value") -> Any:
    """A JSON value conforming to a JSON schema (object/array/string/number/integer/boolean).

    Every property is filled (so all of ``required`` are present); strings name
    their property and carry ``hint``; ``enum``/``const``/``anyOf``/``$ref`` honoured.
    """
    root = schema if _root is None else _root
    if not isinstance(schema, dict):
        return hint
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return fill_schema(target, hint, root, _name)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return fill_schema(schema[key][0], hint, root, _name)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return _fill_typed(kind, schema, hint, root, _name)


def _fill_typed(kind: str, schema: dict[str, Any], hint: str, root: Any, name: str) -> Any:
    if kind == "object":
        props = schema.get("properties", {})
        return {k: fill_schema(v, hint, root, k) for k, v in props.items()}
    if kind == "array":
        if schema.get("maxItems") == 0:
            return []
        count = max(1, schema.get("minItems", 1))
        return [fill_schema(schema.get("items", {}), hint, root, name) for _ in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1)
        return int(low) if kind == "integer" else float(low)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    limit = schema.get("maxLength")
    text = placeholder(name, hint, limit).ljust(schema.get("minLength", 0), ".")
    return text[:limit] if limit is not None else text


def placeholder(name: str, hint: str, limit: int | None = None) -> str:
    """``"emulated NAME for HINT"`` in at most ``limit`` characters, never cut
    inside a word or a number: the hint as :func:`fit_tail` fits it after
    ``emulated NAME for``, else after the shorter ``NAME``, else alone (a list
    item of the smallest schema: ``(lines 12-30)``), else ``emulated NAME``
    (cut only if even that is longer than ``limit``)."""
    if limit is None:
        return f"emulated {name} for {hint}"
    for prefix in (f"emulated {name} for ", f"{name} ", ""):
        tail = fit_tail(hint, limit - len(prefix))
        if tail:
            return prefix + tail
    return f"emulated {name}"[:limit]


def fit_tail(text: str, limit: int) -> str | None:
    """``text`` if it has at most ``limit`` characters; else without its leading
    ``"; "`` parts (``File: …; Language: …``), then without the leading words of
    its last part, so its end (``(lines 3-9)``) stays whole: never starting
    inside parentheses; None if nothing fits."""
    parts = text.split("; ")
    words = parts[-1].split(" ")
    tails = ["; ".join(parts[i:]) for i in range(len(parts))] + [" ".join(words[k:]) for k in range(1, len(words))]
    return next((tail for tail in tails if len(tail) <= limit and tail.count("(") == tail.count(")")), None)


#: Non-empty lines of the last user message that an answer mentions, and their most characters.
HINT_LINES, HINT_CHARS = 3, 200


def hint(request: dict[str, Any]) -> str:
    """The first :data:`HINT_LINES` non-empty lines of the last user message (or
    the prompt) joined by ``; ``, at most :data:`HINT_CHARS` characters (longer:
    whole leading lines, then leading words dropped, see :func:`fit_tail`):
    for this project's prompt ``File: x.py; Language: python; Span: function f
    (lines 3-9)``, so each span's placeholder answer names that span."""
    users = [m for m in request.get("messages") or [] if m.get("role") == "user"]
    text = str(users[-1].get("content") or "") if users else str(request.get("prompt") or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "nothing"
    joined = "; ".join(lines[:HINT_LINES])
    return fit_tail(joined, HINT_CHARS) or joined[:HINT_CHARS]


def default_answer(request: dict[str, Any]) -> str:
    """The emulator's answer text for a request JSON.

    ``format`` a JSON schema: a conforming JSON document; ``"json"``: a JSON
    object; no format: plain text. All mention the last user message.
    """
    fmt, about = request.get("format"), hint(request)
    if isinstance(fmt, dict):
        return json.dumps(fill_schema(fmt, about))
    if fmt == "json":
        return json.dumps({"answer": about})
    return f"Emulated answer about: {about}"
