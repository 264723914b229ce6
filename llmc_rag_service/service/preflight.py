"""Ask each Ollama host, once, whether it answers and has the model, before any waiting.

Two cheap reads that DESIGN.md allows for probes and ``doctor``:
``GET /api/version`` and ``GET /api/tags`` (Ollama API doc, "Version" and
"List Local Models"). Nothing here loads a model or looks at ``/api/ps``.

``enrich`` uses :func:`preflight` so a missing model is said at once with what
the server has (``model llama3 not found on URL; this server has: qwen2.5:7b;
run: ollama pull llama3``) instead of after ``--wait-s``: that line on a
terminal, else (a pipe, a file, a journal) an error log record like every
other line there: ``preflight_model_missing`` (``url``, ``model``, ``models``:
what the server has, ``wait_s``, ``hint``) or ``preflight_unreachable``
(``url``, ``error``, ``wait_s``). ``doctor`` uses :func:`probe_host` for its
Ollama checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import structlog

from llmc_rag_service.enrich import ollama as ol

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class HostProbe:
    """One host's answers: ``version`` (None when unreachable), ``models``
    (the names ``/api/tags`` lists; None when it could not be read) and
    ``error`` (the reason, when either failed)."""

    url: str
    version: str | None
    models: list[str] | None
    error: str | None = None


def probe_host(client: ol.OllamaClient) -> HostProbe:
    """``/api/version`` then ``/api/tags`` on ``client``'s host; never raises
    an OllamaError (it becomes ``error``)."""
    try:
        version = client.version()
    except ol.OllamaError as exc:
        return HostProbe(client.url, None, None, str(exc) or type(exc).__name__)
    try:
        return HostProbe(client.url, version, client.models())
    except ol.OllamaError as exc:
        return HostProbe(client.url, version, None, str(exc) or type(exc).__name__)


def has_model(models: Iterable[str], name: str) -> bool:
    """Whether ``name`` is among ``models`` (Ollama adds ``:latest`` to an untagged name)."""
    return bool({name, f"{name}:latest"} & set(models))


def missing_model_message(name: str, probe: HostProbe) -> str:
    """``model NAME not found on URL; this server has: a, b; run: ollama pull NAME``."""
    have = ", ".join(probe.models or []) or "no models at all"
    return f"model {name} not found on {probe.url}; this server has: {have}; run: ollama pull {name}"


def preflight(clients: Iterable[ol.OllamaClient], model: str, wait_s: float,
              say: Callable[[str], None] | None = None) -> int:
    """Probe every host once and report each host that cannot work now
    (unreachable, or lacking ``model``), naming how long (seconds) the caller
    will wait: one line to ``say`` (a terminal), or with ``say`` None an error
    log event (see the module docstring). Returns how many hosts can work now."""
    ready = 0
    waiting = f"; waiting up to {wait_s:.0f} s (--wait-s)"
    for client in clients:
        probe = probe_host(client)
        if probe.version is None:
            if say is None:
                log.error("preflight_unreachable", url=probe.url, error=probe.error, wait_s=round(wait_s, 1))
            else:
                say(f"ollama unreachable at {probe.url}: {probe.error}{waiting}")
        elif probe.models is not None and not has_model(probe.models, model):
            if say is None:
                log.error("preflight_model_missing", url=probe.url, model=model, models=probe.models,
                          wait_s=round(wait_s, 1), hint=f"ollama pull {model}")
            else:
                say(missing_model_message(model, probe) + waiting)
        else:
            ready += 1
    return ready
