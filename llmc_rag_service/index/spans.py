"""File -> spans: decode a source file and cut it into units of enrichment work.

Shapes: ``split_file(relpath, bytes, redact=) -> list[Span]`` (see ``models.Span``); line
numbers are 1-based inclusive in the *normalised* text (BOM dropped, CRLF and
lone CR turned into LF, so the line count never changes).

How a parsed file is cut (node types come from the tree-sitter grammar wheels
pinned in pyproject.toml; one role table serves every language):

- functions -> ``function``; classes, structs, interfaces, traits, enums, impls
  and Go type declarations -> ``class``; functions with a body inside a class
  -> ``method`` named ``Class.method`` (Go ``func (r *T) M`` and C++
  ``void T::M() {}`` too). Namespaces/modules are walked into; their names
  prefix the names inside (``ns.f``). Nested functions stay in their function.
- A class span covers the whole class, but its text replaces each method (and
  nested class) by one placeholder line, ``<signature line> ...``, so editing
  a method body changes the method's hash only.
- Comments and Rust attributes directly above a definition (no blank line in
  between, on lines of their own) belong to the definition: the model sees a
  function's doc comment, and no one-comment ``block`` jobs are made.
- The remaining top-level lines become ``block`` spans, one per gap between
  definitions, trimmed of blank edge lines; gaps without a letter or digit
  (blank, or just ``}``) are dropped.
- A tiny block (at most :data:`TINY_BLOCK_LINES` non-blank lines: an import,
  a one-line comment, ``x = 1``) is not worth an LLM request of its own: it
  joins the top-level definition right after it (with the blank lines
  between), or, at the end of a file, the one right before it. Its lines
  belong to that one span only, so editing a function still re-enriches that
  function's span alone (with the tiny block it carries, if any); a file with
  no definition keeps its block.
- A top-level node with a syntax error becomes an ``error`` span (its full
  text, still enriched as text); broken nodes at most 3 rows apart share one.
  Definitions swallowed by a broken node are recovered by re-parsing the rest
  of its region from the next line that is not indented deeper (bounded to
  about twice the file's bytes), so they may overlap the ``error`` span.
- ``text`` files, and files whose parse raises, get ``window`` spans.
- Any span longer than ``max_span_chars`` is cut into ``(part i/n)`` spans on
  line boundaries (an over-long line is cut into pieces); nothing is dropped.
  Length is measured in :func:`~llmc_rag_service.models.budget_units` (an ASCII
  character is 1, an ASCII digit or a non-ASCII UTF-8 byte 3), so CJK, emoji or
  numeric text is cut shorter, with the number the prompt puts before each line
  counted too (a span of blank lines is cut like any other).

``.h`` files are C unless their text looks like C++. Parsers are built lazily,
one per language per thread (tree-sitter parsers are not thread-safe;
``Language`` objects are shared).
"""

from __future__ import annotations

import re
from typing import Callable

import structlog

from llmc_rag_service.models import Span, budget_units
from llmc_rag_service.index.sources import SkipFile, decode_source, language_for, looks_like_cpp
from llmc_rag_service.index.syntax import GRAMMARS, Def, Piece, find_definitions

__all__ = ["SkipFile", "decode_source", "language_for", "split_file", "split_source"]

log = structlog.get_logger(__name__)


# ---------------------------------------------------------------- pieces

_Item = tuple[str, str, list[Piece]]  # (kind, name, pieces) before the size cap
_LETTER_OR_DIGIT = re.compile(r"[^\W_]")


def _rows(lines: list[str], first: int, last: int) -> list[Piece]:
    """Rows ``first..last`` as one piece (split into lines only if a span must be cut)."""
    return [Piece("\n".join(lines[first:last + 1]), first, last)] if first <= last else []


def _line_pieces(piece: Piece) -> list[Piece]:
    """A run of rows as one piece per line; a placeholder (one line standing for
    several rows) stays whole."""
    texts = piece.text.split("\n")
    if len(texts) != piece.last_row - piece.first_row + 1 or len(texts) == 1:
        return [piece]
    return [Piece(text, piece.first_row + i, piece.first_row + i) for i, text in enumerate(texts)]


def _lines_name(first_row: int, last_row: int) -> str:
    return f"lines {first_row + 1}-{last_row + 1}"


