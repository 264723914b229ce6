"""The enrichment contract with the model: prompt, JSON schema, validation.

The schema is sent as Ollama's ``format`` (structured outputs, Ollama API doc
"Chat request (Structured outputs)"), so a well-behaved model answers a JSON
object with exactly these fields, each bounded so the whole answer fits the
answer cap (``enrich/answer_schema.py``). The answer is still validated here,
against the same bounds: an empty, cut (``done_reason: "length"``),
truncated-prompt, malformed or over-long answer is an :class:`InvalidAnswer`
with a stable ``reason`` code and is never stored.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from llmc_rag_service.models import Enrichment, budget_units
from llmc_rag_service.config import Config, ConfigError, HostConfig, OllamaConfig
from llmc_rag_service.enrich.answer_schema import LIST_FIELDS, answer_schema, bounds, minimum_tokens
from llmc_rag_service.enrich.ollama import OllamaClient

#: Default cap on answer tokens (``options.num_predict``) when config sets none,
#: for a context of at least twice that; a smaller ``num_ctx`` gets half of it.
DEFAULT_NUM_PREDICT = 3072
#: JSON schema of an answer under the default cap (sent as ``format``; see
#: :func:`~llmc_rag_service.enrich.answer_schema.answer_schema` for other caps).
SCHEMA: dict[str, Any] = answer_schema(DEFAULT_NUM_PREDICT)

SYSTEM_PROMPT = (
    "You document source code for other programmers and for retrieval tools. "
    "Given one span of code, answer with a JSON object: summary (one or two sentences on what it does), "
    "inputs (parameters and data it reads), outputs (return values and data it produces), "
    "side_effects (I/O, mutation, global state), pitfalls (edge cases, misuse, bugs to watch for), "
    "usage (a short example of calling or using it). Be factual and brief: every field has a length limit; "
    "use empty lists where nothing applies."
)

#: The smallest answer cap worth sending (the smallest bounded answer schema);
#: a prompt leaving less room in ``num_ctx`` is :class:`PromptTooLarge`, and
#: a configured ``num_predict`` below it is raised to it.
MIN_NUM_PREDICT = minimum_tokens()
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
    requests: :func:`effective_options` and, as ``format``, the answer schema
    whose longest answer fits their ``num_predict``."""
    options = effective_options(cfg.options)
    return OllamaClient(cfg, host, transport, answer_format=answer_schema(int(options["num_predict"])),
                        options=options)


def effective_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``options`` object sent on every request: the configured options
    plus a ``num_predict`` cap (default :data:`DEFAULT_NUM_PREDICT`, at most half
    of ``num_ctx``; never below :data:`MIN_NUM_PREDICT`, under which no
    bounded answer fits). Identical on every request, so the server never
    reloads the model for a changed load-time option (cases O7)."""
    default = min(DEFAULT_NUM_PREDICT, num_ctx_of(options) // 2)
    return {**dict(options), "num_predict": max(MIN_NUM_PREDICT, int(options.get("num_predict", default)))}


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
    # Not divided by NUMBERING_GROWTH: the cutter counts each line's number itself.
    return max(MIN_SPAN_CHARS, int(tokens * CHARS_PER_TOKEN))


#: The shortest span piece files are split into, in ``budget_units``.
MIN_SPAN_CHARS = 400


def min_num_ctx() -> int:
    """The smallest ``num_ctx`` (tokens) with room for a prompt of the
    shortest span piece and the shortest bounded answer: below it every
    request would be refused as ``prompt_too_large``."""
    span_tokens = math.ceil(MIN_SPAN_CHARS * NUMBERING_GROWTH / CHARS_PER_TOKEN)
    return PROMPT_OVERHEAD_TOKENS + MIN_NUM_PREDICT + span_tokens


def check_num_ctx(config: Config) -> None:
    """Refuse a ``num_ctx`` no request can fit in (e.g. 256), at load time,
    instead of dead-lettering every span.

    Raises:
        ConfigError: ``ollama.options.num_ctx`` below :func:`min_num_ctx`.
    """
    num_ctx = num_ctx_of(config.ollama.options)
    if num_ctx < min_num_ctx():
        raise ConfigError(config.source or "config", "ollama.options.num_ctx",
                          f"{num_ctx} tokens cannot hold one request: the fixed prompt (~{PROMPT_OVERHEAD_TOKENS}), "
                          f"the shortest bounded answer ({MIN_NUM_PREDICT}) and a span need at least "
                          f"{min_num_ctx()}; use 8192 (the model's context, if smaller)")


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


def parse_answer(answer: Mapping[str, Any], prompt_tokens_estimate: int | None = None,
                 schema: Mapping[str, Any] | None = None) -> Enrichment:
    """Validate a ``/api/chat`` answer object into an :class:`Enrichment`.

    Args:
        answer: The final (``done: true``) response object.
        prompt_tokens_estimate: :func:`estimate_prompt_tokens`; when
            given, a much smaller ``prompt_eval_count`` is flagged (O10).
        schema: The schema sent as ``format`` (default :data:`SCHEMA`): its bounds are enforced.

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
    return validate_fields(data, schema)


def validate_fields(data: Any, schema: Mapping[str, Any] | None = None) -> Enrichment:
    """Check the decoded JSON against ``schema`` (default :data:`SCHEMA`) strictly:
    right types, non-empty summary, no other field, every bound (``maxLength``,
    ``maxItems``). Raises :class:`InvalidAnswer` ``schema``."""
    if not isinstance(data, dict):
        raise InvalidAnswer("schema", f"expected an object, got {type(data).__name__}")
    limits = bounds(dict(schema or SCHEMA))
    extra = sorted(set(data) - set(limits))
    if extra:
        raise InvalidAnswer("schema", f"unknown fields {', '.join(map(str, extra))}")
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
    _check_bounds({**lists, "summary": summary, "usage": usage}, limits)
    return Enrichment(summary=summary.strip(), usage=usage.strip(), **lists)


def _check_bounds(fields: Mapping[str, Any], limits: Mapping[str, tuple[int, int | None]]) -> None:
    for name, (max_chars, max_items) in limits.items():
        value = fields[name]
        if max_items is not None and len(value) > max_items:
            raise InvalidAnswer("schema", f"{name} has {len(value)} items, more than {max_items}")
        for text in value if max_items is not None else [value]:
            if len(text) > max_chars:
                raise InvalidAnswer("schema", f"{name} longer than {max_chars} characters")
