"""Ollama's wire formats, as the emulator reads and writes them.

Facts from Ollama's source: ``api/types.go`` (``Duration.UnmarshalJSON``:
keep_alive as seconds or a Go duration, negative = forever), Go's
``time.ParseDuration`` messages, ``encoding/json`` (no spaces), model names
with an implied ``:latest`` tag, RFC 3339 times with microseconds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

#: OLLAMA_KEEP_ALIVE's default, 5m, in seconds.
DEFAULT_KEEP_ALIVE_S = 300.0
#: Go's math.MaxInt64 duration in nanoseconds: ``expires_at`` lands in year ~2318.
FOREVER_NS = 2**63 - 1
#: Bytes of a 7B q4_K_M model, for /api/tags and /api/ps.
MODEL_SIZE = 4_683_087_332
#: Go's encoding/json writes no spaces.
GO_JSON = (",", ":")

_GO_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
               "m": 60.0, "h": 3600.0}
_GO_TYPE_NAMES = {list: "[]interface {}", dict: "map[string]interface {}", bool: "bool"}


class HttpError(Exception):
    """An Ollama error answer: ``status`` with body ``{"error": message}`` and extra ``headers``."""

    def __init__(self, status: int, message: str, headers: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class RecordedRequest:
    """One HTTP request the emulator received.

    ``json`` is the parsed body (None for no or non-JSON body); ``t_start`` and
    ``t_end`` are ``time.monotonic()`` seconds (``t_end`` None while open);
    ``status`` the HTTP status sent (None if the connection was dropped);
    ``done_sent`` True once the final ``done: true`` object was written whole
    (for ``/api/embed``: once the embeddings were written whole).
    """

    method: str
    path: str
    json: Any
    t_start: float
    t_end: float | None = None
    status: int | None = None
    done_sent: bool = False


def estimate_tokens(text: str) -> int:
    """Tokens the emulator counts for ``text``: ``ceil(len(text) / 4)``; 0 for ""."""
    return math.ceil(len(text) / 4)


def parse_go_duration(text: str) -> float:
    """Seconds of a Go duration string ("5m", "1h30m", "300ms", "-1m", "0").

    Raises ValueError with Go's ``time.ParseDuration`` message, e.g.
    ``time: missing unit in duration "300"``.
    """
    rest = text.lstrip("+-")
    sign = -1.0 if text.startswith("-") else 1.0
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f'time: invalid duration "{text}"')
    total = 0.0
    while rest:
        number = re.match(r"\d*(\.\d*)?", rest).group(0)  # type: ignore[union-attr]  # always matches
        if number in ("", "."):
            raise ValueError(f'time: invalid duration "{text}"')
        rest = rest[len(number):]
        unit = re.match(r"[^\d.]*", rest).group(0)  # type: ignore[union-attr]  # always matches
        if not unit:
            raise ValueError(f'time: missing unit in duration "{text}"')
        if unit not in _GO_UNITS_S:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{text}"')
        total += float(number) * _GO_UNITS_S[unit]
        rest = rest[len(unit):]
    return sign * total


def parse_keep_alive(value: Any) -> float:
    """Seconds to keep a model loaded, as Ollama's ``api.Duration`` reads ``keep_alive``.

    A JSON number is seconds, a string a Go duration; negative means forever
    (``math.inf``). Raises ValueError with Ollama's 400 message for a unit-less
    string (``time: missing unit in duration "300"``) or another JSON type
    (``Unsupported type: 'bool'``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"Unsupported type: '{_GO_TYPE_NAMES.get(type(value), type(value))}'")
    seconds = parse_go_duration(value) if isinstance(value, str) else float(value)
    return math.inf if seconds < 0 else seconds


def keep_alive_of(body: dict[str, Any]) -> float | None:
    """The request's ``keep_alive`` in seconds, None when absent (JSON null is "not sent" in Go).

    Raises HttpError 400 with Ollama's message for a value it cannot read (cases O6).
    """
    if body.get("keep_alive") is None:
        return None
    try:
        return parse_keep_alive(body["keep_alive"])
    except ValueError as exc:
        raise HttpError(400, str(exc)) from exc


def canonical(name: str) -> str:
    """Ollama's model name with the implied ``:latest`` tag."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def iso(at: datetime) -> str:
    """RFC 3339 with microseconds and ``Z``, as Go writes a UTC ``time.Time``."""
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def now_iso() -> str:
    """The current UTC time as :func:`iso` writes it."""
    return iso(datetime.now(timezone.utc))


def expiry_iso(remaining_s: float) -> str:
    """RFC 3339 time of an expiry ``remaining_s`` seconds from now (negative: past);
    ``inf`` (forever) is now + MaxInt64 ns."""
    now = datetime.now(timezone.utc)
    if math.isinf(remaining_s):
        return iso(now + timedelta(microseconds=FOREVER_NS // 1000))
    return iso(now + timedelta(seconds=remaining_s))
