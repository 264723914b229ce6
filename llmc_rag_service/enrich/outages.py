"""Which worker pools see each Ollama host unreachable now, so one outage is one error line.

The enrichment and the embedding lanes keep their own host states (a missing
embed model must not stop enrichment, and STATUS says each lane's state), but
they talk to the same servers: when a host stops answering, both notice. The
first pool to mark a host unreachable logs ``ollama_unreachable`` at error
level; a pool that finds it already marked by another logs the same event at
info level with ``already_reported=True`` (it waits on the same host). Once
every pool that marked it has seen it answer again (or was stopped), the next
outage is reported at error level again. A pool stopped or retired (a reload
replaced it) whose request still in flight fails later marks nothing: it would
stay marked for ever, and every later outage would be reported at info only.
An outage whose last marking pool was retired before any pool saw the host
answer stays reported: the pools a reload starts meanwhile find the same outage.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any


class HostOutages:
    """The set of pools (any hashable owner, e.g. a ``WorkerPool``) that see each
    host URL unreachable. Thread-safe: worker threads of several pools call it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down: dict[str, set[object]] = {}
        self._forgotten: weakref.WeakSet[Any] = weakref.WeakSet()
        self._answered: set[str] = set()  # down hosts that some pool saw answer meanwhile
        self._unrecovered: set[str] = set()  # reported, its pools retired, not yet seen answering

    def down(self, url: str, owner: object) -> bool:
        """Mark ``url`` unreachable for ``owner``. True if no other owner had it
        marked (nor a retired one, the host unseen since): a new outage, to be
        reported at error level. False, and nothing marked, for an owner
        already :meth:`forget`-ten (a stopped pool's late failure: the pool that
        replaced it reports the outage)."""
        with self._lock:
            if owner in self._forgotten:
                return False
            owners = self._down.setdefault(url, set())
            first = not (owners - {owner}) and url not in self._unrecovered
            owners.add(owner)
            return first

    def up(self, url: str, owner: object) -> None:
        """``owner`` sees ``url`` answer again (or in another state than unreachable)."""
        with self._lock:
            self._unrecovered.discard(url)
            self._up(url, owner)
            if url in self._down:
                self._answered.add(url)

    def forget(self, owner: object) -> None:
        """``owner`` stopped: it marks no host any more, now or later (weakly held)."""
        with self._lock:
            self._forgotten.add(owner)
            for url, owners in list(self._down.items()):
                if owners == {owner} and url not in self._answered:
                    self._unrecovered.add(url)
                self._up(url, owner)

    def _up(self, url: str, owner: object) -> None:
        owners = self._down.get(url)
        if owners is not None:
            owners.discard(owner)
            if not owners:
                del self._down[url]
                self._answered.discard(url)
