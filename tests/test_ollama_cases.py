"""One test per row O1-O17 of tests/data/ollama_behaviours.md, plus the seed's third form.

Each test makes the emulator behave as a real Ollama server does and checks
the client's outcome through the real pipeline (:class:`tests.helpers.TempPipeline`).
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import httpx
import pytest
from structlog.testing import capture_logs

from llmc_rag_service.enrich import ollama as ol
from llmc_rag_service.enrich import workers
from llmc_rag_service.enrich.prompt import chat_client
from llmc_rag_service.config import LOAD_TIME_OPTIONS, OllamaConfig
from tests.helpers import wait_for, write_tree
from llmc_rag_service.testing.emulator import MIDSTREAM_MSG, RUNNER_CRASH_MSG, OllamaEmulator
from llmc_rag_service.testing.clock import ManualClock
from tests.helpers import TempPipeline, fast_backoffs

MESSAGES = [{"role": "user", "content": "def f(): pass"}]
#: For the tests' own requests (plain HTTP to 127.0.0.1: no TLS context to build).
HTTP = {"timeout": 60, "verify": False}


def chats(emu: OllamaEmulator) -> list:
    return [r for r in emu.requests if r.path == "/api/chat"]


def forbid_subprocesses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any process start (e.g. running `ollama`) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a subprocess was started: {args!r}")

    monkeypatch.setattr(subprocess, "Popen", refuse)


def load(emu: OllamaEmulator, keep_alive, options: dict | None = None) -> httpx.Response:
    """Another client's load request (empty prompt), as `ollama run` does."""
    body = {"model": "test-model", "prompt": "", "keep_alive": keep_alive, "stream": False,
            "options": options or {"num_ctx": 8192}}
    return httpx.post(f"{emu.url}/api/generate", json=body, **HTTP)


def ps_expiries(emu: OllamaEmulator) -> list[datetime]:
    models = httpx.get(f"{emu.url}/api/ps", **HTTP).json()["models"]
    return [datetime.fromisoformat(m["expires_at"].replace("Z", "+00:00")) for m in models]


def assert_first_attempt_and_no_ps(p: TempPipeline, emu: OllamaEmulator, ps_before: int) -> None:
    assert [(j["state"], j["attempts"]) for j in p.jobs()] == [("done", 1)] * len(p.jobs())
    assert emu.count("/api/ps") == ps_before


def test_o1_model_loaded_forever_work_starts_at_once_without_ps_or_subprocess(tmp_path, ollama, pipelines, monkeypatch):
    """Seed (a): the model is loaded and listed with keep_alive forever; jobs are sent at once and complete."""
    assert load(ollama, -1).status_code == 200
    assert ps_expiries(ollama)[0].year > 2300
    p = pipelines(tmp_path, ollama.url, files=4, ollama={"keep_alive": -1})
    before = len(ollama.requests)
    forbid_subprocesses(monkeypatch)
    p.start().wait_done()
    assert {r.path for r in ollama.requests[before:]} == {"/api/chat"}  # nothing asked before the work
    assert_first_attempt_and_no_ps(p, ollama, 1)
    assert ollama.loads == 1


def test_o2_model_listed_while_loading_requests_are_sent_and_wait_at_the_server(tmp_path, pipelines, monkeypatch):
    """Seed (b): /api/ps lists the model during a long load; requests are sent during it and succeed after it."""
    # A 1 s load: the workers start and send within a tenth of that.
    with ThreadPoolExecutor(1) as other, OllamaEmulator({"test-model": 1.0}) as emu:
        p = pipelines(tmp_path, emu.url, files=3)
        loading = other.submit(load, emu, "15m")
        wait_for(lambda: ps_expiries(emu), 5, "the loading model listed by /api/ps")
        ps_before = emu.count("/api/ps")
        forbid_subprocesses(monkeypatch)
        p.start().wait_done()
        assert loading.result().status_code == 200
        load_end = next(r.t_end for r in emu.requests if r.path == "/api/generate")
        assert min(r.t_start for r in chats(emu)) < load_end  # sent during the load, not after
        assert_first_attempt_and_no_ps(p, emu, ps_before)
        assert (emu.loads, emu.aborted_loads) == (1, 0)


