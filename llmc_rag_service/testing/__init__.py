"""Test doubles shipped with the product, importable by tests, benchmarks, demos and users' own tests.

:class:`OllamaEmulator` is a protocol-faithful Ollama server on 127.0.0.1 (a real HTTP server:
load delays, parallel slots, keep_alive expiry, 503, faults). Use it as a context manager::

    from llmc_rag_service.testing import OllamaEmulator
    with OllamaEmulator(["demo-model"], latency_s=0.1) as emu:
        url = emu.url   # point ollama.url at it
"""

from llmc_rag_service.testing.emulator import OllamaEmulator

__all__ = ["OllamaEmulator"]
