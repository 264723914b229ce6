"""Embeddings in the pipeline, end to end: the real Pipeline, store, queue and workers against the emulator."""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest

from llmc_rag_service.enrich import embedder
from llmc_rag_service.models import PROMPT_VERSION
from llmc_rag_service.enrich.embed_text import INPUT_VERSION, embed_text
from llmc_rag_service.service.pipeline import Pipeline
from llmc_rag_service.service.status import status_report
from llmc_rag_service.store import vectors
from llmc_rag_service.testing.emulator import EmbedModel, OllamaEmulator
from llmc_rag_service.testing.vectors import hashed_embedding
from tests.helpers import fast_backoffs, make_config, wait_for, write_tree

EMBED = "nomic-embed-text"


class Run:
    """A temp repo of ``files`` one-function files and a Pipeline with embeddings on."""

    def __init__(self, tmp_path, emu: OllamaEmulator, files: int = 6, **sections):
        self.root = tmp_path / "repo"
        write_tree(self.root, {f"m{i}.py": f"def handler_{i}(event):\n    return event * {i}\n" for i in range(files)})
        sections.setdefault("search", {"embed_model": EMBED})
        self.config = make_config(tmp_path, emu.url, [self.root], **sections)
        self.changed = threading.Event()
        self.pipeline = Pipeline(self.config, on_change=self.changed.set)
        self.pipeline.scan_all()

    def start(self) -> Run:
        self.pipeline.start_workers()
        return self

    def embeds(self) -> dict[str, int]:
        return self.pipeline.embed_counts()  # type: ignore[return-value]

    def settled(self) -> bool:
        c, e = self.pipeline.counts(), self.embeds()
        return c["pending"] + c["running"] + e["pending"] + e["running"] == 0

    def jobs(self, kind: str = "embed") -> list[dict]:
        rows = self.pipeline.store.conn.execute(
            "SELECT span_hash, state, attempts, last_error, basis FROM jobs WHERE kind = ? ORDER BY id", (kind,))
        return [dict(r) for r in rows]

    def vectors(self) -> dict[str, np.ndarray]:
        hashes, matrix = vectors.load_embeddings(self.pipeline.store.conn, EMBED, INPUT_VERSION)
        return dict(zip(hashes, matrix))


class Emulators:
    """Emulators started by a test (call it like OllamaEmulator); see ``runs`` for the teardown."""

    def __init__(self) -> None:
        self.made: list[OllamaEmulator] = []

    def __call__(self, *args, **kwargs) -> OllamaEmulator:
        self.made.append(OllamaEmulator(*args, **kwargs))
        self.made[-1].start()
        return self.made[-1]


@pytest.fixture
def emulators():
    return Emulators()


@pytest.fixture
def runs(emulators):
    """Pipelines made by the test. Teardown: close them (a short grace), stop the emulators
    (which ends requests still in flight), then wait, bounded, for every worker thread to end."""
    made: list[Run] = []

    def make(*args, **kwargs) -> Run:
        made.append(Run(*args, **kwargs))
        return made[-1]

    yield make
    for run in made:
        run.pipeline.close(0.1)
    for emu in emulators.made:
        emu.stop()
    pools = [pool for run in made for pool, _ in run.pipeline._lanes()]
    wait_for(lambda: all(pool.busy_threads() == 0 for pool in pools), 10, "worker threads ended")
    for run in made:
        run.pipeline.reap_retired()  # clients of workers that outlived the grace


def embed_requests(emu: OllamaEmulator) -> list[dict]:
    return [r.json for r in emu.requests if r.path == "/api/embed" and r.status == 200]


def test_every_span_is_embedded_in_batches_then_again_with_its_summary(tmp_path, runs, emulators):
    """Indexed spans are embedded at once in batches, with keep_alive on every request; each is
    embedded again when its enrichment lands, and the stored vector is that of summary + code."""
    emu = emulators(["test-model"], embed_models=[EMBED], latency_s=0.05)
    run = runs(tmp_path, emu, files=20).start()
    wait_for(run.settled, 20, "every enrichment and embedding done")
    sent = embed_requests(emu)
    assert all(body["keep_alive"] == "15m" and body["truncate"] is False for body in sent)
    assert max(len(body["input"]) for body in sent) == embedder.EMBED_BATCH
    assert sum(len(body["input"]) for body in sent) >= 40  # 20 code-only, 20 with the summary
    stored = run.vectors()
    assert len(stored) == 20 and all(job["basis"] == f"test-model@{PROMPT_VERSION}" for job in run.jobs())
    row = run.pipeline.store.conn.execute(
        "SELECT t.text, e.summary, t.span_hash, s.name FROM span_texts t JOIN enrichments e USING (span_hash)"
        " JOIN spans s USING (span_hash) LIMIT 1").fetchone()
    expected = np.asarray(hashed_embedding(embed_text(row["text"], row["summary"], name=row["name"])), dtype=np.float32)
    assert np.allclose(stored[row["span_hash"]], expected)
    assert status_report(run.config)["totals"]["embedded"] == 20


