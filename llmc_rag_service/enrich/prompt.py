"""The enrichment contract with the model: prompt, JSON schema, validation.

The schema is sent as Ollama's ``format`` (structured outputs, Ollama API doc
"Chat request (Structured outputs)"), so a well-behaved model answers a JSON
object with exactly these fields. The answer is still validated here: an
empty, cut (``done_reason: "length"``), truncated-prompt or malformed answer is
an :class:`InvalidAnswer` with a stable ``reason`` code and is never stored.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from llmc_rag_service.models import Enrichment, budget_units
from llmc_rag_service.config import HostConfig, OllamaConfig
from llmc_rag_service.enrich.ollama import OllamaClient

LIST_FIELDS = ("inputs", "outputs", "side_effects", "pitfalls")

#: JSON schema of an answer (sent as ``format``).
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        **{name: {"type": "array", "items": {"type": "string"}} for name in LIST_FIELDS},
        "usage": {"type": "string"},
    },
    "required": ["summary", *LIST_FIELDS, "usage"],
}

SYSTEM_PROMPT = (
    "You document source code for other programmers and for retrieval tools. "
    "Given one span of code, answer with a JSON object: summary (one or two sentences on what it does), "
    "inputs (parameters and data it reads), outputs (return values and data it produces), "
    "side_effects (I/O, mutation, global state), pitfalls (edge cases, misuse, bugs to watch for), "
    "usage (a short example of calling or using it). Be factual; use empty lists where nothing applies."
)

#: Default cap on answer tokens (``options.num_predict``) when config sets none.
DEFAULT_NUM_PREDICT = 1024
#: The smallest answer cap worth sending; a prompt leaving less room in
#: ``num_ctx`` is :class:`PromptTooLarge`.
MIN_NUM_PREDICT = 256
#: A retried job may get up to this many times the configured answer cap (O9).
MAX_NUM_PREDICT_FACTOR = 4
#: Ollama's default context when ``options.num_ctx`` is not configured.
DEFAULT_NUM_CTX = 2048
#: Conservative characters per token for code (real tokenizers give ~3-4), so
#: estimates err high and a prompt we think fits does fit.
CHARS_PER_TOKEN = 3.0
#: Span text grows by its line-number prefixes ("1234 | "): ~7 chars per line,
#: i.e. 1.4x for lines of 20 chars. Spans are cut to the budget divided by this.
NUMBERING_GROWTH = 1.4
#: An answer whose prompt_eval_count is below this share of our estimate of
#: the span part means the server silently cut the prompt (cases O10).
TRUNCATION_RATIO = 0.5
#: A prompt_eval_count below this many tokens is a prompt served from the
#: runner's cache (a retried job re-evaluates only its last token), not a cut.
CACHED_PROMPT_MAX_TOKENS = 16


class InvalidAnswer(Exception):
    """The model's answer cannot be stored.

    Attributes:
        reason: ``empty_response``, ``length``, ``invalid_json``, ``schema`` or
            ``prompt_truncated``: stable codes used in logs and ``last_error``.
    """

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class PromptTooLarge(Exception):
    """The prompt leaves less than :data:`MIN_NUM_PREDICT` tokens of ``num_ctx``
    for the answer (the span was cut for a larger context): retrying cannot help."""


def estimate_tokens(text: str) -> int:
    """A deliberately high token estimate of ``text`` (:data:`CHARS_PER_TOKEN`)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


#: Tokens of the chat template around each message (role markers etc.).
TEMPLATE_TOKENS_PER_MESSAGE = 10
#: Tokens of a prompt that are not span text: system prompt, the header lines
#: (path, language, kind, name) and the chat template.
PROMPT_OVERHEAD_TOKENS = estimate_tokens(SYSTEM_PROMPT) + 150


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """High estimate of the tokens Ollama evaluates for ``messages`` of ASCII code
    (the truncation check's reference; see :func:`prompt_token_ceiling` for the room)."""
    return sum(estimate_tokens(str(m.get("content") or "")) + TEMPLATE_TOKENS_PER_MESSAGE for m in messages)


def prompt_token_ceiling(messages: list[dict[str, Any]]) -> int:
    """Tokens ``messages`` may take at most: as :func:`estimate_prompt_tokens`, but
    non-ASCII text counted by ``budget_units`` (a token per UTF-8 byte), so a
    prompt of CJK or emoji text is never planned past ``num_ctx``."""
    return sum(math.ceil(budget_units(str(m.get("content") or "")) / CHARS_PER_TOKEN)
               + TEMPLATE_TOKENS_PER_MESSAGE for m in messages)


def chat_client(cfg: OllamaConfig, host: HostConfig | None = None, transport: Any = None) -> OllamaClient:
    """An :class:`~llmc_rag_service.enrich.ollama.OllamaClient` for enrichment
    requests: the answer schema as ``format`` and :func:`effective_options`."""
    return OllamaClient(cfg, host, transport, answer_format=SCHEMA, options=effective_options(cfg.options))


