"""Embeddings through the team cache, end to end: real Pipelines (separate state dirs) on copies of one real
code base, one Ollama emulator counting /api/embed inputs, one real PostgreSQL server."""

from __future__ import annotations

import collections
import struct

import numpy as np
import pytest
from structlog.testing import capture_logs

from llmc_rag_service import cli
from llmc_rag_service.enrich.embed_text import embed_text, input_hash
from llmc_rag_service.testing.emulator import OllamaEmulator
from tests.helpers import make_config, wait_for
from tests.teamkit import EMBED, SMALL_CODE_BASE, TINY_CODE_BASE, copy_code_base, team_settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def source(tmp_path):
    """A small real code base every daemon copies."""
    return copy_code_base(tmp_path / "source", SMALL_CODE_BASE)


@pytest.fixture
def tiny_source(tmp_path):
    """A tiny real code base (a few texts) every daemon copies."""
    return copy_code_base(tmp_path / "source", TINY_CODE_BASE)


def embed_inputs(emu: OllamaEmulator) -> list[str]:
    """Every text the emulator was asked to embed, in order (one entry per input, not per request)."""
    return [text for r in emu.requests if r.path == "/api/embed" and r.json for text in r.json["input"]]


def team_vectors(pg) -> dict[str, bytes]:
    return {h: bytes(v) for h, v in pg.sql("SELECT span_hash, vector FROM llmc_embeddings")}


def wait_published(daemon, emu: OllamaEmulator) -> None:
    """Until ``daemon`` (the only one that sent anything) has published every text it embedded: a worker
    publishes just after storing, so its jobs may be done a moment before."""
    wait_for(lambda: daemon.pipeline.team_status()["embed_published"] == len(set(embed_inputs(emu))), 10,
             "every vector published")


def final_texts(daemon) -> dict[str, str]:
    """Span hash -> the text its vector is made of now (code and the enrichment's summary)."""
    queue = daemon.pipeline.embeds.queue
    return {h: embed_text(i.text, i.summary, name=i.name) for h, i in queue.inputs(sorted(daemon.span_hashes())).items()}


def test_a_teammates_vectors_cost_no_embed_request(pg, tmp_path, source, daemons):
    """Alice embeds a code base; Bob, on another copy, sends none of the texts she sent: the emulator receives
    each distinct embed input once in total, and Bob stores the very vectors Alice published."""
    with OllamaEmulator(embed_models=[EMBED]) as emu, capture_logs() as logs:
        alice = daemons(tmp_path, "alice", emu.url, pg.dsn, team_settings(), source=source, embed=True)
        alice.start().wait_done()
        wait_published(alice, emu)
        sent_by_alice = embed_inputs(emu)
        bob = daemons(tmp_path, "bob", emu.url, pg.dsn, team_settings(), source=source, embed=True)
        bob.start().wait_done()
        inputs = embed_inputs(emu)
        # A hit is logged just after its job is done: wait for the lines inside capture_logs.
        wait_for(lambda: {e["span_hash"] for e in logs if e["event"] == "team_embed_hit"} >= bob.span_hashes(), 10,
                 "every hit logged")
    spans = alice.span_hashes()
    assert len(spans) > 40 and bob.span_hashes() == spans
    assert max(collections.Counter(inputs).values()) == 1  # no text embedded twice in the team
    assert not set(inputs[len(sent_by_alice):]) & set(sent_by_alice)
    assert bob.vectors().keys() == spans and bob.vectors() == alice.vectors()
    # Every final vector of Bob's is a teammate's, published under the hash of the text, never a path.
    published = team_vectors(pg)
    assert {input_hash(t) for t in final_texts(bob).values()} <= published.keys()
    assert published.keys() == {input_hash(t) for t in inputs}
    hits = [e for e in logs if e["event"] == "team_embed_hit"]
    assert {e["span_hash"] for e in hits} == spans
    status = bob.pipeline.team_status()
    assert status["embed_hits"] >= len(spans) and status["embed_published"] == len(inputs) - len(sent_by_alice)
    assert alice.pipeline.team_status()["embed_published"] == len(sent_by_alice)


