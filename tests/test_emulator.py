"""The Ollama emulator behaves like a real Ollama server (rows O1-O17 of ollama_behaviours.md)."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import httpx
import pytest

from llmc_rag_service.testing.clock import ManualClock
from llmc_rag_service.testing.emulator import (
    BUSY_MSG,
    FOREVER_NS,
    LOAD_TIMEOUT_MSG,
    RUNNER_CRASH_MSG,
    OllamaEmulator,
    estimate_tokens,
    fill_schema,
    parse_keep_alive,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "minLength": 1},
        "inputs": {"type": "array", "items": {"type": "string"}},
        "lines": {"type": "integer", "minimum": 1},
        "score": {"type": "number"},
        "pure": {"type": "boolean"},
        "kind": {"type": "string", "enum": ["function", "class"]},
    },
    "required": ["summary", "inputs", "lines", "pure", "kind"],
}


def chat(url: str, content: str = "explain def f(): pass", model: str = "test-model",
         timeout: float | httpx.Timeout = 10.0, **extra) -> httpx.Response:
    """POST /api/chat with stream false unless ``extra`` says otherwise."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": False}
    return httpx.post(f"{url}/api/chat", json={**body, **extra}, timeout=timeout)


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``condition`` until true; fail the test past the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        threading.Event().wait(0.01)


def ps_models(url: str) -> list[dict]:
    return httpx.get(f"{url}/api/ps").json()["models"]


def expires_in_s(entry: dict) -> float:
    at = datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00"))
    return (at - datetime.now(timezone.utc)).total_seconds()


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=8) as executor:
        yield executor


# -- shapes -------------------------------------------------------------------

def test_chat_non_stream_shape(ollama: OllamaEmulator) -> None:
    """A non-streamed chat answer is one JSON object with Ollama's fields and integer ns durations."""
    resp = chat(ollama.url)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["model"] == "test-model" and body["done"] is True and body["done_reason"] == "stop"
    assert body["message"]["role"] == "assistant" and body["message"]["content"]
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration",
                "prompt_eval_count", "eval_count"):
        assert isinstance(body[key], int), key
    assert body["created_at"].endswith("Z")


def test_chat_stream_is_ndjson_ending_with_done(ollama: OllamaEmulator) -> None:
    """A streamed chat answer is NDJSON: several content chunks, then one done chunk with counts."""
    body = {"model": "test-model", "messages": [{"role": "user", "content": "stream me"}]}
    with httpx.stream("POST", f"{ollama.url}/api/chat", json=body, timeout=10) as resp:
        assert resp.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert len(lines) >= 3
    assert all(not line["done"] for line in lines[:-1]) and lines[-1]["done"] is True
    text = "".join(line["message"]["content"] for line in lines)
    assert "stream me" in text
    assert lines[-1]["eval_count"] == estimate_tokens(text)
    assert isinstance(lines[-1]["total_duration"], int)


def test_generate_answers_in_response_field(ollama: OllamaEmulator) -> None:
    """/api/generate answers with a ``response`` string."""
    resp = httpx.post(f"{ollama.url}/api/generate",
                      json={"model": "test-model", "prompt": "say hi", "stream": False})
    assert resp.status_code == 200 and "say hi" in resp.json()["response"]


def test_schema_format_answer_conforms(ollama: OllamaEmulator) -> None:
    """With a JSON-schema format the answer is a JSON document of the schema's types."""
    doc = json.loads(chat(ollama.url, "def add(a, b)", format=SCHEMA).json()["message"]["content"])
    assert set(SCHEMA["required"]) <= set(doc)
    assert isinstance(doc["summary"], str) and "def add(a, b)" in doc["summary"]
    assert all(isinstance(x, str) for x in doc["inputs"]) and doc["inputs"]
    assert isinstance(doc["lines"], int) and doc["lines"] >= 1
    assert isinstance(doc["score"], float) and doc["pure"] is True and doc["kind"] == "function"


def test_answers_differ_per_prompt(ollama: OllamaEmulator) -> None:
    """Two prompts get two different answers."""
    first = chat(ollama.url, "alpha", format=SCHEMA).json()["message"]["content"]
    second = chat(ollama.url, "beta", format=SCHEMA).json()["message"]["content"]
    assert first != second