def test_a_missing_embed_model_blocks_nothing_and_is_said_with_the_pull(tmp_path, runs, emulators, monkeypatch):
    """Without the embed model every span is still enriched; embed jobs wait with their attempts intact,
    STATUS says ``ollama pull``; once the model is there, the probe sees it and the spans are embedded."""
    fast_backoffs(monkeypatch)
    emu = emulators(["test-model"])
    run = runs(tmp_path, emu).start()
    wait_for(lambda: run.pipeline.counts()["done"] == 6, 15, "every span enriched")
    wait_for(lambda: run.pipeline.embeds_down() == "model_missing", 10, "the embed model missing")
    line = run.pipeline.status_line()
    assert f"embed model {EMBED} missing, run: ollama pull {EMBED}" in line and line.startswith("idle")
    wait_for(lambda: all(job["state"] == "pending" and job["attempts"] == 0 for job in run.jobs()), 10,
             "every embed job back in the queue with its attempts intact")
    assert "ollama pull nomic-embed-text" in run.pipeline.last_error()
    assert run.pipeline.embeds_left() == 0  # nothing to wait for until someone pulls it
    emu.install_embed(EMBED)
    wait_for(run.settled, 15, "every span embedded after the pull")
    assert len(run.vectors()) == 6 and "embed model" not in run.pipeline.status_line()


def test_a_400_for_a_batch_sends_each_member_alone(tmp_path, runs, emulators, monkeypatch):
    """A batch answered 400 is split: every span is embedded by a request of its own, none fails."""
    emu = emulators(["test-model"], embed_models=[EMBED], latency_s=5.0)
    emu.inject("bad_request_400", endpoint="embed", message="invalid input")
    # One embedding thread: its first turn claims one job, then the other five as its batch. With
    # the default EMBED_THREADS_PER_HOST (3), another thread could claim one job between the two
    # (seen 1 run in 20 under load), and a lone input refused would prove no split.
    monkeypatch.setattr(embedder, "EMBED_THREADS_PER_HOST", 1)
    run = runs(tmp_path, emu, ollama={"concurrency": 1}).start()
    assert run.pipeline.embeds.pool.hosts[0].client.concurrency == 1
    wait_for(lambda: run.embeds()["done"] == 6, 15, "six spans embedded")
    embeds = [r for r in emu.requests if r.path == "/api/embed"]
    attempts = [len(r.json["input"]) for r in embeds]
    # The refused batch is resent one input per request; every span is embedded once after the 400.
    assert embeds[0].status == 400 and attempts[0] == 6, attempts
    assert attempts[1:].count(1) >= attempts[0] and sum(attempts[1:]) == 6, attempts
    assert run.embeds()["failed"] == 0


def test_an_input_over_the_model_context_is_cut_further_until_it_fits(tmp_path, runs, emulators):
    """A lone input refused as too long is re-cut to half the context (down to what the model takes)."""
    tiny = EmbedModel(dim=768, context_length=200)
    emu = emulators(["test-model"], embed_models={EMBED: tiny}, latency_s=5.0)
    run = runs(tmp_path, emu, files=1)
    write_tree(run.root, {"m0.py": "def big():\n" + "".join(f"    total += item_{i}\n" for i in range(400))})
    run.pipeline.scan_all()
    run.start()
    # The prompt budget may cut the long function into parts (more spans); each must be embedded.
    spans = run.pipeline.store.conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
    wait_for(lambda: run.embeds()["done"] == spans, 15, "the long span's parts embedded")
    assert run.embeds()["failed"] == 0
    statuses = [r.status for r in emu.requests if r.path == "/api/embed"]
    assert statuses[-1] == 200 and statuses.count(400) >= 2
    assert run.pipeline.embeds.pool.context_tokens < 2048  # remembered for the next spans


@pytest.mark.parametrize("fault, reason", [("wrong_dim", "dimension 384, but nomic-embed-text has dimension 768"),
                                           ("nan", "NaN or infinite values")])
