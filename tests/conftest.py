"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import NotifySocket, TempPipeline, Serve, write_tree
from llmc_rag_service.testing.emulator import OllamaEmulator

# Team mode's PostgreSQL fixtures (pg_cluster, pg): one real cluster per session, started on first use.
pytest_plugins = ("tests.pg_fixture",)


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


@pytest.fixture
def pipelines():
    """Pipelines made by the test, closed after it."""
    made: list[TempPipeline] = []

    def make(*args, **kwargs) -> TempPipeline:
        made.append(TempPipeline(*args, **kwargs))
        return made[-1]

    yield make
    for p in made:
        p.close()