def test_json_format_gives_object_and_no_format_gives_text(ollama: OllamaEmulator) -> None:
    """``format: "json"`` yields a JSON object; no format yields plain text."""
    assert isinstance(json.loads(chat(ollama.url, format="json").json()["message"]["content"]),
                      dict)
    with pytest.raises(ValueError):
        json.loads(chat(ollama.url).json()["message"]["content"])


def test_fill_schema_follows_refs_and_unions() -> None:
    """The schema filler resolves $ref, anyOf and nullable types."""
    schema = {"$defs": {"Item": {"type": "object", "properties": {"n": {"type": ["integer", "null"]}}}},
              "type": "object",
              "properties": {"item": {"$ref": "#/$defs/Item"},
                             "either": {"anyOf": [{"type": "boolean"}, {"type": "string"}]}}}
    assert fill_schema(schema, "h") == {"item": {"n": 1}, "either": True}


def test_invalid_format_string_is_a_500(ollama: OllamaEmulator) -> None:
    """A format that is neither "json" nor a schema object fails as Ollama's runner does."""
    resp = chat(ollama.url, format="xml")
    assert resp.status_code == 500 and "invalid format" in resp.json()["error"]


def test_custom_answer_callable_is_used() -> None:
    """The ``answer`` callable maps the request JSON to the message content."""
    with OllamaEmulator(answer=lambda req: f"n={len(req['messages'])}") as emu:
        assert chat(emu.url).json()["message"]["content"] == "n=1"


def test_version_tags_and_root(ollama: OllamaEmulator) -> None:
    """/api/version, /api/tags and / answer like Ollama."""
    assert httpx.get(f"{ollama.url}/api/version").json()["version"]
    tags = httpx.get(f"{ollama.url}/api/tags").json()["models"]
    assert [t["name"] for t in tags] == ["test-model:latest"]
    assert {"model", "modified_at", "size", "digest", "details"} <= set(tags[0])
    assert httpx.get(ollama.url).text == "Ollama is running"


def test_counts_recorded_requests(ollama: OllamaEmulator) -> None:
    """Every request is recorded with its path, JSON body, status and times."""
    chat(ollama.url)
    httpx.get(f"{ollama.url}/api/ps")
    assert ollama.count("/api/chat") == 1 and ollama.count("/api/ps") == 1
    rec = ollama.requests[0]
    assert rec.json["model"] == "test-model" and rec.status == 200 and rec.t_end >= rec.t_start


# -- models: missing, loading, keep_alive -----------------------------------------

def test_unknown_model_is_404(ollama: OllamaEmulator) -> None:
    """A model that is not installed gets 404 ``model 'NAME' not found`` (O11)."""
    resp = chat(ollama.url, model="nope:7b")
    assert resp.status_code == 404 and resp.json() == {"error": "model 'nope:7b' not found"}


def test_install_and_uninstall_change_what_is_served(ollama: OllamaEmulator) -> None:
    """An installed model appears in /api/tags and is served; an uninstalled one is 404 (O11)."""
    assert chat(ollama.url, model="late").status_code == 404
    ollama.install("late")
    assert "late:latest" in [t["name"] for t in httpx.get(f"{ollama.url}/api/tags").json()["models"]]
    assert chat(ollama.url, model="late:latest").status_code == 200
    ollama.uninstall("late")
    assert chat(ollama.url, model="late").status_code == 404


