"""The injectable clock: the real one, and the manual one the event-driven tests drive."""

from __future__ import annotations

import threading
import time

import pytest

from llmc_rag_service.clock import SYSTEM
from llmc_rag_service.testing.clock import ManualClock


def test_the_system_clock_is_monotonic_wall_and_event_time():
    """SYSTEM reads time.monotonic/time.time and waits like Event.wait (True once set, False on timeout)."""
    before_mono, before_wall = time.monotonic(), time.time()
    assert before_mono <= SYSTEM() <= time.monotonic()
    assert before_wall <= SYSTEM.time() <= time.time()
    event = threading.Event()
    assert SYSTEM.wait(event, 0.0) is False
    event.set()
    assert SYSTEM.wait(event, 10.0) is True


def test_manual_time_moves_only_when_advanced():
    """Monotonic and wall time stand still until advance(), then move together; going back is refused."""
    clock = ManualClock(start=50.0, wall_start=1_000.0)
    assert (clock(), clock.time()) == (50.0, 1_000.0)
    clock.advance(2.5)
    assert (clock(), clock.time()) == (52.5, 1_002.5)
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1.0)


def start_waiter(clock: ManualClock, event: threading.Event, timeout_s: float) -> tuple[threading.Thread, list]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(clock.wait(event, timeout_s)), name="waiter")
    thread.start()
    return thread, result


def test_a_wait_ends_when_the_clock_reaches_its_deadline_not_before():
    """A 5 s wait is asleep through 4.9 s of advances and returns False at 5 s."""
    clock, event = ManualClock(), threading.Event()
    thread, result = start_waiter(clock, event, 5.0)
    clock.wait_asleep(thread)
    assert clock.next_deadline() == clock() + 5.0
    clock.advance(4.9)
    clock.wait_asleep(thread)  # still waiting: its deadline is ahead
    assert result == []
    clock.advance(0.1)
    thread.join(5)
    assert result == [False] and not clock.asleep(thread) and clock.next_deadline() is None


def test_advance_to_a_deadline_ends_exactly_that_wait():
    """deadline_of names when a thread's wait ends; advance_to it ends that wait and not a later one."""
    clock = ManualClock()
    early, late = threading.Event(), threading.Event()
    first, first_result = start_waiter(clock, early, 0.4)
    second, second_result = start_waiter(clock, late, 0.5)
    clock.wait_asleep(first)
    clock.wait_asleep(second)
    assert clock.deadline_of(first) == clock() + 0.4 and clock.next_deadline() == clock.deadline_of(first)
    clock.advance_to(clock.deadline_of(first))
    first.join(5)
    clock.wait_asleep(second)
    assert first_result == [False] and second_result == []
    clock.advance_to(clock() - 1.0)  # never back
    assert clock.asleep(second) and clock.deadline_of(first) is None
    late.set()
    second.join(5)
    assert second_result == [True]


def test_a_wait_ends_at_once_when_its_event_is_set():
    """A wait of an hour returns True as soon as its event is set, with the clock standing still."""
    clock, event = ManualClock(), threading.Event()
    thread, result = start_waiter(clock, event, 3600.0)
    clock.wait_asleep(thread)
    event.set()
    thread.join(5)
    assert result == [True]


def test_wait_asleep_names_a_thread_that_never_sleeps():
    """wait_asleep gives up after its real-time bound, naming the thread."""
    clock, release = ManualClock(), threading.Event()
    busy = threading.Thread(target=release.wait, name="busy-thread")
    busy.start()
    try:
        with pytest.raises(TimeoutError, match="busy-thread"):
            clock.wait_asleep(busy, timeout_s=0.05)
    finally:
        release.set()
        busy.join(5)
