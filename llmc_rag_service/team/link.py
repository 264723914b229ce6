"""The team database behind a circuit breaker, with the outbox for what it cannot take now.

:meth:`TeamLink.call` runs one ``store.team_pg`` statement or, while the
database is known to be down, nothing at all: it never raises, it answers
``(ok, result)``. :meth:`send` publishes results of any kind (the one
publish path); those it could not are kept with :meth:`keep` and sent again
by :meth:`drain` once a probe succeeded.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from llmc_rag_service.store import team_pg
from llmc_rag_service.store.team_outbox import OutboxItem
from llmc_rag_service.team.client import TeamDB
from llmc_rag_service.team.errors import TeamError
from llmc_rag_service.team.health import Health
from llmc_rag_service.team.outbox import Outbox
from llmc_rag_service.team.settings import TeamSettings

log = structlog.get_logger("llmc_rag_service.team")

#: Kind of an :class:`OutboxItem` -> (its publish statement, the statement's row of an item).
_PUBLISH: dict[str, tuple[Callable[..., int], Callable[[OutboxItem], tuple[Any, ...]]]] = {
    "enrichment": (team_pg.publish_enrichments, lambda i: ((i.span_hash, i.model, i.version), i.payload.decode())),
    "embedding": (team_pg.publish_embeddings, lambda i: ((i.span_hash, i.model, i.version), i.payload, i.dim)),
}


class TeamLink:
    """One daemon's link to the team database.

    Args:
        dsn: ``team.postgres``. settings: timeouts and batch size.
        outbox: where unpublished results wait.
        producer: written with published rows.
        clock: monotonic seconds for the probe backoff.
        on_recovered: called after a successful probe (publications may have been missed).

    Raises:
        TeamNotInstalled: psycopg is missing.
    """

    def __init__(self, dsn: str, settings: TeamSettings, outbox: Outbox, producer: str,
                 clock: Callable[[], float], on_recovered: Callable[[], None]):
        self.db = TeamDB(dsn, settings)
        self.health = Health(self.db.url, settings.probe_max_s, clock)
        self.outbox, self.settings = outbox, settings
        self.producer = producer
        self._on_recovered = on_recovered
        self._probe_lock = threading.Lock()
        self._first_lock = threading.Lock()
        #: Set when something may wait in the outbox (true at start: an earlier run may have left some).
        self.outbox_dirty = True
        self.failures = threading.Event()

    def call(self, fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """(True, ``fn(conn, *args)``), or (False, None) when the database is
        skipped (breaker open) or the statement failed (breaker opens).
        Before the first contact, probes first (bounded by the timeouts)."""
        if self.db.closed or (self.health.reachable is None and not self._first_contact()):
            return False, None
        if not self.health.usable():
            return False, None
        try:
            result = self.db.run(fn, *args)
        except TeamError as err:
            self.health.failed(err)
            self.failures.set()
            return False, None
        self.health.succeeded()
        return True, result

    def _first_contact(self) -> bool:
        """Probe before the very first statement; threads that waited meanwhile
        use that probe's outcome instead of each probing again (at start every
        worker asks at once)."""
        with self._first_lock:
            if self.health.reachable is None:
                return self.probe()
        return self.health.usable()

    def probe(self) -> bool:
        """Connect and migrate; True if the database is usable now."""
        try:
            self.check()
        except TeamError:
            return False
        return True

    def check(self) -> int:
        """Like :meth:`probe` but returns the schema version or raises the
        :class:`TeamError` (for ``serve`` start and ``doctor``)."""
        with self._probe_lock:
            recovering = self.health.reachable is False
            try:
                version = self.db.probe()
            except TeamError as err:
                self.health.failed(err)
                raise
            self.health.succeeded(schema_version=version)
        if recovering:
            self._on_recovered()
        return version

    def keep(self, items: Sequence[OutboxItem]) -> None:
        """Put results the database did not take into the outbox."""
        self.outbox.add(items)
        self.outbox_dirty = True

    def send(self, items: Sequence[OutboxItem]) -> Counter[str] | None:
        """Publish ``items`` (``ON CONFLICT DO NOTHING``), one statement per kind
        present; the rows the database newly took per kind (``enrichment``,
        ``embedding``), or None if it did not take them all (nothing is kept:
        see :meth:`keep`)."""
        inserted: Counter[str] = Counter()
        for kind, (statement, row) in _PUBLISH.items():
            rows = sorted(row(i) for i in items if i.kind == kind)
            if rows:
                ok, n = self.call(statement, rows, self.producer)
                if not ok:
                    return None
                inserted[kind] += n
        return inserted

    def drain(self) -> Counter[str]:
        """Publish the outbox, oldest first, until it is empty or a publish
        fails; an item leaves the outbox only once the database has it.
        Returns the rows the database newly took, per kind."""
        published: Counter[str] = Counter()
        while True:
            items = self.outbox.oldest(self.settings.batch)
            if not items:
                self.outbox_dirty = False
                return published
            sent = self.send(items)
            if sent is None:
                return published
            self.outbox.remove([i.id for i in items])
            published += sent
            log.info("team_outbox_drained", sent=len(items), published=sum(sent.values()))
