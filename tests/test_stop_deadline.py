"""The stop deadline: a stop that outlives it logs every thread's frames at error level, then ends the process."""

from __future__ import annotations

import threading

from structlog.testing import capture_logs

from llmc_rag_service.service.overdue import StopDeadline, thread_stacks
from llmc_rag_service.testing.clock import ManualClock


def stuck_in_close(release: threading.Event) -> None:
    release.wait(30)


def test_a_stop_past_its_deadline_logs_where_each_thread_waits_then_calls_on_overdue():
    clock, release, overdue = ManualClock(), threading.Event(), threading.Event()
    stuck = threading.Thread(target=stuck_in_close, args=(release,), name="worker-stuck", daemon=True)
    stuck.start()
    deadline = StopDeadline(40.0, on_overdue=overdue.set, clock=clock)
    try:
        with capture_logs() as logs:
            deadline.start()
            clock.wait_asleep(deadline._thread)
            clock.advance(39.9)
            clock.wait_asleep(deadline._thread)  # still counting: nothing said yet
            assert not overdue.is_set() and logs == []
            clock.advance(0.2)
            assert overdue.wait(10)
        [event] = logs
        assert event["event"] == "stop_overdue" and event["log_level"] == "error" and event["deadline_s"] == 40.0
        assert any("in stuck_in_close" in frame for frame in event["threads"]["worker-stuck"])
    finally:
        release.set()
        stuck.join(10)
        deadline.cancel()


def test_a_stop_that_ends_in_time_says_nothing():
    clock, overdue = ManualClock(), threading.Event()
    deadline = StopDeadline(40.0, on_overdue=overdue.set, clock=clock)
    with capture_logs() as logs:
        deadline.start()
        clock.wait_asleep(deadline._thread)
        deadline.cancel()
        clock.advance(100.0)
    assert not deadline._thread.is_alive() and not overdue.is_set() and logs == []


def test_thread_stacks_names_every_thread_innermost_frame_last():
    stacks = thread_stacks()
    main = stacks[threading.main_thread().name]
    assert main[-1].endswith("in thread_stacks") and len(main) <= 6