def test_refused_vectors_are_retried_then_dead_lettered_with_the_reason(tmp_path, runs, emulators, monkeypatch, fault, reason):
    """Vectors of the wrong dimension or with NaN are never stored: the job is retried, then failed with why."""
    fast_backoffs(monkeypatch)
    emu = emulators(["test-model"], embed_models=[EMBED], latency_s=30.0)
    run = runs(tmp_path, emu, files=1, queue={"max_attempts": 2}).start()
    wait_for(lambda: run.embeds()["done"] == 1, 15, "the first span embedded")
    write_tree(run.root, {"m1.py": "def other():\n    return 2\n"})
    emu.inject(fault, count=2, endpoint="embed", dim=384)
    run.pipeline.scanners[run.root].process_paths(["m1.py"])
    run.pipeline.embeds.pool.notify_work()
    wait_for(lambda: run.embeds()["failed"] == 1, 15, "the second span dead-lettered")
    (failed,) = [job for job in run.jobs() if job["state"] == "failed"]
    assert failed["attempts"] == 2 and reason in failed["last_error"]
    assert len(run.vectors()) == 1 and all(np.isfinite(v).all() for v in run.vectors().values())


def test_an_outage_releases_embed_jobs_without_spending_attempts(tmp_path, runs, emulators, monkeypatch):
    """With Ollama down the embed jobs go back with their attempts; when it is back they are embedded."""
    fast_backoffs(monkeypatch)
    emu = emulators(["test-model"], embed_models=[EMBED], latency_s=30.0)
    emu.stop()
    run = runs(tmp_path, emu).start()
    wait_for(lambda: run.pipeline.embeds_down() == "unreachable", 10, "the embed lane down")
    assert all(job["attempts"] == 0 for job in run.jobs())
    emu.start()
    wait_for(lambda: run.embeds()["done"] == 6, 15, "embedded after the outage")
    assert run.embeds()["failed"] == 0


def test_a_changed_embed_model_re_embeds_lazily_and_never_mixes_vectors(tmp_path, runs, emulators):
    """A reload with another embed model queues every span for it; the old model's vectors stay apart."""
    other = "mxbai-embed-large"
    emu = emulators(["test-model"], embed_models={EMBED: EmbedModel(), other: EmbedModel(dim=1024)},
                    latency_s=30.0)
    run = runs(tmp_path, emu).start()
    wait_for(lambda: run.embeds()["done"] == 6, 15, "embedded with the first model")
    new = make_config(tmp_path, emu.url, [run.root], search={"embed_model": other})
    run.pipeline.apply_config(run.config, new)
    wait_for(lambda: run.embeds()["done"] == 6 and run.pipeline.embeds.model == other, 15, "re-embedded")
    conn = run.pipeline.store.conn
    assert vectors.load_embeddings(conn, other, INPUT_VERSION)[1].shape == (6, 1024)
    assert vectors.load_embeddings(conn, EMBED, INPUT_VERSION)[1].shape == (6, 768)


def test_embeddings_off_sends_no_embed_request(tmp_path, runs, emulators):
    """search.embed_model null: no embed job, no /api/embed, status counts 0 embedded."""
    emu = emulators(["test-model"], embed_models=[EMBED])
    run = runs(tmp_path, emu, search={"embed_model": None}).start()
    wait_for(lambda: run.pipeline.counts()["done"] == 6, 15, "every span enriched")
    assert run.pipeline.embed_counts() is None and emu.count("/api/embed") == 0
    assert run.jobs() == [] and status_report(run.config)["totals"]["embedded"] == 0


def test_enrich_embeds_too_and_says_when_the_embed_model_is_missing(tmp_path, capsys):
    """The one-shot enrich embeds every span when it can, once, after its enrichment; without the model it
    still exits 0 and says the pull."""
    from llmc_rag_service import cli

    root = tmp_path / "repo"
    write_tree(root, {"a.py": "def f(x):\n    return x\n", "b.py": "def g(y):\n    return y\n"})
    with OllamaEmulator(["test-model"], embed_models=[EMBED]) as emu:
        config = make_config(tmp_path, emu.url, [root], search={"embed_model": EMBED})
        assert cli.main(["enrich", "-c", str(config.source)]) == 0
        assert "2/2 spans enriched, 2 embedded" in capsys.readouterr().err
        report = json.loads(_status_json(cli, config, capsys))
        assert report["repos"][0]["embedded"] == 2 and report["totals"]["embedded"] == 2
        # Embedded once each, after the enrichments: every input holds its span's summary (the emulator's
        # summaries say "emulated summary for" the prompt's first lines), none is code alone.
        inputs = [text for body in embed_requests(emu) for text in body["input"]]
        last_chat = max(r.t_end for r in emu.requests if r.path == "/api/chat")
        assert len(inputs) == 2 and all("emulated summary for" in text for text in inputs), inputs
        assert min(r.t_start for r in emu.requests if r.path == "/api/embed") >= last_chat
    (tmp_path / "b").mkdir()
    with OllamaEmulator(["test-model"]) as bare:
        config = make_config(tmp_path / "b", bare.url, [root], search={"embed_model": EMBED})
        assert cli.main(["enrich", "-c", str(config.source), "--wait-s", "60"]) == 0
        err = capsys.readouterr().err
        assert "2/2 spans enriched, 0 embedded" in err and f"run: ollama pull {EMBED}" in err


