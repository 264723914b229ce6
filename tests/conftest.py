"""Shared pytest fixtures."""

from __future__ import annotations

import compileall
import contextlib
import importlib.util
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import llmc_rag_service
from tests.helpers import NotifySocket, TempPipeline, Serve, write_tree
from tests.teamkit import Daemon
from tests.threads import leftover_threads
from llmc_rag_service.testing.emulator import OllamaEmulator

T = TypeVar("T")

# Team mode's PostgreSQL fixtures (pg_cluster, pg): one real cluster per session, started on first use;
# queuekit: a fresh store file (store) for the queue tests.
pytest_plugins = ("tests.pg_fixture", "tests.queuekit")

#: Seconds a test's leftover threads get to end after its fixtures were torn down.
THREAD_JOIN_S = 2.0
#: Process-wide threads a test may leave behind, by name prefix, and why. None so far:
#: every thread the package or a fixture starts is stopped by its owner (a
#: session-scoped fixture's threads start before the first test that uses it, so
#: they are not new to any test).
PROCESS_THREADS: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    """In the controller, before any worker starts: write the package's bytecode
    once. The suite starts dozens of ``serve`` and CLI processes, and where the
    environment sets PYTHONDONTWRITEBYTECODE (the machines this suite was timed on do) each of them,
    and each worker, would compile every module from source again (~0.13 s per
    process); reading bytecode is not what that variable turns off."""
    if not hasattr(config, "workerinput"):
        compileall.compile_dir(Path(llmc_rag_service.__file__).parent, quiet=1)
        if config.getoption("numprocesses", None):
            _write_test_bytecode(config)


def _write_test_bytecode(config: pytest.Config) -> None:
    """Before xdist's workers start: write the tests' bytecode once, so no worker
    compiles it again. With PYTHONDONTWRITEBYTECODE set, pytest reads but never
    writes the assertion-rewritten bytecode of test modules, so each of the
    workers parsed, rewrote and compiled all of them (about 2 s of CPU per
    worker in a fresh clone). Here the controller writes it with pytest's own
    rewriting functions (the same pyc pytest would write itself, hash-checked
    on read, so a stale one is never used); the helper modules get ordinary
    bytecode. If this pytest has no such functions, the workers rewrite as before."""
    tests = Path(__file__).parent
    # Helpers imported without rewriting; never tests/data: its files are cases copied into repos
    # whole (a __pycache__ there became a directory test_awkward_files_follow_the_cases copied).
    compileall.compile_dir(tests, quiet=1, rx=re.compile(r"/tests/data/"))
    try:
        from _pytest.assertion.rewrite import PYC_TAIL, _rewrite_test, _write_pyc, assertstate_key, get_cache_dir
    except ImportError:
        return
    state = config.stash.get(assertstate_key, None)
    if state is None:  # --assert=plain: nothing is rewritten
        return
    data = tests / "data"
    rewritten = {tests.parent.joinpath(*name.split(".")).with_suffix(".py") for name in pytest_plugins}
    for source in sorted(tests.rglob("*.py")):
        if not (source.name.startswith("test_") or source.name == "conftest.py" or source in rewritten):
            continue
        if data in source.parents:  # case files, copied and read as files
            continue
        pyc = get_cache_dir(source) / (source.name[:-3] + PYC_TAIL)
        header = importlib.util.MAGIC_NUMBER + b"\x03\x00\x00\x00" + importlib.util.source_hash(source.read_bytes())
        with contextlib.suppress(OSError), pyc.open("rb") as existing:
            if existing.read(len(header)) == header:
                continue  # up to date (pytest checks the same hash when it reads it)
        pyc.parent.mkdir(exist_ok=True)
        source_hash, code = _rewrite_test(source, config)
        _write_pyc(state, code, source_hash, pyc)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for ``-n auto`` (pytest-xdist hook): two per usable core, 2 to 8.

    Most of the suite's wall time is spent waiting on real things (serve
    subprocesses, sockets, inotify, PostgreSQL), not on this process's CPU:
    measured on 2 cores, 4 workers took 85 s where 2 took 130 s and 1 took 178 s.
    Each worker collects (imports, rewrites asserts) on its own, ~3 CPU s: on a
    shared 2-core box (load 1-4) 2 workers cost ~80 CPU s but ~100 s wall,
    3 and 4 workers ~86-93 CPU s and 72-82 s wall; the tests' own waits sum to
    ~190 s, so more workers overlap them better on an idle machine.
    """
    cores = len(os.sched_getaffinity(0))
    return max(2, min(8, 2 * cores))


@pytest.fixture(autouse=True)
def no_thread_outlives_its_test() -> Iterator[None]:
    """Fail the test if a thread it started is still alive after its teardown
    (bounded join of :data:`THREAD_JOIN_S` seconds in all): a leaked worker or
    observer would otherwise run into the next tests. Autouse and requested first,
    so it is torn down after every other fixture of the test."""
    before = set(threading.enumerate())
    yield
    alive = leftover_threads(before, THREAD_JOIN_S, PROCESS_THREADS)
    if alive:
        names = ", ".join(f"{t.name} ({'daemon' if t.daemon else 'non-daemon'})" for t in alive)
        pytest.fail(f"threads outlived the test by {THREAD_JOIN_S} s: {names}", pytrace=False)


@pytest.fixture
def ollama() -> Iterator[OllamaEmulator]:
    """A started Ollama emulator with "test-model" installed; stopped after the test."""
    emu = OllamaEmulator()
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def notify(tmp_path):
    """A real datagram socket standing in for systemd's NOTIFY_SOCKET."""
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


@pytest.fixture
def repo(tmp_path):
    """A temp repo with one Python file of two functions (f, g)."""
    root = tmp_path / "repo"
    write_tree(root, {"src/a.py": "def f(x):\n    return x\n\n\ndef g(y):\n    return y\n"})
    return root


@pytest.fixture
def serve_factory():
    started: list[Serve] = []

    def start(config, notify=None, env=None) -> Serve:
        s = Serve(config.source, notify, env)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(10)


def closed_after(kind: Callable[..., T]) -> Iterator[Callable[..., T]]:
    """A factory fixture's body: yields ``make(*args, **kwargs) -> kind(...)``, then closes what it made."""
    made: list[T] = []

    def make(*args: Any, **kwargs: Any) -> T:
        made.append(kind(*args, **kwargs))
        return made[-1]

    yield make
    for thing in made:
        thing.close()  # type: ignore[attr-defined]


@pytest.fixture
def pipelines():
    """Pipelines made by the test, closed after it."""
    yield from closed_after(TempPipeline)


@pytest.fixture
def daemons():
    """Makes team-mode :class:`tests.teamkit.Daemon` instances (real Pipelines), all closed after the test."""
    yield from closed_after(Daemon)