def test_seed_model_shown_stopping_while_a_request_runs(tmp_path, pipelines, monkeypatch):
    """Seed (c): /api/ps shows the busy model expired ("Stopping..."); jobs are sent at once and complete."""
    with ThreadPoolExecutor(1) as other, OllamaEmulator() as emu:
        assert load(emu, "1s").status_code == 200
        emu.inject("slow", seconds=30)  # another client's long request holds the model
        running = other.submit(httpx.post, f"{emu.url}/api/chat", **HTTP, json={
            "model": "test-model", "messages": MESSAGES, "stream": False, "options": {"num_ctx": 8192}})
        wait_for(lambda: emu.in_flight_max.get("test-model") == 1, 5, "the long request running")
        wait_for(lambda: any(e < datetime.now(timezone.utc) for e in ps_expiries(emu)), 5, "Stopping...")
        p = pipelines(tmp_path, emu.url, files=3)
        ps_before = emu.count("/api/ps")
        forbid_subprocesses(monkeypatch)
        p.start().wait_done()
        assert chats(emu)[0].t_end is None  # the other request still runs: nobody waited for it
        assert_first_attempt_and_no_ps(p, emu, ps_before)
        emu.stop()
        with pytest.raises(httpx.HTTPError):
            running.result()


def test_o3_cold_load_succeeds_first_time_because_the_first_byte_deadline_covers_it(tmp_path, pipelines):
    """A cold load longer than timeout_s succeeds on the first attempt (first byte: load_timeout_s); hanging up would abort it."""
    with OllamaEmulator({"test-model": 1.5}) as emu:
        p = pipelines(tmp_path, emu.url, files=2, ollama={"timeout_s": 1, "load_timeout_s": 20})
        p.start().wait_done()
        assert [(j["state"], j["attempts"]) for j in p.jobs()] == [("done", 1)] * 2
        assert (emu.loads, emu.aborted_loads) == (1, 0)
    with OllamaEmulator({"test-model": 1.5}) as emu:
        impatient = chat_client(OllamaConfig(url=emu.url, model="test-model", load_timeout_s=0.3))
        with pytest.raises(ol.RequestTimeout):
            impatient.chat(MESSAGES)
        wait_for(lambda: emu.aborted_loads == 1, 5, "the load aborted by the hang-up")


def test_o4_in_flight_requests_never_exceed_concurrency(tmp_path, pipelines):
    """With more server slots than ollama.concurrency, at most `concurrency` requests are open at once."""
    with OllamaEmulator(num_parallel=4, latency_s=0.1) as emu:
        p = pipelines(tmp_path, emu.url, files=8, ollama={"concurrency": 2})
        p.start().wait_done()
        edges = sorted([(r.t_start, 1) for r in chats(emu)] + [(r.t_end, -1) for r in chats(emu)],
                       key=lambda e: (e[0], e[1]))
        open_now = peak = 0
        for _, step in edges:
            open_now += step
            peak = max(peak, open_now)
        assert peak <= 2 and emu.in_flight_max["test-model"] <= 2
        assert len(chats(emu)) == 8


def test_o4_a_fifo_wait_at_the_server_is_bounded_by_the_client_deadline():
    """A request queued behind a busy slot ends at the client's first-byte deadline, not never."""
    with ThreadPoolExecutor(1) as other, OllamaEmulator(num_parallel=1) as emu:
        emu.inject("slow", seconds=30)
        other.submit(httpx.post, f"{emu.url}/api/chat", **HTTP,
                     json={"model": "test-model", "messages": MESSAGES, "options": {"num_ctx": 8192}})
        wait_for(lambda: emu.in_flight_max.get("test-model") == 1, 5, "the slot taken")
        client = chat_client(OllamaConfig(url=emu.url, model="test-model", load_timeout_s=0.5))
        with pytest.raises(ol.RequestTimeout):
            client.chat(MESSAGES)
        assert emu.in_flight_max["test-model"] == 1 and chats(emu)[0].t_end is None