def test_two_daemons_started_together_embed_each_text_once(pg, tmp_path, daemons):
    """Two daemons start on copies of the same code at once and walk their queues in the same order: claims
    split the texts between them, so the emulator receives each distinct embed input once in total."""
    # Some 75 texts: each daemon still takes part of the other's (asserted below), at a fraction of the CPU.
    source = copy_code_base(tmp_path / "source", SMALL_CODE_BASE)
    with OllamaEmulator(embed_models=[EMBED], embed_latency_s=0.002) as emu:
        team = [daemons(tmp_path, f"dev{i}", emu.url, pg.dsn, team_settings(), source=source, embed=True)
                for i in range(2)]
        for daemon in team:
            daemon.start()
        for daemon in team:
            daemon.wait_done()
        inputs = embed_inputs(emu)
    spans = team[0].span_hashes()
    assert max(collections.Counter(inputs).values()) == 1
    assert team[0].vectors().keys() == spans and team[0].vectors() == team[1].vectors()
    assert all(d.pipeline.team_status()["embed_hits"] > 0 for d in team)  # each took the other's work


def test_a_teammates_vectors_of_another_dimension_are_refused_by_a_fresh_store(pg, tmp_path, tiny_source, daemons):
    """Every published vector has another dimension than the model Bob's server serves (a teammate runs
    another model under the same name): Bob, with no vector of his own yet, checks them against his
    server's /api/show, refuses them all and embeds every text himself with the right dimension."""
    with OllamaEmulator(embed_models=[EMBED]) as emu, capture_logs() as logs:
        alice = daemons(tmp_path, "alice", emu.url, pg.dsn, team_settings(), source=tiny_source, embed=True)
        alice.start().wait_done()
        wait_published(alice, emu)
        texts = final_texts(alice)
        pg.sql("UPDATE llmc_embeddings SET vector = substring(vector from 1 for 2048), dim = 512, "
               "producer = 'mallory'")
        bob = daemons(tmp_path, "bob", emu.url, pg.dsn, team_settings(), source=tiny_source, embed=True)
        bob.start().wait_done()
    vectors = bob.vectors()
    assert len(vectors) == len(texts) > 0
    assert {np.frombuffer(v, dtype="<f4").size for v in vectors.values()} == {768}
    assert bob.pipeline.team_status()["embed_hits"] == 0
    assert {e["reason"] for e in logs if e["event"] == "team_row_invalid"} == {"dimension 512, but the model's is 768"}


def test_a_poisoned_embedding_row_is_ignored_and_logged(pg, tmp_path, tiny_source, daemons):
    """Two of Alice's published vectors are spoiled (another dimension; a NaN): Bob refuses both, logs each
    with its producer, embeds those two texts himself and stores sound vectors."""
    with OllamaEmulator(embed_models=[EMBED]) as emu, capture_logs() as logs:
        alice = daemons(tmp_path, "alice", emu.url, pg.dsn, team_settings(), source=tiny_source, embed=True)
        alice.start().wait_done()
        wait_published(alice, emu)
        sent = len(embed_inputs(emu))
        texts = final_texts(alice)
        wrong_dim, nan = (sorted(texts)[i] for i in (0, 1))
        pg.sql("UPDATE llmc_embeddings SET vector = %s, dim = 3, producer = 'mallory' WHERE span_hash = %s",
               (struct.pack("<3f", 1, 0, 0), input_hash(texts[wrong_dim])))
        spoiled = struct.pack("<768f", *([float("nan")] + [0.0] * 767))
        pg.sql("UPDATE llmc_embeddings SET vector = %s, producer = 'mallory' WHERE span_hash = %s",
               (spoiled, input_hash(texts[nan])))
        bob = daemons(tmp_path, "bob", emu.url, pg.dsn, team_settings(), source=tiny_source, embed=True)
        bob.start().wait_done()
        resent = embed_inputs(emu)[sent:]
    assert texts[wrong_dim] in resent and texts[nan] in resent
    refused = {e["span_hash"]: e for e in logs if e["event"] == "team_row_invalid"}
    assert refused.keys() == {input_hash(texts[wrong_dim]), input_hash(texts[nan])}
    assert {e["producer"] for e in refused.values()} == {"mallory"}
    assert refused[input_hash(texts[nan])]["reason"] == "vector has NaN or infinite values"
    assert refused[input_hash(texts[wrong_dim])]["reason"] == "dimension 3, but the model's is 768"
    vectors = bob.vectors()
    for span in (wrong_dim, nan):
        vector = np.frombuffer(vectors[span], dtype="<f4")
        assert vector.size == 768 and np.isfinite(vector).all()
    assert bob.pipeline.team_status()["embed_hits"] >= len(texts) - 2