def _def_items(found: Def, lines: list[str]) -> list[_Item]:
    """The definition's item (members as placeholder lines), then its members' items."""
    pieces, row = [], found.first_row
    for member in found.members:
        pieces += _rows(lines, row, member.first_row - 1)
        pieces.append(Piece(member.placeholder, member.first_row, member.last_row))
        row = member.last_row + 1
    pieces += _rows(lines, row, found.last_row)
    items = [(found.kind, found.name or _lines_name(found.first_row, found.last_row), pieces)]
    for member in found.members:
        items += _def_items(member, lines)
    return items


def _block_items(lines: list[str], claimed: list[bool]) -> list[_Item]:
    """One ``block`` per run of unclaimed lines, trimmed; runs with no letter or digit dropped."""
    items, row = [], 0
    while row < len(lines):
        if claimed[row] or not lines[row].strip():
            row += 1
            continue
        last = row
        while last + 1 < len(lines) and not claimed[last + 1]:
            last += 1
        while not lines[last].strip():
            last -= 1
        run = _rows(lines, row, last)
        if _LETTER_OR_DIGIT.search(run[0].text):
            items.append(("block", _lines_name(row, last), run))
        row = last + 1
    return items


def _window_items(lines: list[str], window_lines: int) -> list[_Item]:
    items = []
    for first in range(0, len(lines), window_lines):
        last = min(first + window_lines, len(lines)) - 1
        if any(line.strip() for line in lines[first:last + 1]):
            items.append(("window", _lines_name(first, last), _rows(lines, first, last)))
    return items


def _parsed_items(lines: list[str], language: str) -> list[_Item]:
    defs, recovered = find_definitions(lines, language)
    claimed = [False] * len(lines)
    for found in defs:
        claimed[found.first_row:found.last_row + 1] = [True] * (found.last_row + 1 - found.first_row)
    per_def = [_def_items(found, lines) for found in defs]
    blocks, heads = _attach_tiny_blocks(_block_items(lines, claimed), [d[0] for d in per_def], lines)
    items = blocks
    for head, found_items in zip(heads, per_def):
        items += [head] + found_items[1:]
    for found in recovered:
        items += _def_items(found, lines)
    return items


def _cut(text: str, max_units: int) -> list[str]:
    """``text`` in consecutive pieces of at most ``max_units`` budget units each
    (one piece if it fits; a character over the cap alone still makes a piece)."""
    if budget_units(text) == len(text):  # ASCII without digits: a unit per character
        return [text[start:start + max_units] for start in range(0, max(len(text), 1), max_units)]
    pieces, start, size = [], 0, 0
    for index, char in enumerate(text):
        units = budget_units(char)
        if size and size + units > max_units:
            pieces.append(text[start:index])
            start, size = index, 0
        size += units
    pieces.append(text[start:])
    return pieces


#: A module-level block of at most this many non-blank lines joins a definition next to it.
TINY_BLOCK_LINES = 2


def _attach_tiny_blocks(blocks: list[_Item], heads: list[_Item], lines: list[str]) -> tuple[list[_Item], list[_Item]]:
    """(blocks kept, top-level definition items in line order with tiny blocks joined; see the module docstring)."""
    kept, heads = [], list(heads)
    for block in blocks:
        first, last = block[2][0].first_row, block[2][-1].last_row
        if not heads or sum(1 for line in lines[first:last + 1] if line.strip()) > TINY_BLOCK_LINES:
            kept.append(block)
            continue
        # A block is a whole gap between definitions: only blank lines separate it from either.
        after = next((i for i, head in enumerate(heads) if head[2][0].first_row > last), None)
        if after is not None:
            kind, name, pieces = heads[after]
            heads[after] = (kind, name, block[2] + _rows(lines, last + 1, pieces[0].first_row - 1) + pieces)
        else:
            kind, name, pieces = heads[-1]
            heads[-1] = (kind, name, pieces + _rows(lines, pieces[-1].last_row + 1, first - 1) + block[2])
    return kept, heads


def _prefix_units(last_line: int) -> int:
    """Budget units of the ``"1234 | "`` number the prompt puts before each line
    of a span ending at ``last_line`` (``enrich/prompt.py`` ``build_messages``):
    its digits, each a token, and ``" | "``. Counted per line, so a span of
    blank or very short lines is cut before its numbered prompt outgrows ``num_ctx``."""
    return budget_units(f"{last_line} | ")


