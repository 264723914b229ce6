"""The Ollama client: one error taxonomy, the request shape, streaming, deadlines, prompt budget."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from llmc_rag_service.enrich import ollama as ol
from llmc_rag_service.config import OllamaConfig
from llmc_rag_service.enrich.answer_schema import answer_schema
from llmc_rag_service.enrich.prompt import (MIN_NUM_PREDICT, chat_client, InvalidAnswer, PromptTooLarge, build_messages,
                                         effective_options, estimate_prompt_tokens, parse_answer, plan_num_predict,
                                         span_char_budget)
from llmc_rag_service.testing.emulator import OllamaEmulator

MESSAGES = [{"role": "user", "content": "def f(): pass"}]
GOOD = json.dumps({"summary": "s", "inputs": [], "outputs": [], "side_effects": [], "pitfalls": [], "usage": "f()"})


def httpx_exception_classes() -> set[type]:
    """Every exception class httpx defines, found by walking down from the ones it exports."""
    found: set[type] = set()
    todo = [c for c in vars(httpx).values() if isinstance(c, type) and issubclass(c, BaseException)
            and c.__module__.startswith("httpx")]
    while todo:
        cls = todo.pop()
        if cls not in found and cls.__module__.startswith("httpx"):
            found.add(cls)
            todo.extend(cls.__subclasses__())
    return found


def make_exception(cls: type) -> Exception:
    request = httpx.Request("POST", "http://x/api/chat")
    if cls is httpx.HTTPStatusError:
        return cls("boom", request=request, response=httpx.Response(502, request=request, json={"error": "bad"}))
    try:
        return cls("boom")
    except TypeError:  # the StreamError family takes no message
        return cls()


def client_for(handler, **cfg) -> ol.OllamaClient:
    """A client whose requests go to ``handler`` (httpx MockTransport)."""
    return chat_client(OllamaConfig(url="http://ollama.test", model="m", **cfg),
                       transport=httpx.MockTransport(handler))


def ndjson(*objs: dict) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def test_every_httpx_exception_class_is_mapped():
    """Each exception class in httpx's hierarchy has its own entry in the taxonomy table."""
    classes = httpx_exception_classes()
    assert len(classes) >= 25
    assert sorted(c.__name__ for c in classes - set(ol.HTTPX_ERRORS)) == []


@pytest.mark.parametrize("cls", sorted(httpx_exception_classes(), key=lambda c: c.__name__))
def test_httpx_errors_become_taxonomy_errors_chained(cls):
    """Raised inside the mapping, every httpx error becomes its taxonomy class, chained with ``from``."""
    exc = make_exception(cls)
    with pytest.raises(ol.OllamaError) as info:
        with ol._mapped("m"):
            raise exc
    expected = ol.ServerError if cls is httpx.HTTPStatusError else ol.HTTPX_ERRORS[cls]  # judged by its 502
    assert type(info.value) is expected and info.value.__cause__ is exc


@pytest.mark.parametrize("status, body, kind, policy", [
    (404, {"error": "model 'm' not found"}, ol.ModelMissing, "pause"),
    (503, {"error": "server busy, please try again.  maximum pending requests exceeded"}, ol.Busy, "release"),
    (429, {"error": "slow down"}, ol.Busy, "release"),
    (500, {"error": "llama runner process has terminated: exit status 2"}, ol.ServerError, "retry"),
    (400, {"error": 'time: missing unit in duration "300"'}, ol.BadRequest, "dead_letter"),
])
def test_error_answers_map_to_kinds_with_one_policy(status, body, kind, policy):
    """Ollama's error answers map by status to a kind whose policy is fixed; the server's message is kept."""
    client = client_for(lambda request: httpx.Response(status, json=body))
    with pytest.raises(kind) as info:
        client.chat(MESSAGES)
    assert info.value.policy == policy and body["error"] in str(info.value)


def test_retry_after_is_read_as_seconds_or_http_date():
    """Retry-After is honoured as seconds or as an HTTP date."""
    for header, low, high in (("7", 7, 7), (time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30)), 25, 31)):
        client = client_for(lambda r: httpx.Response(503, json={"error": "busy"}, headers={"Retry-After": header}))
        with pytest.raises(ol.Busy) as info:
            client.chat(MESSAGES)
        assert low <= info.value.retry_after_s <= high


def test_body_carries_keep_alive_format_options_think_and_stream():
    """The body has keep_alive as configured, the schema, stream true, think false; num_predict may vary, load-time options not."""
    client = client_for(lambda r: httpx.Response(200), keep_alive=-1, options={"num_ctx": 4096, "num_batch": 256})
    body, retry = client.request_body(MESSAGES), client.request_body(MESSAGES, num_predict=4096)
    assert body["keep_alive"] == -1 and body["stream"] is True and body["think"] is False
    # The default cap is half the context at most (here 2048), and the schema is bounded to fit it.
    assert body["format"]["required"] and body["options"] == {"num_predict": 2048, "num_ctx": 4096, "num_batch": 256}
    assert body["format"] == answer_schema(2048)
    assert {k: v for k, v in retry["options"].items() if k != "num_predict"} == {"num_ctx": 4096, "num_batch": 256}


