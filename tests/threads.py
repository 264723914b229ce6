"""The suite's rule that no thread outlives its test (used by ``tests/conftest.py``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping


def leftover_threads(before: Collection[threading.Thread], join_s: float,
                     allowed: Mapping[str, str] = {}) -> list[threading.Thread]:
    """The threads alive now that were not in ``before`` and are still alive
    after a join bounded by ``join_s`` seconds in all; threads whose name starts
    with a key of ``allowed`` (a prefix -> why it may outlive a test) are not counted."""
    new = [t for t in threading.enumerate() if t not in before
           and not any(t.name.startswith(prefix) for prefix in allowed)]
    deadline = time.monotonic() + join_s
    for thread in new:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in new if t.is_alive()]