def _pack(pieces: list[Piece], max_units: int) -> list[list[Piece]]:
    """Consecutive groups of pieces whose joined text, each line with its prompt line
    number, is at most ``max_units`` long, measured in
    :func:`~llmc_rag_service.models.budget_units`."""
    parts: list[list[Piece]] = []
    current: list[Piece] = []
    prefix = _prefix_units(pieces[-1].last_row + 1)
    size = -1  # budget units of "\n".join(current), line numbers included
    for piece in (line for run in pieces for line in _line_pieces(run)):
        units = budget_units(piece.text) + prefix
        room = max(1, max_units - prefix)
        chunks = [piece.text] if units <= max_units else _cut(piece.text, room)
        for text in chunks:
            units = budget_units(text) + prefix if len(chunks) > 1 else units
            if current and size + 1 + units > max_units:
                parts.append(current)
                current, size = [], -1
            current.append(piece._replace(text=text))
            size += 1 + units
    parts.append(current)
    return parts


def _capped(item: _Item, language: str, max_chars: int) -> list[Span]:
    kind, name, pieces = item
    text = "\n".join(piece.text for piece in pieces)
    numbering = _prefix_units(pieces[-1].last_row + 1) * (text.count("\n") + 1)
    # The common case: one span, nothing to pack (short ASCII needs no digit count: 3 units a character at most).
    if (3 * len(text) if text.isascii() else budget_units(text)) + numbering <= max_chars \
            or budget_units(text) + numbering <= max_chars:
        return [Span(kind, name, pieces[0].first_row + 1, pieces[-1].last_row + 1, text, language)]
    parts = _pack(pieces, max_chars)
    spans = []
    for number, part in enumerate(parts, 1):
        label = f"{name} (part {number}/{len(parts)})" if len(parts) > 1 else name
        text = "\n".join(piece.text for piece in part)
        spans.append(Span(kind, label, part[0].first_row + 1, part[-1].last_row + 1, text, language))
    return spans


# ------------------------------------------------------------ public API

def split_source(
    text: str, language: str, *, max_span_chars: int = 12000, window_lines: int = 60
) -> list[Span]:
    """Normalised text -> spans in line order (longest first on a tie; parts kept together).

    ``text`` must come from :func:`decode_source` (``\\n`` line ends).
    ``max_span_chars`` caps every span's text length (in budget units:
    :func:`~llmc_rag_service.models.budget_units`, characters for ASCII text);
    ``window_lines`` is the height of a ``window`` span. An empty or
    whitespace-only text gives ``[]``. Raises ValueError on a cap below 1.
    """
    if max_span_chars < 1 or window_lines < 1:
        raise ValueError("max_span_chars and window_lines must be >= 1")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()  # the last "\n" ends a line, it does not start one
    if not text.strip():
        return []
    items = None
    if language in GRAMMARS:
        try:
            items = _parsed_items(lines, language)
        except Exception as exc:  # a grammar or walker failure must not lose the file
            log.error("span_parse_failed", language=language, error=repr(exc))
    if items is None:
        items = _window_items(lines, window_lines)
    items.sort(key=lambda item: (item[2][0].first_row, -item[2][-1].last_row))
    return [span for item in items for span in _capped(item, language, max_span_chars)]


def split_file(
    relpath: str, data: bytes, *, max_file_bytes: int, max_span_chars: int = 12000,
    redact: Callable[[str], str] | None = None,
) -> list[Span]:
    """File bytes -> spans; the language comes from ``relpath`` (see :func:`language_for`),
    except that a ``.h`` file whose text looks like C++ (class, namespace,
    template, ``std::``, access labels) is split as cpp.

    ``redact`` (the scanner's secret redaction, ``index/redact.py``) is applied to
    the whole decoded text before it is cut: no span, part or hash ever holds a
    secret value, and a key block split over parts is still found whole. It
    must keep the line count (markers are followed by the lines they replace).

    Raises SkipFile("too_large") when ``len(data) > max_file_bytes`` (bytes),
    else SkipFile("binary") / SkipFile("decode_error") from :func:`decode_source`.
    """
    if len(data) > max_file_bytes:
        raise SkipFile("too_large", f"{len(data)} bytes > max_file_bytes {max_file_bytes}")
    language = language_for(relpath)
    text = decode_source(data, language)
    if relpath.lower().endswith(".h") and looks_like_cpp(text):
        language = "cpp"
    if redact is not None:
        text = redact(text)
    return split_source(text, language, max_span_chars=max_span_chars)
