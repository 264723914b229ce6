"""Team cache against a real PostgreSQL server: lookups, publishes, poisoned rows, embeddings."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

from structlog.testing import capture_logs

from llmc_rag_service.team.keys import EmbeddingKey, EnrichmentKey, usable_vectors
from llmc_rag_service.testing.postgres import free_port
from tests.pg_fixture import TEST_SETTINGS, enrichment, key


def test_a_published_enrichment_is_found_by_a_teammate(pg, team_factory):
    """What one daemon publishes, another finds by the same key, field for field."""
    alice, bob = team_factory(pg.dsn), team_factory(pg.dsn)
    assert alice.publish([(key(1), enrichment(1)), (key(2), enrichment(2))]) == 2
    found = bob.lookup([key(1), key(2), key(3)])
    assert found == {key(1): enrichment(1), key(2): enrichment(2)}
    assert bob.status()["hits"] == 2 and alice.status()["published"] == 2


def test_the_key_includes_model_and_prompt_version(pg, team_factory):
    """An enrichment made by another model or prompt version is not a hit."""
    cache = team_factory(pg.dsn)
    cache.publish([(key(1), enrichment(1))])
    assert cache.lookup([key(1, model="other-model"), key(1, version=2)]) == {}


def test_the_first_publisher_wins(pg, team_factory):
    """A second publish of the same key changes nothing (ON CONFLICT DO NOTHING)."""
    alice, bob = team_factory(pg.dsn), team_factory(pg.dsn)
    assert alice.publish([(key(1), enrichment(1))]) == 1
    assert bob.publish([(key(1), enrichment(99))]) == 0
    assert bob.lookup([key(1)]) == {key(1): enrichment(1)}


def test_a_batch_of_keys_is_one_statement_per_batch(pg, team_factory):
    """Looking up 250 keys with batch 100 sends 3 statements, not 250."""
    cache = team_factory(pg.dsn, settings=replace(TEST_SETTINGS, batch=100))
    cache.publish([(key(i), enrichment(i)) for i in range(250)])
    before = cache.status()["queries"]
    assert len(cache.lookup([key(i) for i in range(250)])) == 250
    assert cache.status()["queries"] - before == 3


def test_a_poisoned_row_is_ignored_and_counted(pg, team_factory):
    """A row whose fields fail the enrichment schema is never returned; good rows still are."""
    cache = team_factory(pg.dsn)
    cache.publish([(key(2), enrichment(2))])
    for n, fields in ((1, {"summary": 5}), (3, {"summary": "ok", "inputs": "not a list"}), (4, [1, 2])):
        pg.sql("INSERT INTO llmc_enrichments(span_hash, model, prompt_version, fields, producer) "
               "VALUES (%s, %s, %s, %s::jsonb, 'mallory')", (key(n).span_hash, "test-model", 1, json.dumps(fields)))
    assert cache.lookup([key(1), key(2), key(3), key(4)]) == {key(2): enrichment(2)}
    assert cache.status()["rejected"] == 3


def test_a_validator_that_raises_rejects_the_row(pg, team_factory):
    """An exception from the validate callable is a rejection, not a crash."""
    def explode(fields):
        raise ValueError("boom")

    strict = team_factory(pg.dsn, validate=explode)
    strict.publish([(key(1), enrichment(1))])
    assert strict.lookup([key(1)]) == {}
    assert strict.status()["rejected"] == 1


def test_only_hashes_and_fields_reach_the_database(pg, team_factory):
    """A key that is not a 64-hex span hash (say, a path) is never sent; rows hold no path or text."""
    cache = team_factory(pg.dsn)
    assert cache.publish([(EnrichmentKey("src/secret/config.py", "test-model", 1), enrichment(1))]) == 0
    cache.publish([(key(1), enrichment(1))])
    rows = pg.sql("SELECT span_hash, fields::text FROM llmc_enrichments")
    assert [r[0] for r in rows] == [key(1).span_hash]
    assert json.loads(rows[0][1]) == {"summary": "Adds 1.", "inputs": ["x"], "outputs": ["x + 1"],
                                      "side_effects": [], "pitfalls": [], "usage": "f(1) == 2"}


def test_embeddings_round_trip_and_bad_vectors_are_ignored(pg, team_factory):
    """A vector comes back byte for byte; one whose bytes do not fit its dim is never published."""
    alice, bob = team_factory(pg.dsn), team_factory(pg.dsn)
    vec = struct.pack("<4f", 0.5, -1.0, 2.0, 0.0)
    ek = EmbeddingKey(key(1).span_hash, "nomic-embed-text", 1)
    assert alice.publish_embeddings([(ek, vec), (EmbeddingKey(key(2).span_hash, "e", 1), b"abc")]) == 1
    assert bob.lookup_embeddings([ek, EmbeddingKey(key(2).span_hash, "e", 1)], dim=4) == {ek: vec}
    assert bob.status()["embed_hits"] == 1 and alice.status()["embed_published"] == 1
    assert alice.status()["published"] == 0 and bob.status()["hits"] == 0  # the enrichment counters stay apart


def ekey(n: int) -> EmbeddingKey:
    return EmbeddingKey(key(n).span_hash, "nomic-embed-text", 1)


def poison(pg, n: int, vector: bytes, dim: int) -> None:
    pg.sql("INSERT INTO llmc_embeddings(span_hash, embed_model, input_version, vector, dim, producer) "
           "VALUES (%s, 'nomic-embed-text', 1, %s, %s, 'mallory')", (ekey(n).span_hash, vector, dim))


def test_embedding_rows_of_another_dimension_or_with_nan_are_ignored_and_logged(pg, team_factory):
    """Rows that would break the local store (a NaN, another dimension than the model's) are refused, each
    logged with its producer; the sound rows are still found."""
    cache = team_factory(pg.dsn)
    good = {ekey(n): struct.pack("<4f", n, 1.0, 0.0, -1.0) for n in (1, 2, 3)}
    cache.publish_embeddings(good.items())
    poison(pg, 4, struct.pack("<4f", 1.0, float("nan"), 0.0, 0.0), 4)
    poison(pg, 5, struct.pack("<3f", 1.0, 0.0, 0.0), 3)
    with capture_logs() as logs:
        assert cache.lookup_embeddings([ekey(n) for n in range(1, 6)], dim=4) == good
        # Not knowing the dimension yet, the one most rows share is the model's.
        assert cache.lookup_embeddings([ekey(n) for n in range(1, 6)], dim=None) == good
    refused = [(e["span_hash"], e["producer"], e["reason"]) for e in logs if e["event"] == "team_row_invalid"]
    assert refused[:2] == [(ekey(4).span_hash, "mallory", "vector has NaN or infinite values"),
                           (ekey(5).span_hash, "mallory", "dimension 3, but the model's is 4")]
    assert len(refused) == 4 and cache.status()["rejected"] == 4


def test_no_lone_row_sets_the_dimension():
    """Before this daemon has a vector of its own, a lone row (or a tie) is not trusted to say the model's
    dimension: nothing is taken; a row whose bytes do not fit its dim is refused whatever the dimension."""
    one = [(key(1).span_hash, "m", 1, struct.pack("<2f", 1, 2), 2, "p")]
    tie = one + [(key(2).span_hash, "m", 1, struct.pack("<3f", 1, 2, 3), 3, "q")]
    assert usable_vectors(one, None) == ({}, [])
    assert usable_vectors(tie, None) == ({}, [])
    assert usable_vectors(one, 2) == ({EmbeddingKey(key(1).span_hash, "m", 1): struct.pack("<2f", 1, 2)}, [])
    short = [(key(3).span_hash, "m", 1, b"\0" * 7, 2, "r")]
    assert usable_vectors(short, 2) == ({}, [(key(3).span_hash, "r", "vector of 7 bytes for dim 2")])


def test_a_closed_cache_sends_nothing_and_loses_nothing(pg, team_factory):
    """After close (daemon stopping), calls do not reach the database: lookups miss, results go to the outbox."""
    cache = team_factory(pg.dsn)
    cache.check()
    cache.close()
    sent = cache.status()["queries"]
    assert cache.lookup([key(1)]) == {}
    assert cache.publish([(key(1), enrichment(1))]) == 0
    assert cache.status()["outbox"] == 1 and cache.status()["queries"] == sent


def test_an_embedding_claim_keeps_teammates_off_the_text_until_it_is_published(pg, team_factory):
    """A text one daemon claimed cannot be claimed by another (it is being embedded); a published one by
    nobody; the claimer may claim its own keys again."""
    alice, bob = team_factory(pg.dsn), team_factory(pg.dsn)
    assert alice.claim_embeddings([ekey(1), ekey(2)]) == {ekey(1), ekey(2)}
    assert bob.claim_embeddings([ekey(1), ekey(2), ekey(3)]) == {ekey(3)}
    assert alice.claim_embeddings([ekey(1)]) == {ekey(1)}
    alice.publish_embeddings([(ekey(1), struct.pack("<2f", 1, 2))])
    assert alice.claim_embeddings([ekey(1)]) == set() and bob.claim_embeddings([ekey(1)]) == set()


def test_an_unreachable_team_grants_every_embedding_claim(team_factory):
    """Nothing listens at the DSN: every text may be embedded here (the daemon works alone)."""
    cache = team_factory(f"postgresql://llmc:pw@127.0.0.1:{free_port()}/llmc")
    assert cache.claim_embeddings([ekey(1), ekey(2)]) == {ekey(1), ekey(2)}
    assert cache.lookup_embeddings([ekey(1)], dim=2) == {}
