"""OllamaClient.embed: POST /api/embed with the contract's body, bounded deadlines and the one error taxonomy."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from llmc_rag_service.config import HostConfig, OllamaConfig
from llmc_rag_service.enrich import ollama as ol
from llmc_rag_service.enrich.embedder import embed_client
from llmc_rag_service.testing.emulator import TOO_LONG_MSG, OllamaEmulator
from llmc_rag_service.testing.vectors import hashed_embedding

EMBED = "nomic-embed-text"


@pytest.fixture
def emu():
    with OllamaEmulator(["chat-m"], embed_models=[EMBED]) as server:
        yield server


@pytest.fixture
def client():
    """``client(url, **ollama_cfg)``: an embed client, closed after the test."""
    made: list[ol.OllamaClient] = []

    def make(url: str, **cfg) -> ol.OllamaClient:
        made.append(embed_client(OllamaConfig(url=url, model="chat-m", **cfg), EMBED))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_the_body_is_a_list_input_with_keep_alive_and_no_truncation(emu, client):
    """model = the embedding model, input a list, keep_alive as configured, truncate false, no chat options."""
    vectors = client(emu.url, keep_alive=-1, options={"num_ctx": 8192}).embed(["def f(): pass", "class A: pass"])
    (sent,) = [r.json for r in emu.requests if r.path == "/api/embed"]
    assert sent == {"model": EMBED, "input": ["def f(): pass", "class A: pass"], "keep_alive": -1, "truncate": False}
    assert vectors == [hashed_embedding("def f(): pass"), hashed_embedding("class A: pass")]


def test_the_embed_answer_carries_prompt_eval_count_and_durations(emu, client):
    """embed_answer returns the whole answer: embeddings plus Ollama's counts (durations in ns)."""
    answer = client(emu.url).embed_answer(["abcd" * 10])
    assert answer["prompt_eval_count"] == 10 and answer["total_duration"] > 0 and len(answer["embeddings"]) == 1


def test_no_texts_send_nothing(emu, client):
    """An empty list is answered without a request."""
    assert client(emu.url).embed([]) == [] and emu.count("/api/embed") == 0


def test_a_missing_model_is_model_missing_with_the_pull(emu, client):
    """404 maps to ModelMissing naming ``ollama pull`` of the embedding model."""
    emu.uninstall(EMBED)
    with pytest.raises(ol.ModelMissing, match=f"ollama pull {EMBED}"):
        client(emu.url).embed(["x"])


def test_an_over_long_input_is_a_bad_request(emu, client):
    """400 "the input length exceeds the context length" maps to BadRequest (policy dead_letter) with the text."""
    with pytest.raises(ol.BadRequest, match=TOO_LONG_MSG):
        client(emu.url).embed(["x" * 9000])


@pytest.mark.parametrize("fault, error", [("busy_503", ol.Busy), ("runner_crash_500", ol.ServerError),
                                          ("disconnect", ol.Disconnected)])
def test_server_faults_map_to_the_taxonomy(emu, fault, error, client):
    """503 is Busy (with Retry-After), 500 ServerError, a dropped connection Disconnected."""
    emu.inject(fault, count=5, endpoint="embed", retry_after=7)
    with pytest.raises(error) as info:
        client(emu.url).embed(["x"])
    if error is ol.Busy:
        assert info.value.retry_after_s == 7


def test_a_hung_server_times_out_within_load_timeout(emu, client):
    """Ollama sends nothing until every input is embedded: the read deadline is load_timeout_s."""
    emu.inject("hang", endpoint="embed")
    started = time.monotonic()
    with pytest.raises(ol.RequestTimeout):
        client(emu.url, load_timeout_s=1).embed(["x"])
    assert time.monotonic() - started < 5


def test_a_refused_connection_is_unavailable(client):
    """Nothing listening: Unavailable (policy pause)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ol.Unavailable):
        client(f"http://127.0.0.1:{port}").embed(["x"])


def test_a_pooled_connection_to_a_restarted_server_is_retried_on_a_fresh_one(emu, client):
    """After an Ollama restart the dead keep-alive connection costs no error (O12)."""
    embedder = client(emu.url)
    assert embedder.embed(["x"])
    emu.restart()
    assert embedder.embed(["y"]) == [hashed_embedding("y")]


@pytest.mark.parametrize("answer", [
    {"embeddings": [[0.1, 0.2]]},                  # one vector for two inputs
    {"embeddings": [[0.1], "oops"]},               # not a list of numbers
    {"embeddings": [[0.1], []]},                   # empty vector
    {"model": "m"},                                # no embeddings at all
])
def test_a_malformed_answer_is_a_server_error(answer):
    """A 200 whose embeddings do not match the inputs is ServerError (retried), never returned."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    embedder = ol.OllamaClient(OllamaConfig(url="http://ollama.test", model=EMBED), HostConfig("http://ollama.test"),
                               transport, options={})
    try:
        with pytest.raises(ol.ServerError, match="embed answer"):
            embedder.embed(["a", "b"])
    finally:
        embedder.close()


def test_the_embedding_length_is_read_from_api_show(emu, client):
    """/api/show's model_info "<arch>.embedding_length" is the model's dimension; an unknown model is ModelMissing."""
    c = client(emu.url)
    assert c.embedding_length(EMBED) == 768
    with pytest.raises(ol.ModelMissing):
        c.embedding_length("no-such-embed-model")
