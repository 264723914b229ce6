"""Secret values in text -> ``<redacted:KIND>`` markers, before the text leaves its file.

Shape: ``Redactor(allow).redact(text, path=, first_line=) -> Redaction(text, findings)``.
Only the secret value is replaced (``postgres://app:<redacted:connection-url-password>@db``),
so the code around it is still enriched and searched. A value that spans lines (a
private-key block) becomes one marker followed by the same number of newlines, so
line numbers never move. A :class:`Finding` names the kind, the line and the
detector, never the value; each one is logged as ``secret_redacted``.

What is a secret is decided in ``index/secret_scan.py`` (betterleaks plus two own
rules; measured in bench/secrets_redaction.py, results in bench/RESULTS-secrets.md). Here:
every other occurrence, in the same text, of a found value that looks random is
redacted too; ``secrets.allow`` (the config contract) lists values that are not
secrets: a sha256 hex fingerprint of the value (16 to 64 leading hex digits, as
``printf %s VALUE | sha256sum`` prints) or a regex the whole value matches.
Verdicts are cached by the text's sha256 (an LRU of ``cache_size`` entries).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from llmc_rag_service.config import is_fingerprint
from llmc_rag_service.models import Enrichment
from llmc_rag_service.index.secret_scan import Hit, RedactionError, find_secrets, is_code_path, looks_random

__all__ = ["AllowList", "Finding", "Redaction", "RedactionError", "Redactor", "fingerprint"]

log = structlog.get_logger(__name__)

MARKER = "<redacted:{kind}>"

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


def _merge(hits: Iterable[Hit]) -> list[Hit]:
    """Overlapping hits become one (the lowest rank names the kind), in text order."""
    merged: list[Hit] = []
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

    def redact(self, text: str, *, path: str = "", first_line: int = 1, code: bool | None = None,
               **context: str) -> Redaction:
        """``text`` (a span's or a file's, starting at line ``first_line`` of ``path``)
        with every secret value replaced by ``<redacted:KIND>``; logs one
        ``secret_redacted`` (path, line, kind, detector, plus ``context`` such as
        ``repo=``, ``source=``) per value. ``code`` says the text is source code
        (names are not values there); by default the path's extension decides.
        Raises :class:`RedactionError` when the scanner fails (the caller must
        then not use the text)."""
        new_text, found = self._verdict(text, is_code_path(path) if code is None else code)
        findings = tuple(Finding(kind, first_line + row, detector) for kind, row, detector in found)
        for item in findings:
            log.info("secret_redacted", **context, path=path, line=item.line, kind=item.kind,
                     detector=item.detector)
        return Redaction(new_text, findings)

    def redact_answer(self, answer: Mapping[str, Any], *, path: str = "", first_line: int = 1,
                      **context: str) -> tuple[dict[str, Any], tuple[Finding, ...]]:
        """A model answer (JSON object: strings, lists, nested objects) with secret
        values redacted in every string, scanned as prose (``code=False``: a bare
        word after ``password:`` counts); findings' lines count within each string
        from ``first_line``; ``context`` as in :meth:`redact`. The answer itself is not changed."""
        findings: list[Finding] = []

        def walk(value: Any) -> Any:
            if isinstance(value, str):
                done = self.redact(value, path=path, first_line=first_line, code=False, **context)
                findings.extend(done.findings)
                return done.text
            if isinstance(value, Mapping):
                return {k: walk(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [walk(v) for v in value]
            return value

        return walk(answer), tuple(findings)

    def redact_enrichment(self, enrichment: Enrichment, path: str, first_line: int) -> tuple[Enrichment, int]:
        """A validated model answer for the span at ``path``:``first_line`` with
        secret values redacted in every field (see :meth:`redact_answer`; logged
        with ``source="answer"``), and how many values were replaced. This is the
        callable ``service/pipeline.py`` hands to the workers (``enrich/`` may not
        import ``index/``). Raises :class:`RedactionError` like :meth:`redact`."""
        answer, findings = self.redact_answer(dataclasses.asdict(enrichment), path=path, first_line=first_line,
                                              source="answer")
        return (Enrichment(**answer) if findings else enrichment), len(findings)

    def _verdict(self, text: str, code: bool) -> tuple[str, tuple[tuple[str, int, str], ...]]:
        key = f"{int(code)}{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()}"
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        verdict = self._compute(text, code)
        with self._lock:
            self._cache[key] = verdict
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return verdict

    def _compute(self, text: str, code: bool) -> tuple[str, tuple[tuple[str, int, str], ...]]:
        hits = [h for h in find_secrets(text, code) if not self.allow.allows(text[h.start:h.end])]
        hits = _merge(hits + self._repeats(text, hits))
        if not hits:
            return text, ()
        pieces, row_of, pos = [], [], 0
        for hit in hits:
            value = text[hit.start:hit.end]
            pieces += [text[pos:hit.start], MARKER.format(kind=hit.kind) + "\n" * value.count("\n")]
            row_of.append((hit.kind, text.count("\n", 0, hit.start), hit.detector))
            pos = hit.end
        pieces.append(text[pos:])
        return "".join(pieces), tuple(row_of)

    @staticmethod
    def _repeats(text: str, hits: list[Hit]) -> list[Hit]:
        """Other occurrences of the found values that look random (see
        ``secret_scan.looks_random``): a word like ``password`` found as a value stays elsewhere."""
        out = []
        for value, kind in {text[h.start:h.end]: h.kind for h in hits}.items():
            if "\n" not in value and looks_random(value):
                out += [Hit(m.start(), m.end(), kind, "same-value", 3) for m in re.finditer(re.escape(value), text)]
        return out