def test_o5_busy_503_is_retried_without_spending_attempts(tmp_path, pipelines, monkeypatch):
    """503 past OLLAMA_MAX_QUEUE is retried with backoff; with max_attempts 1 every job still finishes."""
    fast_backoffs(monkeypatch)
    with OllamaEmulator({"test-model": 0.8}, max_queue=1) as emu:
        p = pipelines(tmp_path, emu.url, files=6, ollama={"concurrency": 4}, queue={"max_attempts": 1})
        p.start().wait_done()
        assert any(r.status == 503 for r in chats(emu))
        assert [(j["state"], j["attempts"]) for j in p.jobs()] == [("done", 1)] * 6


def test_o6_keep_alive_keeps_its_type_and_a_400_is_dead_lettered_once(tmp_path, ollama, pipelines):
    """keep_alive 300 is sent as a JSON number; a 400 fails the job at once with the server's message and what was sent."""
    message = 'time: missing unit in duration "300"'
    ollama.inject("bad_request_400", message=message)
    p = pipelines(tmp_path, ollama.url, files=3, ollama={"keep_alive": 300, "concurrency": 1})
    with capture_logs() as logs:
        p.start().wait_done()
    assert all(type(r.json["keep_alive"]) is int and r.json["keep_alive"] == 300 for r in chats(ollama))
    failed = [j for j in p.jobs() if j["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["attempts"] == 1 and message in failed[0]["last_error"]
    assert len(chats(ollama)) == 3  # no retry of the 400
    (entry,) = [e for e in logs if e["event"] == "job_failed"]
    assert entry["reason"] == "bad_request" and '"keep_alive": 300' in entry["sent"]


def test_o7_every_request_carries_identical_load_time_options(tmp_path, ollama, pipelines, monkeypatch):
    """Warm-up, first attempts and retries carry the same load-time options, so the model loads once."""
    fast_backoffs(monkeypatch)
    options = {"num_ctx": 4096, "num_batch": 128, "num_thread": 4, "temperature": 0.1}
    p = pipelines(tmp_path, ollama.url, files=4, ollama={"options": options})
    p.pipeline.warm_up()
    wait_for(lambda: any(r.path == "/api/generate" and r.status for r in ollama.requests), 5, "warm-up")
    ollama.inject("length")  # one answer cut: its retry asks for a larger num_predict
    p.start().wait_done()
    sent = [r.json["options"] for r in ollama.requests if r.path in ("/api/chat", "/api/generate")]
    assert len(sent) == 6
    assert {tuple(o.get(k) for k in LOAD_TIME_OPTIONS) for o in sent} == {(4096, 128, None, None, None, 4)}
    assert (ollama.loads, ollama.unloads) == (1, 0)


def test_o8_empty_answers_are_never_stored_and_fail_as_empty_response(tmp_path, ollama, pipelines, monkeypatch):
    """An empty content and a bare '{}' are retried, then the job fails with empty_response; nothing is stored."""
    fast_backoffs(monkeypatch)
    ollama.inject("empty")
    ollama.inject("empty_object")
    p = pipelines(tmp_path, ollama.url, files=1, queue={"max_attempts": 2})
    p.start().wait_done()
    (job,) = p.jobs()
    assert job["state"] == "failed" and "empty_response" in job["last_error"] and len(chats(ollama)) == 2
    assert p.pipeline.store.conn.execute("SELECT COUNT(*) FROM enrichments").fetchone()[0] == 0


def test_o9_answer_cut_by_length_is_retried_with_a_larger_cap_then_failed(tmp_path, ollama, pipelines, monkeypatch):
    """done_reason length is not stored; the retry asks for a larger num_predict; then the job fails with 'length'."""
    fast_backoffs(monkeypatch)
    ollama.inject("length", count=2)
    p = pipelines(tmp_path, ollama.url, files=1, queue={"max_attempts": 2})
    p.start().wait_done()
    (job,) = p.jobs()
    assert job["state"] == "failed" and "length" in job["last_error"]
    first, second = (r.json["options"]["num_predict"] for r in chats(ollama))
    assert second > first


def test_o10_silently_truncated_prompt_is_flagged_and_not_stored(tmp_path, pipelines, monkeypatch):
    """A prompt the server cut to its real context (prompt_eval_count far below the estimate) is not stored."""
    fast_backoffs(monkeypatch)
    with OllamaEmulator(context_length=1024) as emu:
        p = pipelines(tmp_path, emu.url, files=1, queue={"max_attempts": 2})
        write_tree(p.root, {"long.py": "def long():\n" + "    total = total + compute(1)\n" * 400})
        p.pipeline.scan_all()
        p.start().wait_done()
        states = {j["state"]: j for j in p.jobs()}
        assert "prompt_truncated" in states["failed"]["last_error"] and "done" in states
        assert max(r.json["options"]["num_ctx"] for r in chats(emu)) == 8192


def test_o11_missing_model_waits_without_attempts_and_resumes_when_pulled(tmp_path, ollama, pipelines, monkeypatch):
    """404 model: STATUS and one error log say `ollama pull`; jobs keep their attempts; work resumes once /api/tags lists it."""
    fast_backoffs(monkeypatch)
    ollama.uninstall("test-model")
    p = pipelines(tmp_path, ollama.url, files=3)
    with capture_logs() as logs:
        p.start()
        wait_for(lambda: p.pipeline.pool.host.state == "model_missing", 5, "model_missing")
        assert "model test-model missing, run: ollama pull test-model" in p.pipeline.status_line()
        wait_for(lambda: ollama.count("/api/tags") >= 3, 5, "a few /api/tags probes")
        assert all(j["attempts"] == 0 for j in p.jobs())
        ollama.install("test-model")
        p.wait_done()
    assert [(j["state"], j["attempts"]) for j in p.jobs()] == [("done", 1)] * 3
    missing = [e for e in logs if e["event"] == "model_missing"]
    assert len(missing) == 1 and missing[0]["hint"] == "ollama pull test-model" and missing[0]["log_level"] == "error"


def test_o12_restart_behind_pooled_connections_is_retried_transparently(tmp_path, ollama, pipelines):
    """After a server restart, dead pooled connections are retried at once: the next job succeeds on attempt 1."""
    p = pipelines(tmp_path, ollama.url, files=4, ollama={"concurrency": 2})
    p.start().wait_done()
    seen = len(ollama.requests)
    ollama.restart()
    write_tree(p.root, {"late.py": "def late():\n    return 'after the restart'\n"})
    p.pipeline.scan_all()
    p.pipeline.pool.notify_work()
    p.wait_done()
    assert [(j["state"], j["attempts"]) for j in p.jobs()] == [("done", 1)] * 5
    assert any(r.status is None for r in ollama.requests[seen:])  # a request died on a stale connection


def test_o13_outage_pauses_workers_keeps_attempts_probes_gently_and_resumes(tmp_path, ollama, pipelines):
    """Connection refused: jobs stay pending with attempts intact, STATUS says unreachable, one probe at a time with a jittered backoff that doubles (the real PROBE_BASE_S and PROBE_MAX_S, on a manual clock), then work resumes."""
    clock = ManualClock()
    p = pipelines(tmp_path, ollama.url, files=6, ollama={"concurrency": 2}, clock=clock)
    client, probes, sent = p.pipeline.client, [], []
    real_version, real_chat = client.version, client.chat
    client.version = lambda *a, **k: probes.append(clock()) or real_version(*a, **k)
    client.chat = lambda *a, **k: sent.append(clock()) or real_chat(*a, **k)
    host, threads = p.pipeline.pool.host, p.pipeline.pool._threads

    def step(seconds: float) -> bool:
        clock.advance(seconds)
        for thread in threads:  # every worker done with its turn (a probe included)
            clock.wait_asleep(thread)
        return False

    ollama.stop()
    with capture_logs() as logs:
        p.start()
        wait_for(lambda: host.state == "unreachable", 5, "unreachable")
        began = step(0.0) or clock()
        while clock() < began + 60.0:
            step(0.25)
        status, chats_in_outage = p.pipeline.status_line(), len(sent)
        assert all(j["attempts"] == 0 and j["state"] == "pending" for j in p.jobs())
        ollama.start()
        wait_for(lambda: host.state == "ok" or step(2.0), 10, "a probe finding the server back")
        p.wait_done()
    assert status.startswith("waiting: 6 pending") and f"ollama unreachable at {ollama.url}: " in status
    assert "; retry in " in status and status.endswith(" s")
    assert chats_in_outage <= 2  # the requests that met the outage; none while it lasted
    outage = [t for t in probes if t < began + 60.0]
    assert 0.5 <= outage[0] - began <= workers.PROBE_BASE_S + 0.25
    for k, gap in enumerate([b - a for a, b in zip(outage, outage[1:])], start=1):
        ceiling = min(workers.PROBE_MAX_S, workers.PROBE_BASE_S * 2 ** k)  # after the k-th failed probe
        assert ceiling / 2 <= gap <= ceiling + 0.25, (k, outage)
    assert 5 <= len(outage) <= 6  # one probe per backoff, never a busy loop
    events = [e["event"] for e in logs]
    assert events.count("ollama_unreachable") == 1 and events.count("ollama_recovered") == 1
    assert [(j["state"], j["attempts"]) for j in p.jobs()] == [("done", 1)] * 6


def test_o14_load_timeout_and_runner_crash_are_retried_with_backoff_then_failed(tmp_path, ollama, pipelines, monkeypatch):
    """500 load timeout then 500 runner crash: retried after a backoff, then failed with the server's message."""
    monkeypatch.setattr("llmc_rag_service.store.jobs.backoff_s.__defaults__", (0.3, 0.6))
    ollama.inject("load_timeout_500")
    ollama.inject("runner_crash_500")
    p = pipelines(tmp_path, ollama.url, files=1, queue={"max_attempts": 2})
    p.start().wait_done()
    (job,) = p.jobs()
    assert job["state"] == "failed" and RUNNER_CRASH_MSG in job["last_error"]
    first, second = chats(ollama)
    assert second.t_start - first.t_end >= 0.15  # jittered backoff: at least half of 0.3 s


def test_o15_error_line_mid_stream_is_a_failed_attempt(tmp_path, ollama, pipelines):
    """A 200 stream that ends in an {"error": ...} line is a failure with that message, not an answer."""
    ollama.inject("midstream_error")
    p = pipelines(tmp_path, ollama.url, files=1, queue={"max_attempts": 1})
    p.start().wait_done()
    (job,) = p.jobs()
    assert job["state"] == "failed" and MIDSTREAM_MSG in job["last_error"]
    assert [r.status for r in chats(ollama)] == [200]
    assert p.pipeline.store.conn.execute("SELECT COUNT(*) FROM enrichments").fetchone()[0] == 0


def test_o16_thinking_model_is_asked_not_to_think(tmp_path, pipelines):
    """Requests to a thinking-capable model send think false; the stored answer comes from message.content."""
    with OllamaEmulator(thinking_models={"test-model"}) as emu:
        p = pipelines(tmp_path, emu.url, files=2)
        p.start().wait_done()
        assert [r.json["think"] for r in chats(emu)] == [False, False]
        summaries = [r[0] for r in p.pipeline.store.conn.execute("SELECT summary FROM enrichments")]
        assert len(summaries) == 2 and not any("The user asks" in s for s in summaries)


def test_o17_explicit_timeouts_and_a_never_answered_request_ends(ollama):
    """The client has connect/read/write/pool timeouts and a finite request bound; an accepted, unanswered request ends."""
    client = chat_client(OllamaConfig(url=ollama.url, model="test-model", load_timeout_s=0.5, timeout_s=2))
    timeout = client._http.timeout
    assert None not in (timeout.connect, timeout.read, timeout.write, timeout.pool)
    assert timeout.read == 0.5 and client.max_request_s() == ol.CONNECT_TIMEOUT_S + ol.WRITE_TIMEOUT_S + 2.5
    ollama.inject("hang")
    with pytest.raises(ol.RequestTimeout):
        client.chat(MESSAGES)
    assert [r.status for r in chats(ollama)] == [None]  # the server never answered; the client still ended
