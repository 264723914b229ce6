"""The suite's own rule: a thread that outlives its test is a failure (tests/conftest.py)."""

from __future__ import annotations

import threading

from tests.threads import leftover_threads


def test_a_thread_still_running_after_the_join_is_reported():
    """A new thread that does not end within the bounded join is named; one that ends in time is not."""
    before = set(threading.enumerate())
    release = threading.Event()
    stuck = threading.Thread(target=release.wait, args=(30,), name="stuck", daemon=True)
    quick = threading.Thread(target=release.wait, args=(0.01,), name="quick")
    stuck.start()
    quick.start()
    try:
        assert leftover_threads(before, 0.2) == [stuck]
        assert not quick.is_alive()
    finally:
        release.set()
        stuck.join(5)


def test_allowed_and_older_threads_are_not_reported():
    """Threads alive before the test, and process-wide ones allowed by name prefix, are not counted."""
    release = threading.Event()
    older = threading.Thread(target=release.wait, name="older", daemon=True)
    older.start()
    before = set(threading.enumerate())
    allowed = threading.Thread(target=release.wait, name="process-wide-1", daemon=True)
    allowed.start()
    try:
        assert leftover_threads(before, 0.05, {"process-wide-": "documented reason"}) == []
    finally:
        release.set()
        older.join(5)
        allowed.join(5)