@pytest.mark.parametrize("value, seconds", [
    (300, 300), (7.5, 7.5), ("5m", 300), ("1h30m", 5400), ("300ms", 0.3), ("0", 0),
    ("-1m", math.inf), (-1, math.inf), ("1.5h", 5400),
])
def test_parse_keep_alive_table(value, seconds) -> None:
    """keep_alive is seconds as a number, a Go duration as a string, negative = forever (O6)."""
    assert parse_keep_alive(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value, seconds", [(300, 300), ("1h30m", 5400), (7.5, 7.5)])
def test_keep_alive_sets_ps_expiry(ollama: OllamaEmulator, value, seconds) -> None:
    """After a request, /api/ps says the model expires keep_alive from now (O6)."""
    assert chat(ollama.url, keep_alive=value).status_code == 200
    assert expires_in_s(ps_models(ollama.url)[0]) == pytest.approx(seconds, abs=2)


@pytest.mark.parametrize("value, message", [
    ("300", 'time: missing unit in duration "300"'),
    (True, "Unsupported type: 'bool'"),
    ("5x", 'time: unknown unit "x" in duration "5x"'),
    ("", 'time: invalid duration ""'),
    ([1], "Unsupported type: '[]interface {}'"),
])
def test_bad_keep_alive_is_400(ollama: OllamaEmulator, value, message) -> None:
    """A unit-less string, a bool or another type for keep_alive is a 400 with Go's message (O6)."""
    resp = chat(ollama.url, keep_alive=value)
    assert resp.status_code == 400 and resp.json() == {"error": message}


def test_keep_alive_forever_expires_292_years_ahead(ollama: OllamaEmulator) -> None:
    """A negative keep_alive shows an expiry MaxInt64 ns (~292 years, "year 2318") ahead (O1)."""
    chat(ollama.url, keep_alive=-1)
    assert expires_in_s(ps_models(ollama.url)[0]) == pytest.approx(FOREVER_NS / 1e9, abs=60)


def test_keep_alive_is_sticky(ollama: OllamaEmulator) -> None:
    """A request without keep_alive keeps the loaded model's keep_alive (O6)."""
    chat(ollama.url, keep_alive=-1)
    chat(ollama.url)
    assert expires_in_s(ps_models(ollama.url)[0]) > 290 * 365 * 86400


def test_keep_alive_zero_unloads_after_request(ollama: OllamaEmulator) -> None:
    """keep_alive 0 unloads the model as soon as the request is done."""
    assert chat(ollama.url, keep_alive=0).status_code == 200
    assert ps_models(ollama.url) == [] and ollama.unloads == 1


def test_keep_alive_expiry_unloads(ollama: OllamaEmulator) -> None:
    """A model idle past its keep_alive is unloaded and leaves /api/ps (wall time injected: a loaded
    machine cannot make the model expire before it is first listed)."""
    clock = ManualClock()
    ollama.scheduler.wall = clock.time
    chat(ollama.url, keep_alive="1s")
    clock.advance(0.9)
    assert len(ps_models(ollama.url)) == 1 and ollama.unloads == 0
    clock.advance(0.2)
    assert ps_models(ollama.url) == []
    assert ollama.unloads == 1 and ollama.loaded_models() == []


def test_generate_empty_prompt_loads_and_keep_alive_zero_unloads(ollama: OllamaEmulator) -> None:
    """An empty prompt loads the model (done_reason load); with keep_alive 0 it unloads it."""
    url = f"{ollama.url}/api/generate"
    loaded = httpx.post(url, json={"model": "test-model", "keep_alive": -1}).json()
    assert loaded["done_reason"] == "load" and ps_models(ollama.url)
    unloaded = httpx.post(url, json={"model": "test-model", "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload" and unloaded["done"] is True
    assert ps_models(ollama.url) == [] and (ollama.loads, ollama.unloads) == (1, 1)


def test_model_is_listed_by_ps_while_loading(pool) -> None:
    """During a cold load /api/ps already lists the model with a future expiry (O2)."""
    with OllamaEmulator({"slow": 0.6}) as emu:
        future = pool.submit(chat, emu.url, model="slow")
        wait_for(lambda: ps_models(emu.url) != [])
        assert [r.t_end for r in emu.requests if r.path == "/api/chat"] == [None]
        assert expires_in_s(ps_models(emu.url)[0]) > 0
        assert future.result().status_code == 200


def test_no_byte_is_sent_before_the_answer() -> None:
    """While the model loads, not even a status line is sent (O3)."""
    with OllamaEmulator({"slow": 0.6}) as emu:
        body = json.dumps({"model": "slow", "messages": [{"role": "user", "content": "x"}]}).encode()
        with socket.create_connection(("127.0.0.1", emu.port)) as sock:
            sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            sock.settimeout(0.3)
            with pytest.raises(socket.timeout):
                sock.recv(1)
            sock.settimeout(5)
            assert sock.recv(64).startswith(b"HTTP/1.1 200")


def test_client_leaving_during_load_aborts_it() -> None:
    """A client that hangs up during a cold load aborts it; the next request loads again (O3)."""
    with OllamaEmulator({"slow": 0.5}) as emu:
        with pytest.raises(httpx.ReadTimeout):
            chat(emu.url, model="slow", timeout=httpx.Timeout(5, read=0.1))
        wait_for(lambda: emu.aborted_loads == 1)
        assert chat(emu.url, model="slow").status_code == 200
        assert emu.loads == 2


def test_changed_num_ctx_reloads_even_when_kept_forever(ollama: OllamaEmulator) -> None:
    """A different num_ctx unloads and reloads the model despite keep_alive -1 (O7)."""
    chat(ollama.url, keep_alive=-1, options={"num_ctx": 2048})
    chat(ollama.url, keep_alive=-1, options={"num_ctx": 2048})
    assert ollama.loads == 1
    chat(ollama.url, keep_alive=-1, options={"num_ctx": 4096})
    assert (ollama.loads, ollama.unloads) == (2, 1)
    assert ps_models(ollama.url)[0]["context_length"] == 4096


# -- concurrency ----------------------------------------------------------------

def test_parallel_slots_bound_in_flight(pool) -> None:
    """Three times num_parallel concurrent requests never generate more than num_parallel at once (O4)."""
    with OllamaEmulator(num_parallel=2, latency_s=0.1) as emu:
        futures = [pool.submit(chat, emu.url, f"job {i}") for i in range(6)]
        assert all(f.result().status_code == 200 for f in futures)
        assert emu.in_flight_max["test-model"] == 2


def test_waiting_requests_are_served_fifo(pool) -> None:
    """Requests waiting for a slot are served in arrival order (O4)."""
    with OllamaEmulator(num_parallel=1, latency_s=0.1) as emu:
        emu.pause()  # the first holds the slot until released, so the others queue however busy the box is
        futures = [pool.submit(chat, emu.url, "first")]
        wait_for(lambda: emu.in_flight_max.get("test-model") == 1)
        for n in range(1, 4):
            futures.append(pool.submit(chat, emu.url, f"n{n}"))
            wait_for(lambda n=n: emu.waiting_for_slot == n)
        assert not any(f.done() for f in futures)  # the first is held, not answered
        emu.pause(False)
        assert all(f.result().status_code == 200 for f in futures)
        ends = sorted(emu.requests, key=lambda r: r.t_end)
        assert [r.json["messages"][0]["content"] for r in ends] == ["first", "n1", "n2", "n3"]


def test_queue_past_max_queue_is_503(pool) -> None:
    """Beyond max_queue requests waiting for a load, Ollama answers 503 busy (O5)."""
    with OllamaEmulator({"slow": 0.8}, max_queue=2) as emu:
        waiting = [pool.submit(chat, emu.url, model="slow") for _ in range(2)]
        wait_for(lambda: emu.waiting_for_load == 2)
        resp = chat(emu.url, model="slow")
        assert resp.status_code == 503 and resp.json() == {"error": BUSY_MSG}
        assert [f.result().status_code for f in waiting] == [200, 200]


# -- token accounting -------------------------------------------------------------

def test_long_prompt_is_truncated_silently(ollama: OllamaEmulator) -> None:
    """A prompt over num_ctx still gets 200; only prompt_eval_count shows the truncation (O10)."""
    long = chat(ollama.url, "x" * 1000, options={"num_ctx": 64}).json()
    assert long["done_reason"] == "stop" and long["prompt_eval_count"] == 64
    short = chat(ollama.url, "y" * 40, options={"num_ctx": 64}).json()
    assert short["prompt_eval_count"] == estimate_tokens("y" * 40)


def test_num_predict_cuts_the_answer_with_length(ollama: OllamaEmulator) -> None:
    """An answer longer than num_predict tokens is cut and done_reason is "length" (O9)."""
    body = chat(ollama.url, format=SCHEMA, options={"num_predict": 3}).json()
    assert body["done_reason"] == "length" and len(body["message"]["content"]) <= 12
    with pytest.raises(ValueError):
        json.loads(body["message"]["content"])


# -- thinking -------------------------------------------------------------------

def test_thinking_model_thinks_unless_told_not_to() -> None:
    """A thinking model fills message.thinking by default and not with think false (O16)."""
    with OllamaEmulator({"qwen3-think": 0.0}) as emu:
        thought = chat(emu.url, model="qwen3-think", format=SCHEMA).json()["message"]
        assert thought["thinking"] and json.loads(thought["content"])
        plain = chat(emu.url, model="qwen3-think", format=SCHEMA, think=False).json()["message"]
        assert "thinking" not in plain and json.loads(plain["content"])


def test_think_on_non_thinking_model_is_400(ollama: OllamaEmulator) -> None:
    """Asking a model without the capability to think is a 400."""
    resp = chat(ollama.url, think=True)
    assert resp.status_code == 400 and "does not support thinking" in resp.json()["error"]


# -- faults ---------------------------------------------------------------------

@pytest.mark.parametrize("fault, status, message", [
    ("busy_503", 503, BUSY_MSG),
    ("load_timeout_500", 500, LOAD_TIMEOUT_MSG),
    ("runner_crash_500", 500, RUNNER_CRASH_MSG),
    ("model_missing", 404, "model 'test-model' not found"),
    ("bad_request_400", 400, "invalid request"),
])
def test_error_faults(ollama: OllamaEmulator, fault, status, message) -> None:
    """An injected error fault answers with Ollama's status and message once (O5, O11, O14)."""
    ollama.inject(fault)
    resp = chat(ollama.url)
    assert resp.status_code == status and resp.json() == {"error": message}
    assert chat(ollama.url).status_code == 200


def test_busy_fault_can_carry_retry_after(ollama: OllamaEmulator) -> None:
    """busy_503 with retry_after sends a Retry-After header."""
    ollama.inject("busy_503", retry_after=7)
    assert chat(ollama.url).headers["retry-after"] == "7"


@pytest.mark.parametrize("fault, content", [("empty", ""), ("empty_object", "{}\n\n  ")])
def test_empty_answer_faults(ollama: OllamaEmulator, fault, content) -> None:
    """Empty answers come as 200 with done true (O8)."""
    ollama.inject(fault)
    body = chat(ollama.url, format=SCHEMA).json()
    assert body["message"]["content"] == content and body["done"] is True


@pytest.mark.parametrize("fault, reason", [("length", "length"), ("invalid_json", "stop")])
def test_unparseable_answer_faults(ollama: OllamaEmulator, fault, reason) -> None:
    """Cut or invalid answers are 200 with content that is not JSON (O9, O8)."""
    ollama.inject(fault)
    body = chat(ollama.url, format=SCHEMA).json()
    assert body["done_reason"] == reason and body["message"]["content"]
    with pytest.raises(ValueError):
        json.loads(body["message"]["content"])


def test_fault_count_and_clear(ollama: OllamaEmulator) -> None:
    """A fault applies to the next ``count`` requests; clear_faults drops the rest."""
    ollama.inject("busy_503", count=2)
    ollama.inject("runner_crash_500", count=5)
    assert [chat(ollama.url).status_code for _ in range(3)] == [503, 503, 500]
    ollama.clear_faults()
    assert chat(ollama.url).status_code == 200


def test_unknown_fault_is_rejected(ollama: OllamaEmulator) -> None:
    """inject() refuses a fault name it does not know."""
    with pytest.raises(ValueError):
        ollama.inject("gremlins")


def test_disconnect_fault_closes_without_answer(ollama: OllamaEmulator) -> None:
    """The disconnect fault closes the connection with no response (RemoteProtocolError)."""
    ollama.inject("disconnect")
    with pytest.raises(httpx.RemoteProtocolError):
        chat(ollama.url)


def test_hang_fault_delays_the_answer(ollama: OllamaEmulator) -> None:
    """hang with seconds answers normally only after that long."""
    ollama.inject("hang", seconds=0.3)
    start = time.monotonic()
    assert chat(ollama.url).status_code == 200
    assert time.monotonic() - start >= 0.3


def test_hang_fault_never_answers_until_stop(pool) -> None:
    """hang without seconds answers nothing; stop() breaks the connection."""
    with OllamaEmulator() as emu:
        emu.inject("hang")
        future = pool.submit(chat, emu.url)
        wait_for(lambda: emu.count("/api/chat") == 1)
        assert not future.done()
        emu.stop()
        with pytest.raises(httpx.RemoteProtocolError):
            future.result()


def test_fault_seconds_delays_an_error_fault(ollama: OllamaEmulator) -> None:
    """An error fault with seconds answers only after that delay, like a load timeout (O14)."""
    ollama.inject("load_timeout_500", seconds=0.2)
    start = time.monotonic()
    assert chat(ollama.url).status_code == 500
    assert time.monotonic() - start >= 0.2


def test_midstream_error_is_a_final_error_line(ollama: OllamaEmulator) -> None:
    """After the first chunk an error is a final {"error"} line, status 200, no done true (O15)."""
    ollama.inject("midstream_error")
    body = {"model": "test-model", "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream("POST", f"{ollama.url}/api/chat", json=body) as resp:
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert resp.status_code == 200 and lines[0]["message"]["content"]
    assert "error" in lines[-1] and not any(line.get("done") for line in lines)


def test_midstream_error_without_stream_is_500(ollama: OllamaEmulator) -> None:
    """The midstream fault on a non-streamed request is a 500 error object."""
    ollama.inject("midstream_error")
    resp = chat(ollama.url)
    assert resp.status_code == 500 and resp.json()["error"]


# -- restart and outage -------------------------------------------------------------

def test_restart_breaks_a_pooled_connection(ollama: OllamaEmulator) -> None:
    """After a restart on the same port, a pooled connection fails once with RemoteProtocolError (O12)."""
    port = ollama.port
    with httpx.Client(base_url=ollama.url, timeout=5) as client:
        body = {"model": "test-model", "messages": [], "stream": False}
        assert client.post("/api/chat", json=body).status_code == 200
        ollama.restart()
        assert ollama.port == port
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            client.post("/api/chat", json=body)
        assert client.post("/api/chat", json=body).status_code == 200
    assert [r.status for r in ollama.requests] == [200, None, 200]


def test_stopped_server_refuses_connections(ollama: OllamaEmulator) -> None:
    """A stopped emulator refuses connections; started again it serves on the same URL (O13)."""
    url = ollama.url
    ollama.set_down()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/api/version")
    assert ollama.start() == url
    assert httpx.get(f"{url}/api/version").status_code == 200


def test_busy_model_keeps_its_old_expiry_so_ps_can_show_stopping(pool) -> None:
    """While a request holds a model, /api/ps keeps the expiry set when it last went idle: it may lie in the past."""
    clock = ManualClock()
    with OllamaEmulator() as emu:
        emu.scheduler.wall = clock.time
        chat(emu.url, keep_alive="200ms")
        emu.inject("slow", seconds=30)
        pool.submit(chat, emu.url, timeout=60)
        wait_for(lambda: any(runner.refs for runner in emu.scheduler.runners.values()))
        assert expires_in_s(ps_models(emu.url)[0]) > 0
        clock.advance(1.0)
        assert expires_in_s(ps_models(emu.url)[0]) < 0
        assert emu.loaded_models() == ["test-model"]


def test_num_ctx_is_cut_to_the_model_context_length() -> None:
    """A num_ctx above the model's trained context is cut to it: a long prompt is truncated silently (O10)."""
    emu = OllamaEmulator(context_length=512)
    with emu:
        resp = chat(emu.url, "x" * 8000, options={"num_ctx": 8192})
        assert resp.status_code == 200 and resp.json()["prompt_eval_count"] == 512


def test_done_sent_marks_whole_answers_only(ollama: OllamaEmulator) -> None:
    """done_sent is set for a complete answer (stream or not) and not for a mid-stream error."""
    chat(ollama.url)
    chat(ollama.url, stream=True)
    ollama.inject("midstream_error")
    chat(ollama.url, stream=True)
    assert [r.done_sent for r in ollama.requests] == [True, True, False]


def test_stall_pauses_the_stream_after_its_first_chunk(ollama: OllamaEmulator) -> None:
    """The stall fault sends the first chunk, then nothing for its seconds."""
    ollama.inject("stall", seconds=0.5)
    started = time.monotonic()
    with httpx.stream("POST", f"{ollama.url}/api/chat", timeout=10,
                      json={"model": "test-model", "messages": [{"role": "user", "content": "x"}]}) as resp:
        lines = resp.iter_lines()
        first = json.loads(next(lines))
        rest = [json.loads(line) for line in lines if line]
    # The stall is timed from the request's arrival (absolute deadlines), so
    # the whole exchange, not the gap seen by the client, is at least 0.5 s.
    assert first["done"] is False and rest[-1]["done"] is True
    assert time.monotonic() - started >= 0.5
