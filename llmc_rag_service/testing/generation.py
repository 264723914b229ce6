"""``POST /api/chat`` and ``POST /api/generate`` of the emulator (``server/routes.go``).

* Nothing is sent (no status line, no header) before the first token (stream)
  or the whole answer (``stream: false``): FIFO slot wait, model load and prompt
  evaluation all happen first (O3, O4).
* Errors before the first chunk are a JSON error with a status; after it, a
  final ``{"error": ...}`` line in the 200 stream without ``done: true`` (O15).
* ``num_ctx`` beyond the model's trained ``context_length`` is cut to it and a
  longer prompt is silently truncated: only ``prompt_eval_count`` shows it (O10).
* An empty prompt loads the model (``done_reason: "load"``); with
  ``keep_alive: 0`` it unloads it (``"unload"``).
* An embedding model cannot chat: 400 ``"NAME" does not support chat``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmc_rag_service.testing import faults as fl
from llmc_rag_service.testing.answers import hint
from llmc_rag_service.testing.scheduling import Runner, load_options
from llmc_rag_service.testing.wire import HttpError, estimate_tokens, keep_alive_of, now_iso

if TYPE_CHECKING:
    from llmc_rag_service.testing.emulator import OllamaEmulator
    from llmc_rag_service.testing.server import Handler

#: Options fixed when a model loads; others than the runner's force a reload (O7).
LOAD_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")


@dataclass
class GenRequest:
    """A parsed ``/api/chat`` or ``/api/generate`` request (``t0`` monotonic seconds)."""

    kind: str
    model: str
    body: dict[str, Any]
    stream: bool
    keep_alive_s: float | None
    options: dict[str, Any]
    load_opts: dict[str, Any]
    t0: float
    key: str = ""
    thinks: bool = False
    load_s: float = 0.0  # seconds from arrival until the model was ready (queue + load)

    @property
    def empty(self) -> bool:
        """No messages (chat) / empty prompt (generate): a load or unload request."""
        return not (self.body.get("messages") if self.kind == "chat" else self.body.get("prompt"))

    def prompt_text(self) -> str:
        if self.kind == "chat":
            return "".join(str(m.get("content") or "") for m in self.body.get("messages") or [])
        return str(self.body.get("system") or "") + str(self.body.get("prompt") or "")


class Generation:
    """Answers chat and generate requests for ``emu`` (its settings, scheduler and faults)."""

    def __init__(self, emu: OllamaEmulator):
        self.emu = emu
        self.sched = emu.scheduler

    def handle(self, ex: Handler, kind: str, body: Any) -> None:
        """Answer one request on ``ex`` (raises HttpError for Ollama error answers)."""
        req = self._parse(kind, body)
        fault = self.emu.faults.pop("chat")
        if fl.apply_early(fault, req.model, lambda s: self.sched.sleep(ex, s), ex.drop):
            return
        self._resolve(req)
        if req.empty and req.keep_alive_s == 0:
            self.sched.unload_now(req.key)
            return ex.send_json(200, self._reply(req, "", None, "unload", done=True))
        runner = self.sched.acquire(ex, req)
        if runner is None:
            return ex.drop()
        req.load_s = time.monotonic() - req.t0
        try:
            if req.empty:
                return ex.send_json(200, self._reply(req, "", None, "load", done=True))
            self._generate(ex, req, runner, fault)
        finally:
            self.sched.release(runner)

    def _parse(self, kind: str, body: Any) -> GenRequest:
        """Validate as Ollama does before scheduling; raises HttpError 400."""
        if not isinstance(body, dict):
            raise HttpError(400, "missing request body")
        keep_alive_s = keep_alive_of(body)
        if not body.get("model"):
            raise HttpError(400, "model is required")
        options = body.get("options") or {}
        return GenRequest(kind, body["model"], body, body.get("stream") is not False, keep_alive_s, options,
                          load_options(options, LOAD_OPTIONS, self.emu.num_ctx_default), time.monotonic())

    def _resolve(self, req: GenRequest) -> None:
        """Find the installed model (404), refuse an embedding model (400) and
        decide whether it thinks (400 if asked and it cannot)."""
        req.key = self.sched.find(req.model)
        if not req.key:
            raise HttpError(404, f"model '{req.model}' not found")
        if req.key in self.emu.embed_models:
            raise HttpError(400, f'"{req.model}" does not support {"chat" if req.kind == "chat" else "generate"}')
        capable = "think" in req.key.lower() or req.key in self.emu.thinking_models
        think = req.body.get("think")
        if think not in (None, False) and not capable:
            raise HttpError(400, f'"{req.model}" does not support thinking')
        req.thinks = capable and think is not False

    def _compose(self, req: GenRequest, fault: fl.Fault | None) -> tuple[str, str | None, str]:
        """(content, thinking or None, done_reason) after faults and ``num_predict``."""
        fmt = req.body.get("format")
        if fmt not in (None, "", "json") and not isinstance(fmt, dict):
            raise HttpError(500, f"invalid format: {json.dumps(json.dumps(fmt))}; "
                                 'expected "json" or a valid JSON Schema object')
        full = self.emu.answer(req.body)
        kind = fault.kind if fault else None
        content = {"empty": "", "empty_object": "{}\n\n  ",
                   "invalid_json": "Sure! Here is the JSON you asked for: {" + full[:40],
                   "length": full[: max(1, len(full) // 2)]}.get(kind or "", full)
        reason = "length" if kind == "length" else "stop"
        limit = req.options.get("num_predict")
        if isinstance(limit, (int, float)) and limit >= 0 and estimate_tokens(content) > limit:
            content, reason = content[: int(limit) * 4], "length"
        thinking = f"The user asks about {hint(req.body)!r}; answer briefly." if req.thinks else None
        return content, thinking, reason

    def _generate(self, ex: Handler, req: GenRequest, runner: Runner, fault: fl.Fault | None) -> None:
        if not self.sched.take_slot(ex, runner):
            return ex.drop()
        try:
            if not self.sched.hold(ex):  # paused: the slot stays taken, nothing is sent
                return ex.drop()
            content, thinking, reason = self._compose(req, fault)
            midstream = fault is not None and fault.kind == "midstream_error"
            extra = fault.seconds() if fault and fault.kind == "slow" else 0.0
            latency = self.emu.latency_s
            begun = time.monotonic()
            if not self.sched.sleep_until(ex, begun + extra + latency / 2):  # prompt evaluation: nothing sent
                return ex.drop()
            stall = fault.seconds() if fault and fault.kind == "stall" else 0.0
            if not req.stream:
                if midstream:
                    raise HttpError(500, fault.params.get("message", fl.MIDSTREAM_MSG))  # type: ignore[union-attr]
                if not self.sched.sleep_until(ex, begun + extra + stall + latency):
                    return ex.drop()
                return ex.send_json(200, self._final(req, content, thinking, reason, runner))
            self._stream(ex, req, (content, thinking, reason), runner, fault if midstream else None,
                         begun + extra, stall)
        finally:
            self.sched.free_slot(runner)

    def _stream(self, ex: Handler, req: GenRequest, answer: tuple[Any, ...], runner: Runner,
                midstream: fl.Fault | None, begun: float, stall_s: float = 0.0) -> None:
        """Stream the answer in ~6 chunks over the second half of ``latency_s``
        counted from ``begun`` (monotonic); ``stall_s``: a pause after the first
        chunk (the ``stall`` fault)."""
        content, thinking, reason = answer
        step = max(1, math.ceil(len(content) / 6))
        pieces = [("thinking", thinking)] if thinking else []
        pieces += [("content", content[i:i + step]) for i in range(0, len(content), step)]
        gap = self.emu.latency_s / 2 / max(1, len(pieces))
        first = begun + self.emu.latency_s / 2
        ex.start_stream()
        for n, (field_name, piece) in enumerate(pieces):
            if n and not self.sched.sleep_until(ex, first + n * gap + stall_s):
                return ex.drop()
            ex.send_line(self._reply(req, "" if field_name == "thinking" else piece,
                                     piece if field_name == "thinking" else None, None, done=False))
            if midstream:
                ex.send_line({"error": midstream.params.get("message", fl.MIDSTREAM_MSG)})
                return ex.end_stream()
        if not self.sched.sleep_until(ex, first + len(pieces) * gap + (stall_s if len(pieces) > 1 else 0.0)):
            return ex.drop()
        ex.send_line(self._final(req, "", None, reason, runner, counted=answer))
        ex.end_stream()

    def _reply(self, req: GenRequest, content: str, thinking: str | None, reason: str | None,
               done: bool) -> dict[str, Any]:
        """One Ollama answer object (chat: ``message``; generate: ``response``)."""
        out: dict[str, Any] = {"model": req.model, "created_at": now_iso()}
        if req.kind == "chat":
            out["message"] = {"role": "assistant", "content": content}
            if thinking is not None:
                out["message"]["thinking"] = thinking
        else:
            out["response"] = content
            if thinking is not None:
                out["thinking"] = thinking
        out["done"] = done
        if reason is not None:
            out["done_reason"] = reason
        return out

    def _final(self, req: GenRequest, content: str, thinking: str | None, reason: str,
               runner: Runner, counted: tuple[Any, ...] | None = None) -> dict[str, Any]:
        """The done object with token counts and nanosecond durations."""
        counted_content, counted_thinking = (counted or (content, thinking))[:2]
        out = self._reply(req, content, thinking, reason, done=True)
        half_ns = int(self.emu.latency_s / 2 * 1e9)
        out.update(
            total_duration=int((time.monotonic() - req.t0) * 1e9),
            load_duration=int(req.load_s * 1e9),
            prompt_eval_count=min(estimate_tokens(req.prompt_text()),
                                  self.sched.context_of(runner, self.emu.context_length)),
            prompt_eval_duration=half_ns,
            eval_count=estimate_tokens(counted_content) + estimate_tokens(counted_thinking or ""),
            eval_duration=half_ns)
        return out