def effective_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``options`` object sent on every request: the configured options
    plus a ``num_predict`` cap. Identical on every request, so the server never
    reloads the model for a changed load-time option (cases O7)."""
    return {"num_predict": DEFAULT_NUM_PREDICT, **dict(options)}


def num_ctx_of(options: Mapping[str, Any]) -> int:
    """The context size in tokens the requests ask for (``num_ctx`` or Ollama's default)."""
    return int(options.get("num_ctx", DEFAULT_NUM_CTX))


def span_char_budget(options: Mapping[str, Any]) -> int:
    """Largest span text whose prompt still fits in ``num_ctx`` with room for
    the answer (``num_predict``) and the fixed prompt parts; spans are split to
    this size when files are read. In ``budget_units`` (characters of ASCII
    text; a non-ASCII UTF-8 byte counts as a whole token)."""
    opts = effective_options(options)
    tokens = num_ctx_of(opts) - int(opts["num_predict"]) - PROMPT_OVERHEAD_TOKENS
    return max(400, int(tokens * CHARS_PER_TOKEN / NUMBERING_GROWTH))


def plan_num_predict(messages: list[dict[str, Any]], options: Mapping[str, Any], attempt: int = 1) -> int:
    """The answer cap for one request: the configured ``num_predict``, doubled
    for each retry up to :data:`MAX_NUM_PREDICT_FACTOR` times (an answer cut
    by the cap, O9), never more than the room the prompt leaves in ``num_ctx``.

    Args:
        attempt: 1-based attempt number of the job.

    Raises:
        PromptTooLarge: less than :data:`MIN_NUM_PREDICT` tokens of room.
    """
    opts = effective_options(options)
    room = num_ctx_of(opts) - prompt_token_ceiling(messages)
    if room < MIN_NUM_PREDICT:
        raise PromptTooLarge(f"prompt of ~{num_ctx_of(opts) - room} tokens leaves {room} of num_ctx "
                             f"{num_ctx_of(opts)} for the answer; raise ollama.options.num_ctx")
    factor = min(2 ** max(0, attempt - 1), MAX_NUM_PREDICT_FACTOR)
    planned: int = min(int(opts["num_predict"]) * factor, room)
    return planned


def build_messages(*, path: str, language: str, kind: str, name: str, start_line: int, text: str) -> list[dict[str, Any]]:
    """Chat messages for one span: path, language, kind and name, then the
    span's full text with its real line numbers."""
    lines = text.split("\n")
    width = len(str(start_line + len(lines) - 1))
    numbered = "\n".join(f"{n:>{width}} | {line}" for n, line in enumerate(lines, start=start_line))
    user = (
        f"File: {path}\nLanguage: {language}\nSpan: {kind} {name} "
        f"(lines {start_line}-{start_line + len(lines) - 1})\n\n{numbered}\n"
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_answer(answer: Mapping[str, Any], prompt_tokens_estimate: int | None = None) -> Enrichment:
    """Validate a ``/api/chat`` answer object into an :class:`Enrichment`.

    Args:
        answer: The final (``done: true``) response object.
        prompt_tokens_estimate: :func:`estimate_prompt_tokens`; when
            given, a much smaller ``prompt_eval_count`` is flagged (O10).

    Raises:
        InvalidAnswer: see the reason codes on the class.
    """
    content = ((answer.get("message") or {}).get("content") or "").strip()
    if answer.get("done_reason") == "length":
        raise InvalidAnswer("length", "answer cut by num_predict or the context size")
    if not content or content == "{}":
        raise InvalidAnswer("empty_response", repr(content[:40]))
    evaluated = answer.get("prompt_eval_count")
    # The fixed prompt prefix may come from the server's cache and not be
    # counted, so only the span part is compared.
    floor = (prompt_tokens_estimate or 0) - PROMPT_OVERHEAD_TOKENS
    if isinstance(evaluated, int) and CACHED_PROMPT_MAX_TOKENS <= evaluated < floor * TRUNCATION_RATIO:
        raise InvalidAnswer("prompt_truncated", f"prompt_eval_count {evaluated} << estimate {prompt_tokens_estimate}")
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise InvalidAnswer("invalid_json", f"{exc.msg} at char {exc.pos}") from exc
    return validate_fields(data)


def validate_fields(data: Any) -> Enrichment:
    """Check the decoded JSON against :data:`SCHEMA` (strictly: right types,
    non-empty summary). Raises :class:`InvalidAnswer` ``schema``."""
    if not isinstance(data, dict):
        raise InvalidAnswer("schema", f"expected an object, got {type(data).__name__}")
    summary = data.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        raise InvalidAnswer("schema", "summary missing or empty")
    lists = {}
    for name in LIST_FIELDS:
        value = data.get(name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidAnswer("schema", f"{name} must be a list of strings")
        lists[name] = [v.strip() for v in value if v.strip()]
    usage = data.get("usage")
    if not isinstance(usage, str):
        raise InvalidAnswer("schema", "usage must be a string")
    return Enrichment(summary=summary.strip(), usage=usage.strip(), **lists)
