"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ollama_emulator import OllamaEmulator


@pytest.fixture
def ollama() -> Iterator[OllamaEmulator]:
    """A started Ollama emulator with "test-model" installed; stopped after the test."""
    emu = OllamaEmulator()
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()