def test_stream_is_joined_and_thinking_is_ignored():
    """Streamed chunks are joined into one content; message.thinking never enters it (O16)."""
    chunks = ndjson({"message": {"role": "assistant", "content": "", "thinking": "hmm"}, "done": False},
                    {"message": {"role": "assistant", "content": GOOD[:10]}, "done": False},
                    {"message": {"role": "assistant", "content": GOOD[10:]}, "done": False},
                    {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
                     "prompt_eval_count": 9})
    answer = client_for(lambda r: httpx.Response(200, content=chunks)).chat(MESSAGES)
    assert answer["message"]["content"] == GOOD and answer["prompt_eval_count"] == 9
    assert parse_answer(answer).usage == "f()"


def test_stream_ending_without_done_is_a_disconnect():
    """A stream that ends without done: true is a failed attempt, not an answer."""
    chunks = ndjson({"message": {"role": "assistant", "content": "{"}, "done": False})
    with pytest.raises(ol.Disconnected):
        client_for(lambda r: httpx.Response(200, content=chunks)).chat(MESSAGES)


def test_closed_port_is_unavailable():
    """Nothing listening maps to Unavailable (pause the host, keep attempts)."""
    with OllamaEmulator() as emu:
        url = emu.url
    with pytest.raises(ol.Unavailable):
        chat_client(OllamaConfig(url=url, model="test-model")).chat(MESSAGES)


def test_stall_after_the_first_chunk_hits_the_chunk_deadline(monkeypatch):
    """Once the answer started, a silence longer than CHUNK_TIMEOUT_S ends the request (not load_timeout_s)."""
    monkeypatch.setattr(ol, "CHUNK_TIMEOUT_S", 0.3)
    with OllamaEmulator() as emu:
        emu.inject("stall", seconds=30)
        client = chat_client(OllamaConfig(url=emu.url, model="test-model", load_timeout_s=20, timeout_s=20))
        started = time.monotonic()
        with pytest.raises(ol.RequestTimeout):
            client.chat(MESSAGES)
        assert time.monotonic() - started < 10


def test_whole_answer_deadline_counts_from_the_first_byte():
    """An answer still trickling timeout_s after its first byte is a RequestTimeout."""
    # The first byte comes at half the latency (0.75 s), the answer ends at 1.5 s: 0.3 s after the first byte
    # it is still trickling.
    with OllamaEmulator(latency_s=1.5) as emu:
        client = chat_client(OllamaConfig(url=emu.url, model="test-model", load_timeout_s=20, timeout_s=0.3))
        with pytest.raises(ol.RequestTimeout, match="timeout_s"):
            client.chat(MESSAGES)


def test_prompt_at_the_span_budget_fits_num_ctx_with_the_answer():
    """Every part of a span cut to the budget (lines of 20+ chars, line numbers past 9990) gives a
    prompt that leaves num_predict room in num_ctx (O10)."""
    from llmc_rag_service.index.spans import split_source

    for options in ({"num_ctx": 8192}, {"num_ctx": 2048, "num_predict": 1000}, {}):
        cap = effective_options(options)["num_predict"]
        source = "\n" * 9988 + "def method(x):\n" + "    value = compute(x)\n" * 3000
        parts = split_source(source, "python", max_span_chars=span_char_budget(options))
        assert len(parts) > 1
        for part in parts:
            messages = build_messages(path="pkg/module.py", language="python", kind="function",
                                      name=part.name, start_line=part.start_line, text=part.text)
            num_ctx = options.get("num_ctx", 2048)
            assert estimate_prompt_tokens(messages) + cap <= num_ctx
            assert plan_num_predict(messages, options) == cap == options.get("num_predict", min(3072, num_ctx // 2))


def test_num_predict_grows_on_retries_within_the_context():
    """Retries get a larger answer cap (x2, x4), never beyond the room the prompt leaves in num_ctx (O9)."""
    caps = [plan_num_predict(MESSAGES, {"num_ctx": 8192, "num_predict": 1000}, a) for a in (1, 2, 3, 9)]
    assert caps == [1000, 2000, 4000, 4000]
    assert plan_num_predict(MESSAGES, {"num_ctx": 2048, "num_predict": 1500}, 3) == 2048 - estimate_prompt_tokens(MESSAGES)
    with pytest.raises(PromptTooLarge):
        plan_num_predict([{"role": "user", "content": "x" * 3 * 2048}], {"num_ctx": 2048})
    assert MIN_NUM_PREDICT > 0


def test_small_prompt_eval_count_from_the_cache_is_not_a_truncation():
    """A retried prompt served from the runner's cache (prompt_eval_count ~1) is not flagged; a cut one is."""
    answer = {"message": {"content": GOOD}, "done": True, "done_reason": "stop", "prompt_eval_count": 1}
    assert parse_answer(answer, 5000).summary == "s"
    with pytest.raises(InvalidAnswer, match="prompt_truncated"):
        parse_answer({**answer, "prompt_eval_count": 1024}, 5000)