def test_enrich_says_and_exits_1_when_embeddings_failed_for_good(tmp_path, capsys, monkeypatch):
    """After a first run, every vector comes back with another dimension: the new spans' embeddings are
    dead-lettered, and enrich says so (summary, the --retry-failed hint), exits 1 and status --json counts
    them, as it does failed spans."""
    from llmc_rag_service import cli

    fast_backoffs(monkeypatch)
    root = tmp_path / "repo"
    write_tree(root, {"a.py": "def f(x):\n    return x\n"})
    with OllamaEmulator(["test-model"], embed_models=[EMBED]) as emu:
        config = make_config(tmp_path, emu.url, [root], search={"embed_model": EMBED}, queue={"max_attempts": 2})
        assert cli.main(["enrich", "-c", str(config.source)]) == 0
        write_tree(root, {"b.py": "def g(y):\n    return y\n", "c.py": "def h(z):\n    return z\n"})
        emu.inject("wrong_dim", count=100, endpoint="embed", dim=384)
        assert cli.main(["enrich", "-c", str(config.source)]) == 1
        err = capsys.readouterr().err
        assert "3/3 spans enriched, 1 embedded (2 failed), 0 failed" in err
        assert "2 span embeddings failed for good" in err and "enrich --retry-failed" in err
        report = json.loads(_status_json(cli, config, capsys))
        assert report["totals"]["embed_failed"] == 2 and report["repos"][0]["embed_failed"] == 2


def _status_json(cli, config, capsys) -> str:
    assert cli.main(["status", "--json", "-c", str(config.source)]) == 0
    return capsys.readouterr().out


def test_vectors_are_unit_length_float32_rows(tmp_path, runs, emulators):
    """What the workers store is what search reads: dim float32 values per span, finite, unit length."""
    emu = emulators(["test-model"], embed_models=[EMBED], latency_s=30.0)
    run = runs(tmp_path, emu, files=3).start()
    wait_for(lambda: run.embeds()["done"] == 3, 15, "embedded")
    for vector in run.vectors().values():
        assert vector.dtype == np.float32 and vector.shape == (768,)
        assert math.isclose(float(np.linalg.norm(vector)), 1.0, rel_tol=1e-5)


def test_search_embeds_the_query_and_ranks_the_stored_vectors(tmp_path, capsys):
    """After enrich, `llmc-rag search` embeds the query through /api/embed and ranks semantically."""
    from llmc_rag_service import cli

    root = tmp_path / "repo"
    write_tree(root, {"http.py": "def parse_json_body(request):\n    return json.loads(request.body)\n",
                      "net.py": "def open_tcp_socket(host, port):\n    return socket.create_connection((host, port))\n"})
    with OllamaEmulator(["test-model"], embed_models=[EMBED]) as emu:
        config = make_config(tmp_path, emu.url, [root], search={"embed_model": EMBED})
        assert cli.main(["enrich", "-c", str(config.source)]) == 0
        capsys.readouterr()
        assert cli.main(["search", "-c", str(config.source), "--json", "--mode", "semantic", "body of json"]) == 0
        result = json.loads(capsys.readouterr().out)
        queries = [r.json for r in emu.requests if r.path == "/api/embed"][-1]
    assert result["mode"] == "semantic" and result["degraded"] is None
    assert result["hits"][0]["name"] == "parse_json_body" and result["hits"][0]["semantic_rank"] == 1
    assert queries["input"] == ["body of json"] and queries["model"] == EMBED


@pytest.mark.timeout(30)
def test_a_stop_gives_both_lanes_one_grace_not_one_each(tmp_path, runs, emulators):
    """With a request hung in the enrichment lane and one in the embedding lane,
    close() ends after one grace (the lanes share one deadline), and both jobs
    go back to pending; one grace per lane would take twice as long, which the
    unit's TimeoutStopSec cannot hold (2 x 20 s + the scan's join)."""
    grace_s = 1.2
    emu = emulators(["test-model"], embed_models=[EMBED])
    emu.inject("hang", 50)
    emu.inject("hang", 50, endpoint="embed")
    run = runs(tmp_path, emu, files=2).start()
    wait_for(lambda: emu.count("/api/chat") >= 1 and emu.count("/api/embed") >= 1, 10, "a request in each lane")
    started = time.monotonic()
    returned = run.pipeline.close(grace_s)
    took_s = time.monotonic() - started
    assert returned >= 2
    assert grace_s <= took_s < 1.9 * grace_s, took_s
