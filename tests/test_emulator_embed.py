"""The emulator's ``POST /api/embed`` answers as Ollama's does (API doc "Generate Embeddings")."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from llmc_rag_service.testing.emulator import TOO_LONG_MSG, EmbedModel, OllamaEmulator
from llmc_rag_service.testing.vectors import hashed_embedding
from tests.helpers import wait_for

EMBED = "nomic-embed-text"


@pytest.fixture
def emu() -> Iterator[OllamaEmulator]:
    with OllamaEmulator(embed_models=[EMBED]) as server:
        yield server


def embed(url: str, inputs: object, model: str = EMBED, **extra: object) -> httpx.Response:
    return httpx.post(f"{url}/api/embed", json={"model": model, "input": inputs, **extra}, timeout=10)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def test_a_list_of_inputs_gets_one_unit_vector_each_with_the_documented_fields(emu):
    """The answer has model, one 768-float unit vector per input, nanosecond durations and prompt_eval_count."""
    answer = embed(emu.url, ["def parse(x): pass", "class Socket: pass"]).json()
    assert set(answer) == {"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}
    assert answer["model"] == EMBED and len(answer["embeddings"]) == 2
    assert all(len(v) == 768 and math.isclose(math.sqrt(sum(x * x for x in v)), 1.0) for v in answer["embeddings"])
    assert answer["prompt_eval_count"] == 5 + 5  # ceil(18 / 4) + ceil(18 / 4)
    assert answer["total_duration"] >= answer["load_duration"] >= 0


def test_vectors_are_deterministic_and_carry_meaning(emu):
    """The same text gives the same vector; texts sharing identifier parts are close, others are not."""
    first, same, related, other = embed(
        emu.url, ["parseJsonBody", "parseJsonBody", "parse_json_body(request)", "tcp socket listen"]).json()["embeddings"]
    assert first == same == hashed_embedding("parseJsonBody")
    assert cosine(first, related) > 0.7 > 0.1 > abs(cosine(first, other))


def test_a_string_input_is_one_input_and_no_input_loads_the_model(emu):
    """``input`` a string is one input; none at all answers no embeddings but loads the model."""
    assert len(embed(emu.url, "def f(): pass").json()["embeddings"]) == 1
    emu.uninstall(EMBED)
    emu.install_embed(EMBED)
    assert embed(emu.url, None).json()["embeddings"] == [] and emu.loaded_models() == [EMBED]


def test_a_missing_model_is_404(emu):
    """An embedding model that is not installed gets 404 ``model 'NAME' not found``."""
    resp = embed(emu.url, ["x"], model="mxbai-embed-large")
    assert resp.status_code == 404 and resp.json() == {"error": "model 'mxbai-embed-large' not found"}


def test_an_input_over_the_context_is_400_whatever_truncate_says(emu):
    """Longer than the model's context (2048 tokens = 8192 chars here): 400, truncate true or false."""
    fits, too_long = "x" * 8192, "x" * 8193
    assert embed(emu.url, [fits]).status_code == 200
    for truncate in (True, False):
        resp = embed(emu.url, [fits, too_long], truncate=truncate)
        assert resp.status_code == 400 and resp.json() == {"error": TOO_LONG_MSG}


def test_the_context_is_the_smaller_of_num_ctx_and_the_trained_one():
    """options.num_ctx below the trained context shortens what fits."""
    with OllamaEmulator(embed_models={EMBED: EmbedModel(dim=8, context_length=100)}) as server:
        assert embed(server.url, ["y" * 400]).status_code == 200
        assert embed(server.url, ["y" * 401]).status_code == 400
        assert embed(server.url, ["y" * 200], options={"num_ctx": 40}).status_code == 400


def test_bad_input_types_and_a_missing_model_name_are_400(emu):
    """A number in the input list, an object input, or no model: 400 as Ollama words it."""
    assert embed(emu.url, [1, "x"]).json() == {"error": "invalid input type"}
    assert embed(emu.url, {"text": "x"}).json() == {"error": "invalid input type"}
    assert embed(emu.url, ["x"], model="").json() == {"error": "model is required"}


def test_dimensions_cuts_and_renormalises(emu):
    """``dimensions`` below the model's keeps the first values, scaled back to unit length."""
    full = embed(emu.url, ["alpha beta gamma delta"]).json()["embeddings"][0]
    cut = embed(emu.url, ["alpha beta gamma delta"], dimensions=512).json()["embeddings"][0]
    norm = math.sqrt(sum(x * x for x in full[:512]))
    assert len(cut) == 512 and cut == pytest.approx([x / norm for x in full[:512]])


def test_keep_alive_is_honoured_like_chat(emu):
    """keep_alive 0 unloads the embedding model once the request is done; a bad one is 400."""
    assert embed(emu.url, ["x"], keep_alive=0).status_code == 200
    # The runner is released just after the answer is sent (as Ollama's scheduler hears of it): wait for it.
    wait_for(lambda: emu.loaded_models() == [], 10, "the embedding model unloaded")
    assert emu.unloads == 1
    resp = embed(emu.url, ["x"], keep_alive="300")
    assert resp.status_code == 400 and resp.json() == {"error": 'time: missing unit in duration "300"'}