def test_embeddings_wait_in_the_outbox_while_the_team_server_is_down(pg, tmp_path, source, daemons):
    """PostgreSQL stops mid-run: the daemon keeps embedding alone, its vectors wait in the outbox, and once
    the server is back every vector it made is published."""
    with OllamaEmulator(embed_models=[EMBED], embed_latency_s=0.002, latency_s=0.002) as emu:
        daemon = daemons(tmp_path, "dev", emu.url, pg.dsn, team_settings(), source=source, embed=True)
        daemon.start()
        wait_for(lambda: daemon.pipeline.team_status()["embed_published"] >= 16, 30, "some vectors published")
        pg.stop()
        daemon.wait_done(30)
        inputs = embed_inputs(emu)
        waiting = daemon.pipeline.team.cache.outbox.oldest(10_000)
        assert daemon.pipeline.team_status()["reachable"] is False
        assert any(item.kind == "embedding" for item in waiting)
        assert daemon.vectors().keys() == daemon.span_hashes()  # nothing waited for the team
        pg.start()
        wait_for(lambda: daemon.pipeline.team_status()["reachable"] and not daemon.pipeline.team_status()["outbox"]
                 and daemon.pipeline.team_status()["embed_published"] == len(set(inputs)),
                 30, "reconnected, the outbox drained, every vector published")
    assert team_vectors(pg).keys() == {input_hash(t) for t in inputs}


def test_texts_a_teammate_failed_to_embed_are_free_at_once(pg, tmp_path, tiny_source, daemons):
    """Alice's Ollama lacks the embed model: her first batches fail and she gives their claims up at once,
    so Bob (whose Ollama has it) embeds every text without waiting for her lease to run out."""
    with OllamaEmulator() as alices, OllamaEmulator(embed_models=[EMBED]) as bobs, capture_logs() as logs:
        alice = daemons(tmp_path, "alice", alices.url, pg.dsn, team_settings(lease_s=60), source=tiny_source, embed=True)
        alice.start()
        wait_for(lambda: alice.pipeline.embeds_down() == "model_missing", 10, "alice's embed model missing")
        assert embed_inputs(alices)  # she had claimed and sent a batch
        wait_for(lambda: not pg.sql("SELECT 1 FROM llmc_claims WHERE model = %s", (EMBED,)), 10,
                 "alice's embedding claims released")
        bob = daemons(tmp_path, "bob", bobs.url, pg.dsn, team_settings(lease_s=60), source=tiny_source, embed=True)
        bob.start().wait_done(20)
        inputs = embed_inputs(bobs)
    assert bob.vectors().keys() == bob.span_hashes()
    assert max(collections.Counter(inputs).values()) == 1
    assert "team_embed_deferred" not in {e["event"] for e in logs}


def test_enrich_on_a_copy_a_teammate_embedded_says_where_the_vectors_came_from(pg, tmp_path, tiny_source, daemons,
                                                                               capsys):
    """`enrich` on another copy sends no text a teammate already embedded, and its summary line counts the
    vectors taken from the team cache."""
    with OllamaEmulator(embed_models=[EMBED]) as emu:
        alice = daemons(tmp_path, "alice", emu.url, pg.dsn, team_settings(), source=tiny_source, embed=True)
        alice.start().wait_done()
        wait_published(alice, emu)
        sent = embed_inputs(emu)
        repo = copy_code_base(tmp_path / "bob" / "repo", TINY_CODE_BASE)
        config = make_config(tmp_path / "bob", emu.url, [repo], team={"postgres": pg.dsn},
                             search={"embed_model": EMBED})
        assert cli.main(["enrich", "-c", str(config.source)]) == 0
        inputs = embed_inputs(emu)
    assert max(collections.Counter(inputs).values()) == 1 and not set(inputs[len(sent):]) & set(sent)
    spans = len(alice.span_hashes())
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith(f"enrich: {spans}/{spans} spans"))
    assert line.startswith(f"enrich: {spans}/{spans} spans enriched ({spans} from the team cache), {spans} embedded (")
    assert " vectors from the team cache), 0 failed, 0 pending in " in line
    taken = int(line.split(f"{spans} embedded (")[1].split(" vectors from the team cache)")[0])
    assert taken >= spans  # every final vector, and the code-only ones Alice had made
