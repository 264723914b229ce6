"""The emulator's model listings: ``/api/tags``, ``/api/ps`` and ``/api/show`` (Ollama API doc).

``/api/ps`` lists a model from the start of its load. A model never idle yet
(loading, or busy since its load) expires ``keep_alive`` from now; otherwise
``expires_at`` is the one set when it last went idle, kept while a later
request runs (sched.go sets it only on release), so a busy model can show an
expiry in the past: ``ollama ps`` prints "Stopping..." for it (O2).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from llmc_rag_service.testing.wire import MODEL_SIZE, HttpError, canonical, expiry_iso, now_iso

if TYPE_CHECKING:
    from llmc_rag_service.testing.emulator import OllamaEmulator

#: Bytes of an embedding model (nomic-embed-text, F16).
EMBED_MODEL_SIZE = 274_302_450


def _details(embeds: bool) -> dict[str, Any]:
    if embeds:
        return {"parent_model": "", "format": "gguf", "family": "nomic-bert", "families": ["nomic-bert"],
                "parameter_size": "137M", "quantization_level": "F16"}
    return {"parent_model": "", "format": "gguf", "family": "qwen2", "families": ["qwen2"],
            "parameter_size": "7.6B", "quantization_level": "Q4_K_M"}


def _entry(emu: OllamaEmulator, key: str) -> dict[str, Any]:
    name, embeds = canonical(key), key in emu.embed_models
    return {"name": name, "model": name, "size": EMBED_MODEL_SIZE if embeds else MODEL_SIZE,
            "digest": hashlib.sha256(name.encode()).hexdigest(), "details": _details(embeds)}


def tags(emu: OllamaEmulator) -> dict[str, Any]:
    """``GET /api/tags``: every installed model."""
    with emu.scheduler.cond:
        keys = sorted(emu.scheduler.models)
    stamp = now_iso()
    return {"models": [{**_entry(emu, k), "modified_at": stamp} for k in keys]}


def ps(emu: OllamaEmulator) -> dict[str, Any]:
    """``GET /api/ps``: loaded and loading models (see the module docstring)."""
    models = []
    for runner in emu.scheduler.loaded():
        spec = emu.embed_models.get(runner.key)
        trained = spec.context_length if spec else emu.context_length
        now = emu.scheduler.wall()
        expires = runner.expires_at or now + runner.session_s
        entry = _entry(emu, runner.key)
        models.append({**entry, "expires_at": expiry_iso(expires - now), "size_vram": entry["size"],
                       "context_length": emu.scheduler.context_of(runner, trained)})
    return {"models": models}


def show(emu: OllamaEmulator, body: Any) -> dict[str, Any]:
    """``POST /api/show``: details and capabilities of an installed model; 404 otherwise."""
    name = str((body or {}).get("model") or (body or {}).get("name") or "")
    key = emu.scheduler.find(name)
    if not key:
        raise HttpError(404, f"model '{name}' not found")
    spec = emu.embed_models.get(key)
    if spec is not None:
        return {"modelfile": "", "parameters": "", "template": "", "details": _details(True),
                "model_info": {"general.architecture": "nomic-bert", "nomic-bert.context_length": spec.context_length,
                               "nomic-bert.embedding_length": spec.dim},
                "capabilities": ["embedding"]}
    thinks = "think" in key.lower() or key in emu.thinking_models
    return {"modelfile": "", "parameters": "", "template": "{{ .Prompt }}", "details": _details(False),
            "model_info": {"general.architecture": "qwen2", "qwen2.context_length": emu.context_length},
            "capabilities": ["completion"] + (["thinking"] if thinks else [])}
