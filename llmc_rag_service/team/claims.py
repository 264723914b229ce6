"""One team, one piece of work: this daemon's claims on enrichment keys, and the keys it defers.

A claim is a row in ``llmc_claims`` with a lease on the server's clock
(``store.team_pg.claim``); this module remembers which keys this daemon
holds (to renew them) and which it left to teammates (``deferred`` in
``status``). While the database is unreachable every key is granted: the
daemon works alone rather than waits.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import structlog

from llmc_rag_service.store import team_pg
from llmc_rag_service.team.keys import EnrichmentKey, distinct_keys
from llmc_rag_service.team.link import TeamLink

log = structlog.get_logger("llmc_rag_service.team")


class Claims:
    """Claims held and keys deferred by one daemon; thread-safe.

    Args:
        link: the guarded database. holder: this daemon's claim name.
        lease_s: seconds a claim lasts without renewal. batch: keys per statement.
    """

    def __init__(self, link: TeamLink, holder: str, lease_s: float, batch: int):
        self.link, self.holder, self.lease_s, self.batch = link, holder, lease_s, batch
        self._held: set[EnrichmentKey] = set()
        self._deferred: set[EnrichmentKey] = set()
        self._lock = threading.Lock()

    def claim(self, keys: Iterable[EnrichmentKey]) -> set[EnrichmentKey]:
        """Keys this daemon may now enrich: nobody else holds them (or their
        lease ran out) and they are not published. The rest are deferred.
        Every key when the database is unreachable."""
        return self.claim_fetching(keys, fetch=False)[0]

    def claim_fetching(self, keys: Iterable[EnrichmentKey],
                       fetch: bool = True) -> tuple[set[EnrichmentKey], list[tuple[str, str, int, Any, str]]]:
        """:meth:`claim`, and with ``fetch`` the published rows among ``keys``
        in the same statement (``store.team_pg.claim_or_fetch``): (claimed, rows)."""
        wanted = distinct_keys(keys, EnrichmentKey)
        claimed: set[EnrichmentKey] = set()
        published: list[tuple[str, str, int, Any, str]] = []
        for start in range(0, len(wanted), self.batch):
            chunk = wanted[start:start + self.batch]
            if fetch:
                ok, result = self.link.call(team_pg.claim_or_fetch, chunk, self.holder, self.lease_s)
                rows, found = result if ok else ([], [])
                published += found
            else:
                ok, rows = self.link.call(team_pg.claim, chunk, self.holder, self.lease_s)
            got = {EnrichmentKey(*r) for r in rows} if ok else set(chunk)
            claimed |= got
            if ok:
                with self._lock:
                    self._held |= got
        with self._lock:
            self._deferred -= claimed
            self._deferred |= set(wanted) - claimed
        return claimed, published

    def renew(self) -> set[EnrichmentKey]:
        """Extend every claim held by ``lease_s``; returns those still held (a
        lapsed one may have gone to a teammate: ``team_claim_lost``)."""
        with self._lock:
            held = sorted(self._held)
        if not held:
            return set()
        still: set[EnrichmentKey] = set()
        for start in range(0, len(held), self.batch):
            ok, rows = self.link.call(team_pg.renew_claims, held[start:start + self.batch], self.holder, self.lease_s)
            if not ok:
                return set(held)
            still |= {EnrichmentKey(*r) for r in rows}
        with self._lock:
            lost = set(held) - still
            self._held -= lost
            kept = set(self._held)
        if lost:
            log.warning("team_claim_lost", keys=len(lost), lease_s=self.lease_s)
        return kept

    def release(self, keys: Iterable[EnrichmentKey]) -> None:
        """Drop claims on ``keys`` here and in the database."""
        keys = distinct_keys(keys, EnrichmentKey)
        self.done(keys)
        for start in range(0, len(keys), self.batch):
            self.link.call(team_pg.release_claims, keys[start:start + self.batch], self.holder)

    def release_all(self) -> None:
        """Release every claim held (at shutdown, so teammates need not wait for the lease)."""
        with self._lock:
            held = list(self._held)
        if held and self.link.health.reachable:
            self.release(held)

    def done(self, keys: Iterable[EnrichmentKey]) -> None:
        """Forget ``keys`` as held or deferred (published: their claims are left to expire)."""
        keys = set(keys)
        with self._lock:
            self._held -= keys
            self._deferred -= keys

    def defer(self, keys: Iterable[EnrichmentKey]) -> None:
        """Count ``keys`` as waiting for a teammate."""
        with self._lock:
            self._deferred |= set(keys)

    def undefer(self, keys: Iterable[EnrichmentKey]) -> None:
        """Stop counting ``keys`` as deferred."""
        with self._lock:
            self._deferred -= {EnrichmentKey(*k) for k in keys}

    @property
    def held(self) -> int:
        with self._lock:
            return len(self._held)

    @property
    def deferred(self) -> int:
        with self._lock:
            return len(self._deferred)