def test_an_embedding_model_cannot_chat(emu):
    """/api/chat with an embedding model is 400 ``"NAME" does not support chat``."""
    resp = httpx.post(f"{emu.url}/api/chat", json={"model": EMBED, "messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == 400 and resp.json() == {"error": f'"{EMBED}" does not support chat'}


def test_tags_and_show_list_the_embedding_model(emu):
    """/api/tags lists it beside the chat model; /api/show gives its capability and context."""
    names = [m["name"] for m in httpx.get(f"{emu.url}/api/tags").json()["models"]]
    assert names == [f"{EMBED}:latest", "test-model:latest"]
    shown = httpx.post(f"{emu.url}/api/show", json={"model": EMBED}).json()
    assert shown["capabilities"] == ["embedding"] and shown["model_info"]["nomic-bert.context_length"] == 2048


def test_wrong_dim_and_nan_faults_corrupt_the_vectors(emu):
    """wrong_dim answers vectors of another dimension; nan puts a NaN in each vector."""
    emu.inject("wrong_dim", dim=384)
    assert [len(v) for v in embed(emu.url, ["a", "b"]).json()["embeddings"]] == [384, 384]
    emu.inject("nan")
    vectors = embed(emu.url, ["a", "b"]).json()["embeddings"]  # Python's json reads NaN
    assert all(math.isnan(v[0]) for v in vectors)
    assert all(not math.isnan(x) for v in embed(emu.url, ["a"]).json()["embeddings"] for x in v)


@pytest.mark.parametrize("fault, status", [("busy_503", 503), ("runner_crash_500", 500), ("model_missing", 404)])
def test_error_faults_apply_to_the_next_embed_request_only(emu, fault, status):
    """A fault queued for ``embed`` answers the next /api/embed and leaves chat alone."""
    emu.inject(fault, endpoint="embed")
    chat = httpx.post(f"{emu.url}/api/chat", json={"model": "test-model", "stream": False,
                                                   "messages": [{"role": "user", "content": "x"}]})
    assert chat.status_code == 200
    assert embed(emu.url, ["x"]).status_code == status
    assert embed(emu.url, ["x"]).status_code == 200


def test_a_hang_sends_nothing_until_the_client_gives_up(emu):
    """``hang`` holds the request without a byte; the client's read timeout fires."""
    emu.inject("hang", endpoint="embed")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{emu.url}/api/embed", json={"model": EMBED, "input": ["x"]}, timeout=httpx.Timeout(5, read=0.3))
    assert embed(emu.url, ["x"]).status_code == 200


def test_chat_only_faults_cannot_target_embed(emu):
    """A stream fault for /api/embed, or an unknown endpoint, is refused."""
    with pytest.raises(ValueError, match="does not apply to embed"):
        emu.inject("midstream_error", endpoint="embed")
    with pytest.raises(ValueError, match="unknown endpoint"):
        emu.inject("busy_503", endpoint="tags")


def test_inputs_share_the_runner_slots():
    """Four inputs of 0.2 s on two slots take at least two rounds (0.4 s) before the answer."""
    with OllamaEmulator(embed_models=[EMBED], num_parallel=2, embed_latency_s=0.2) as server:
        answer = embed(server.url, ["a", "b", "c", "d"]).json()
    assert answer["total_duration"] >= 0.4e9


def test_the_program_serves_the_default_embedding_model():
    """``python -m llmc_rag_service.testing`` installs nomic-embed-text beside the chat model."""
    with subprocess.Popen([sys.executable, "-m", "llmc_rag_service.testing", "--port", "0", "--model", "m"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            url = proc.stdout.readline().split()[-1]  # type: ignore[union-attr]
            names = [m["name"] for m in httpx.get(f"{url}/api/tags", timeout=10).json()["models"]]
            assert names == ["m:latest", f"{EMBED}:latest"]
            assert embed(url, ["x"]).status_code == 200
        finally:
            proc.terminate()
            assert proc.wait(10) == 0
        assert "RuntimeWarning" not in proc.stderr.read()  # type: ignore[union-attr]


WORDLLAMA = "wordllama-256"


def test_a_wordllama_model_answers_a_real_models_vectors():
    """``EmbedModel.wordllama()`` answers 256-float unit vectors in which a paraphrase with no
    word in common is nearer than an unrelated text (a bag of words cannot do that)."""
    texts = ["open a network connection", "establish a socket link to a remote host", "sort a list of numbers"]
    with OllamaEmulator(embed_models={WORDLLAMA: EmbedModel.wordllama()}) as server:
        query, paraphrase, other = embed(server.url, texts, model=WORDLLAMA).json()["embeddings"]
        again = embed(server.url, texts[:1], model=WORDLLAMA, dimensions=64).json()["embeddings"][0]
    assert len(query) == 256 and math.isclose(math.sqrt(sum(x * x for x in query)), 1.0, rel_tol=1e-5)
    assert cosine(query, paraphrase) > cosine(query, other) + 0.1
    head = query[:64]
    assert len(again) == 64 and cosine(again, head) / math.sqrt(cosine(head, head)) > 0.999  # the same vector's prefix


def test_the_emulator_program_serves_wordllama_when_asked():
    """``--embedder wordllama`` installs ``wordllama-256`` (256 dims); an unknown embedder is a usage error."""
    # The two programs are independent: they start side by side.
    with subprocess.Popen([sys.executable, "-m", "llmc_rag_service.testing", "--embedder", "bert"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as bad, \
            subprocess.Popen([sys.executable, "-m", "llmc_rag_service.testing", "--port", "0", "--model", "m",
                              "--embedder", "wordllama"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) as proc:
        try:
            url = proc.stdout.readline().split()[-1]  # type: ignore[union-attr]
            names = [m["name"] for m in httpx.get(f"{url}/api/tags", timeout=10).json()["models"]]
            assert names == ["m:latest", f"{WORDLLAMA}:latest"]
            assert len(embed(url, ["x"], model=WORDLLAMA).json()["embeddings"][0]) == 256
        finally:
            proc.terminate()
            assert proc.wait(10) == 0
        _, bad_stderr = bad.communicate(timeout=30)
    assert bad.returncode == 2 and "invalid choice: 'bert'" in bad_stderr and "Traceback" not in bad_stderr
