"""The team outbox: the SQLite table and the in-memory one behave alike."""

from __future__ import annotations

import pytest

from llmc_rag_service.store.db import Store
from llmc_rag_service.store.team_outbox import OutboxItem, TeamOutbox
from llmc_rag_service.team.outbox import MemoryOutbox


@pytest.fixture(params=["sqlite", "memory"])
def outbox(request, tmp_path):
    if request.param == "memory":
        yield MemoryOutbox()
        return
    store = Store(tmp_path / "llmc-rag.db")
    yield TeamOutbox(store)
    store.close()


def item(n: int, payload: bytes = b"{}", kind: str = "enrichment") -> OutboxItem:
    return OutboxItem(kind, f"{n:064x}", "test-model", 1, payload, dim=len(payload) // 4 if kind == "embedding" else 0)


def test_items_come_out_oldest_first_with_ids(outbox):
    """What was added first is published first; each item carries the id to remove it by."""
    outbox.add([item(3), item(1)])
    outbox.add([item(2, b"\0\0\0\0", kind="embedding")])
    got = outbox.oldest(10)
    assert [i.span_hash for i in got] == [f"{n:064x}" for n in (3, 1, 2)]
    assert len({i.id for i in got}) == 3 and all(i.id > 0 for i in got)
    assert got[2].kind == "embedding" and got[2].dim == 1 and got[2].payload == b"\0\0\0\0"
    assert [i.span_hash for i in outbox.oldest(2)] == [f"{n:064x}" for n in (3, 1)]


def test_a_key_waits_once_with_its_first_payload(outbox):
    """Adding a key again keeps the first result, as the team database would."""
    outbox.add([item(1, b'{"a":1}')])
    outbox.add([item(1, b'{"a":2}')])
    assert outbox.count() == 1 and outbox.oldest(5)[0].payload == b'{"a":1}'


def test_removed_items_are_gone_and_others_stay(outbox):
    outbox.add([item(1), item(2), item(3)])
    first, second, _ = outbox.oldest(3)
    outbox.remove([first.id, second.id])
    assert [i.span_hash for i in outbox.oldest(3)] == [f"{3:064x}"] and outbox.count() == 1


def test_the_sqlite_outbox_survives_reopening(tmp_path):
    """Waiting results are in the state file, not in memory."""
    store = Store(tmp_path / "llmc-rag.db")
    TeamOutbox(store).add([item(1), item(2)])
    store.close()
    reopened = Store(tmp_path / "llmc-rag.db")
    assert [i.span_hash for i in TeamOutbox(reopened).oldest(5)] == [f"{1:064x}", f"{2:064x}"]
    reopened.close()
