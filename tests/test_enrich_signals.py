"""``llmc-rag enrich`` stopped by a real signal in a real process: SIGTERM ends it like Ctrl-C
(work kept, the closing advice line, exit 143), and a background job's inherited SIGINT-ignore is kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from llmc_rag_service.cli import main
from llmc_rag_service.service.status import status_report
from llmc_rag_service.store.db import Store
from llmc_rag_service.store.jobs import JobQueue
from llmc_rag_service.testing.emulator import OllamaEmulator
from tests.helpers import make_config, wait_for, write_tree

ENRICH = [sys.executable, "-m", "llmc_rag_service", "enrich"]
# A non-interactive shell starts `cmd &` with SIGINT and SIGQUIT ignored (POSIX, "Asynchronous Lists"),
# which is how a script runs `llmc-rag enrich ... &`; the job's pid goes to stdout.
BACKGROUND = '"$@" & echo $!; wait $!'
ADVICE = "the pending work is kept: run llmc-rag enrich again to go on\n"


@pytest.fixture
def emu():
    with OllamaEmulator(latency_s=0.3) as emulator:
        yield emulator


@pytest.fixture
def config(tmp_path, emu):
    repo = tmp_path / "repo"
    write_tree(repo, {f"m{i}.py": f"def f{i}(x):\n    return x * {i}\n" for i in range(30)})
    return make_config(tmp_path, emu.url, [repo], logging={"level": "error"})


def _started(emu: OllamaEmulator, proc: subprocess.Popen[str]) -> None:
    """Wait (bounded) until the run sent its first chat request, i.e. it is enriching."""
    wait_for(lambda: proc.poll() is not None or any(r.path == "/api/chat" for r in emu.requests), 30,
             "enrich's first request")
    assert proc.poll() is None, proc.communicate()


def _background(config) -> tuple[subprocess.Popen[str], int]:
    """`llmc-rag enrich -c CONFIG &` run by sh; returns the shell and the job's pid."""
    proc = subprocess.Popen(["sh", "-c", BACKGROUND, "sh", *ENRICH, "-c", str(config.source)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _kept(config) -> dict[str, int]:
    """The totals after the run; no job is left running."""
    totals = status_report(config)["totals"]
    assert totals["enriched"] + totals["pending"] + totals["failed"] == totals["spans"] == 30
    store = Store(config.db_path)
    try:
        assert JobQueue(store, config.ollama.model).counts()["running"] == 0
    finally:
        store.close()
    return totals


def _signalled(emu, proc, pid: int, *signals: str) -> str:
    """Once ``proc`` is enriching, send ``signals`` (``kill`` options) to ``pid`` in order;
    returns its stderr once it ended (killed after 30 s)."""
    try:
        _started(emu, proc)
        for sig in signals:
            subprocess.run(["kill", sig, str(pid)], check=True)
        return proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.timeout(60)
def test_sigterm_stops_a_background_enrich_like_ctrl_c(config, emu):
    """SIGTERM to `llmc-rag enrich &`: the closing line says the work is kept, exit 143, no traceback,
    the enrichments done so far are stored and the rest is pending."""
    proc, pid = _background(config)
    err = _signalled(emu, proc, pid, "-TERM")
    assert proc.returncode == 143
    assert err.endswith(f"llmc-rag: interrupted by SIGTERM; {ADVICE}") and "Traceback" not in err
    assert err.count("\n") == 1, err
    totals = _kept(config)
    assert totals["pending"] > 0


@pytest.mark.timeout(60)
def test_a_background_enrich_keeps_ignoring_sigint_as_the_shell_set_it(config, emu):
    """SIGINT then SIGTERM to `llmc-rag enrich &`: the SIGINT the shell set to ignored stays ignored
    (Python handles signals in number order, so an honoured SIGINT would end it first, with 130)."""
    proc, pid = _background(config)
    err = _signalled(emu, proc, pid, "-INT", "-TERM")
    assert proc.returncode == 143 and err.endswith(f"llmc-rag: interrupted by SIGTERM; {ADVICE}"), err


@pytest.mark.timeout(60)
def test_sigint_in_the_foreground_still_exits_130_with_the_same_advice(config, emu):
    """Ctrl-C (SIGINT, not ignored) to a foreground enrich: exit 130 and the same closing advice."""
    proc = subprocess.Popen([*ENRICH, "-c", str(config.source)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _started(emu, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and err == f"llmc-rag: interrupted; {ADVICE}"
    assert _kept(config)["pending"] > 0


def _in_close() -> bool:
    """True while the main thread is inside ``Pipeline.close`` (enrich waiting for in-flight answers)."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "close" and frame.f_code.co_filename.endswith("pipeline.py"):
            return True
        frame = frame.f_back
    return False


@pytest.mark.timeout(60)
def test_a_second_sigterm_while_enrich_waits_for_answers_leaves_no_job_running(tmp_path):
    """SIGTERM, then another while the stop waits for the requests in flight: exit 143 at once,
    and no job is left ``running`` (a serve on the same store would never retry those spans)."""
    repo = tmp_path / "repo"
    write_tree(repo, {f"m{i}.py": f"def f{i}(x):\n    return x * {i}\n" for i in range(4)})
    with OllamaEmulator(latency_s=3.0) as slow:
        config = make_config(tmp_path, slow.url, [repo], logging={"level": "error"})

        def signal_twice() -> None:
            wait_for(lambda: len([r for r in slow.requests if r.path == "/api/chat"]) >= 2, 20, "two requests")
            os.kill(os.getpid(), signal.SIGTERM)
            wait_for(_in_close, 20, "the stop waiting for the answers")
            os.kill(os.getpid(), signal.SIGTERM)

        sender = threading.Thread(target=signal_twice)
        sender.start()
        code = main(["enrich", "-c", str(config.source)])
        sender.join(30)
    assert code == 143
    store = Store(config.db_path)
    try:
        assert JobQueue(store, config.ollama.model).counts()["running"] == 0
    finally:
        store.close()
