"""File -> spans: decode a source file and cut it into units of enrichment work.

Shapes: ``split_file(relpath, bytes) -> list[Span]`` (see ``models.Span``); line
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
- A top-level node with a syntax error becomes an ``error`` span (its full
  text, still enriched as text); broken nodes at most 3 rows apart share one.
  Definitions swallowed by a broken node are recovered by re-parsing the rest
  of its region from the next line that is not indented deeper (bounded to
  about twice the file's bytes), so they may overlap the ``error`` span.
- ``text`` files, and files whose parse raises, get ``window`` spans.
- Any span longer than ``max_span_chars`` is cut into ``(part i/n)`` spans on
  line boundaries (an over-long line is cut into pieces); nothing is dropped.

``.h`` files are C unless their text looks like C++. Parsers are built lazily,
one per language per thread (tree-sitter parsers are not thread-safe;
``Language`` objects are shared).
"""

from __future__ import annotations

import codecs
import importlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import NamedTuple

import structlog
from tree_sitter import Language, Node, Parser

from llmc_rag_service.models import Span

log = structlog.get_logger(__name__)


class SkipFile(Exception):
    """File is not indexed.

    Attributes:
        reason: ``binary``, ``too_large`` or ``decode_error``.
        detail: Human text (offsets, sizes, codec).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- languages

# .h is C unless its text looks like C++ (see split_file): the C grammar reads
# macro-laden C headers better than the C++ one, but cannot read classes.
_CPP_HEADER = re.compile(
    r"^\s*(?:class|namespace|template)\b|\bstd::|^\s*(?:public|private|protected):", re.MULTILINE
)
_EXTENSIONS = {
    **dict.fromkeys(("py", "pyi", "pyw"), "python"),
    **dict.fromkeys(("js", "mjs", "cjs", "jsx"), "javascript"),
    **dict.fromkeys(("ts", "mts", "cts"), "typescript"),
    "tsx": "tsx", "go": "go", "rs": "rust", "java": "java", "c": "c", "h": "c",
    **dict.fromkeys(("cc", "cpp", "cxx", "c++", "hh", "hpp", "hxx", "h++", "ipp"), "cpp"),
}

#: language id -> (grammar module, function returning the language pointer)
_GRAMMARS = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "java": ("tree_sitter_java", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
}
_languages: dict[str, Language] = {}
_languages_lock = threading.Lock()
_thread_state = threading.local()


def language_for(relpath: str) -> str:
    """Language id from the file name's extension (case-insensitive).

    Returns one of python, javascript, typescript, tsx, go, rust, java, c, cpp,
    or ``text`` for anything else. ``.h`` maps to c (split_file may refine it to cpp).
    """
    suffix = PurePosixPath(relpath.replace("\\", "/")).suffix.lower().lstrip(".")
    return _EXTENSIONS.get(suffix, "text")


def _parser_for(language: str) -> Parser:
    """This thread's parser for ``language``; raises ImportError if the grammar is missing."""
    parsers = getattr(_thread_state, "parsers", None)
    if parsers is None:
        parsers = _thread_state.parsers = {}
    if language not in parsers:
        with _languages_lock:
            if language not in _languages:
                module, attr = _GRAMMARS[language]
                _languages[language] = Language(getattr(importlib.import_module(module), attr)())
            parsers[language] = Parser(_languages[language])
    return parsers[language]


# ----------------------------------------------------------------- decoding

# PEP 263: the cookie is on line 1, or on line 2 if line 1 is a comment or blank.
_COOKIE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
_BLANK_OR_COMMENT = re.compile(rb"^[ \t\f]*(?:#.*)?\r?$")


def decode_source(data: bytes, language: str) -> str:
    """Bytes -> normalised text: UTF-8 BOM stripped, CRLF and lone CR -> LF.

    Tries UTF-8; for ``python`` falls back to a PEP 263 coding cookie.
    Raises SkipFile("binary") if any NUL byte is present, and
    SkipFile("decode_error") if the bytes cannot be decoded.
    """
    nul_at = data.find(b"\x00")
    if nul_at >= 0:
        raise SkipFile("binary", f"NUL byte at offset {nul_at}")
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = _decode_by_cookie(data, language, exc)
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _decode_by_cookie(data: bytes, language: str, utf8_error: UnicodeDecodeError) -> str:
    cookie = _coding_cookie(data) if language == "python" else None
    if cookie is None:
        raise SkipFile(
            "decode_error", f"not UTF-8 ({utf8_error.reason} at byte {utf8_error.start})"
        ) from utf8_error
    try:
        return data.decode(cookie)
    except (LookupError, UnicodeDecodeError) as exc:
        raise SkipFile("decode_error", f"cannot decode with coding cookie {cookie!r}: {exc}") from exc


def _coding_cookie(data: bytes) -> str | None:
    for number, line in enumerate(data.split(b"\n", 2)[:2]):
        match = _COOKIE.match(line)
        if match:
            return match.group(1).decode("ascii")
        if number == 0 and not _BLANK_OR_COMMENT.match(line):
            return None
    return None


# ------------------------------------------------------------- node roles

_FUNCTIONS = frozenset({
    "function_definition", "function_declaration", "generator_function_declaration",
    "function_item", "method_definition", "method_declaration", "constructor_declaration",
    "compact_constructor_declaration", "function_expression", "generator_function",
    "arrow_function",
})
_CLASSES = frozenset({
    "class_definition", "class_declaration", "abstract_class_declaration",
    "interface_declaration", "enum_declaration", "record_declaration",
    "annotation_type_declaration", "type_declaration", "struct_item", "enum_item",
    "union_item", "trait_item", "impl_item", "class_specifier", "struct_specifier",
    "union_specifier", "enum_specifier",
})
_SPECIFIERS = frozenset({"class_specifier", "struct_specifier", "union_specifier", "enum_specifier"})
#: wrapper node -> field holding the wrapped node ("" = its last named child)
_WRAPPERS = {
    "decorated_definition": "definition", "export_statement": "declaration",
    "template_declaration": "", "ambient_declaration": "", "expression_statement": "",
    "declaration": "type", "type_definition": "type", "field_declaration": "type",
}
#: namespace-like node -> field of its body ("" = its own children)
_CONTAINERS = {
    "namespace_definition": "body", "internal_module": "body", "module": "body",
    "mod_item": "body", "linkage_specification": "body", "preproc_if": "",
    "preproc_ifdef": "", "preproc_else": "", "preproc_elif": "", "preproc_elifdef": "",
}
_VARIABLES = frozenset({"lexical_declaration", "variable_declaration"})
_FIELDS = frozenset({"field_definition", "public_field_definition"})
_FUNCTION_VALUES = frozenset(
    {"arrow_function", "function_expression", "function", "generator_function"}
)
_ATTACHED = frozenset({"comment", "line_comment", "block_comment", "attribute_item"})
_NAME_LEAVES = frozenset({
    "identifier", "field_identifier", "qualified_identifier", "destructor_name",
    "operator_name", "type_identifier", "template_function",
})
#: Error-recovery re-parses may read this many times the file's bytes (plus 64 KiB).
_REPARSE_BUDGET_FACTOR = 2
#: Broken nodes at most this many rows apart (a run of macro-laden C declarations,
#: say) make one ``error`` span rather than one job per line.
_ERROR_MERGE_ROWS = 3


class _Piece(NamedTuple):
    """One line of span text and the source rows (0-based, inclusive) it stands for."""

    text: str
    first_row: int
    last_row: int


@dataclass
class _Def:
    """A definition found in the tree; rows are 0-based inclusive."""

    kind: str
    name: str | None
    first_row: int
    last_row: int
    sig_row: int
    end_byte: int
    placeholder: str  # the line standing for this definition in its class's text
    members: list[_Def] = field(default_factory=list)

    def shifted(self, rows: int) -> _Def:
        """The same definition ``rows`` lines further down (for a re-parsed region)."""
        return _Def(self.kind, self.name, self.first_row + rows, self.last_row + rows,
                    self.sig_row + rows, self.end_byte, self.placeholder,
                    [m.shifted(rows) for m in self.members])


def _text(node: Node | None) -> str:
    return "" if node is None or node.text is None else node.text.decode("utf-8", "replace")


def _last_row(node: Node) -> int:
    """Last row holding the node's text (a node ending at column 0 ends on the row above)."""
    end = node.end_point
    return end.row - 1 if end.column == 0 and end.row > node.start_point.row else end.row


def _unwrap(node: Node) -> Node:
    while node.type in _WRAPPERS:
        role = _WRAPPERS[node.type]
        inner = node.child_by_field_name(role) if role else None
        if node.type == "export_statement" and inner is None:
            inner = node.child_by_field_name("value")  # export default function () {}
        if not role:
            named = [c for c in node.named_children if c.type not in _ATTACHED]
            inner = named[-1] if named else None
        if inner is None:
            return node
        node = inner
    return node


# ------------------------------------------------------------------ names

def _declarator_name(node: Node) -> str | None:
    """Name of a C/C++ function from its declarator chain (``ns::T::f`` -> ``ns.T.f``)."""
    current = node.child_by_field_name("declarator")
    while current is not None and current.type not in _NAME_LEAVES:
        nxt = current.child_by_field_name("declarator")
        current = nxt if nxt is not None else (current.named_children or [None])[-1]
    return _text(current).replace("::", ".") if current is not None else None


def _base_type(node: Node | None) -> str:
    """``*T``, ``T[K]``, ``Vec<T>`` -> the bare type name."""
    while node is not None and node.type in ("pointer_type", "generic_type", "reference_type"):
        inner = node.child_by_field_name("type")
        node = inner if inner is not None else (node.named_children or [None])[-1]
    return _text(node)


def _name_of(node: Node, outer: Node) -> tuple[str | None, str | None]:
    """(display name, prefix for member names) of a definition node."""
    if node.type == "impl_item":  # Rust: impl [Trait for] Type
        trait = node.child_by_field_name("trait")
        target = node.child_by_field_name("type")
        shown = f"impl {_text(trait)} for {_text(target)}" if trait else f"impl {_text(target)}"
        return shown, _base_type(target)
    if node.type == "type_declaration":  # Go: type T ... / type ( A ...; B ... )
        names = [_text(c.child_by_field_name("name")) for c in node.named_children]
        return ", ".join(n for n in names if n) or None, None
    if node.type == "method_declaration" and node.child_by_field_name("receiver"):
        receiver = node.child_by_field_name("receiver").named_children  # Go: func (r *T) M()
        base = _base_type(receiver[0].child_by_field_name("type")) if receiver else "?"
        return f"{base}.{_text(node.child_by_field_name('name'))}", None
    name = node.child_by_field_name("name")
    if name is not None:
        return _text(name).strip("\"'"), None
    if node.child_by_field_name("declarator") is not None and node.type in _FUNCTIONS:
        return _declarator_name(node), None
    if outer.type == "type_definition":  # typedef struct { ... } Name;
        return _text(outer.child_by_field_name("declarator")) or None, None
    return ("default", None) if outer.type == "export_statement" else (None, None)


def _qualify(prefix: str, name: str | None) -> str | None:
    return f"{prefix}.{name}" if prefix and name else name


def _sig_row(node: Node) -> int:
    """Row of the signature line: where the name is (after decorators/annotations)."""
    name = node.child_by_field_name("name") or node.child_by_field_name("declarator")
    return (name or node).start_point.row


def _placeholder(line: str, node: Node, row: int) -> str:
    """Signature line cut before a body that starts on it, plus `` ...``."""
    body = node.child_by_field_name("body")
    value = node.child_by_field_name("value")  # class field `f = () => {...}`
    if body is None and value is not None:
        body = value.child_by_field_name("body")
    if body is not None and body.start_point.row == row and body.start_point.column > 0:
        # Tree-sitter columns count UTF-8 bytes.
        line = line.encode("utf-8", "replace")[: body.start_point.column].decode("utf-8", "ignore")
    return line.rstrip() + " ..."


def _first_row(outer: Node) -> int:
    """First row of a definition including comments/attributes directly above it."""
    row = outer.start_point.row
    above = outer.prev_sibling
    while above is not None and above.type in _ATTACHED and _last_row(above) >= row - 1:
        before = above.prev_sibling
        if before is not None and _last_row(before) >= above.start_point.row:
            break  # a trailing comment of the line above, not ours
        row, above = above.start_point.row, before
    return row


def _function_value_name(node: Node) -> str | None:
    """Name of ``const f = () => {}`` or of a class field ``f = () => {}``, else None."""
    if node.type in _VARIABLES:
        declarators = [c for c in node.named_children if c.type == "variable_declarator"]
        if len(declarators) != 1:
            return None
        node = declarators[0]
    elif node.type not in _FIELDS:
        return None
    value = node.child_by_field_name("value")
    if value is None or value.type not in _FUNCTION_VALUES:
        return None
    return _text(node.child_by_field_name("name") or node.child_by_field_name("property"))


# ------------------------------------------------------------- tree walk

_NAMED_CONTAINERS = frozenset({"namespace_definition", "internal_module", "module", "mod_item"})


class _Walker:
    """Finds the definitions of one parse; ``recovered`` collects those re-parsed out of errors."""

    def __init__(self, lines: list[str], parser: Parser, budget: list[int]) -> None:
        self.lines, self.parser, self.budget = lines, parser, budget
        self.recovered: list[_Def] = []

    def collect(self, nodes: list[Node], prefix: str) -> list[_Def]:
        """Definitions among the sibling nodes of a module or namespace body."""
        defs: list[_Def] = []
        for node in nodes:
            for found in self._top_level(node, prefix):
                last = defs[-1] if defs else None
                if last and found.kind == last.kind == "error" and (
                        found.first_row - last.last_row <= _ERROR_MERGE_ROWS):
                    last.last_row, last.end_byte = max(last.last_row, found.last_row), found.end_byte
                elif last is None or found.last_row > last.last_row:
                    defs.append(found)  # else it lies on the previous one's lines (one-line code)
        return defs

    def _top_level(self, node: Node, prefix: str) -> list[_Def]:
        inner = _unwrap(node)
        if inner.type in _CONTAINERS:
            return self._container(inner, prefix)
        if node.type == "ERROR" or node.has_error:
            return [self._error(node, prefix)]
        found = self._definition(inner, node, prefix, in_class=False)
        return [found] if found else []

    def _container(self, node: Node, prefix: str) -> list[_Def]:
        role = _CONTAINERS[node.type]
        body = node.child_by_field_name(role) if role else node
        if body is None:
            return []
        listing = body is node or body.type.endswith("_list") or body.type == "statement_block"
        if node.type in _NAMED_CONTAINERS:
            prefix = _qualify(prefix, _name_of(node, node)[0]) or prefix
        return self.collect(body.named_children if listing else [body], prefix)

    def _definition(self, node: Node, outer: Node, prefix: str, in_class: bool) -> _Def | None:
        if node.type in _FUNCTIONS and (not in_class or node.child_by_field_name("body")):
            name = _name_of(node, outer)[0]
            kind = "method" if in_class or "." in (name or "") else "function"
            return self._make(kind, _qualify(prefix, name), node, outer)
        if node.type in _CLASSES and (
            node.type not in _SPECIFIERS or node.child_by_field_name("body") is not None
        ):
            name, member_prefix = _name_of(node, outer)
            found = self._make("class", _qualify(prefix, name), node, outer)
            found.members = self._members(node, found, _qualify(prefix, member_prefix or name or "?"))
            return found
        value_name = _function_value_name(node)
        if value_name:
            kind = "method" if in_class else "function"
            return self._make(kind, _qualify(prefix, value_name), node, outer)
        return None

    def _members(self, node: Node, owner: _Def, prefix: str | None) -> list[_Def]:
        """Methods and nested classes that get a placeholder line in ``owner``'s text."""
        body = node.child_by_field_name("body")
        children: list[Node] = []
        for child in body.named_children if body is not None else []:
            children.extend(child.named_children if child.type == "enum_body_declarations" else [child])
        members: list[_Def] = []
        for child in children:
            found = self._definition(_unwrap(child), child, prefix or "", in_class=True)
            if found is not None and _has_own_lines(found, owner, members):
                members.append(found)
        return members

    def _make(self, kind: str, name: str | None, node: Node, outer: Node) -> _Def:
        row = _sig_row(node)
        placeholder = _placeholder(self.lines[row], node, row)
        return _Def(kind, name, _first_row(outer), _last_row(outer), row, outer.end_byte, placeholder)

    def _error(self, node: Node, prefix: str) -> _Def:
        broken = self._make("error", None, node, node)
        self.recovered.extend(self._recover(node.start_point.row, broken.last_row, prefix))
        return broken

    def _recover(self, start_row: int, last_row: int, prefix: str) -> list[_Def]:
        """Definitions inside a broken region, re-parsed from the next line not indented deeper."""
        indent = _indent(self.lines[start_row])
        restart = next((row for row in range(start_row + 1, last_row + 1)
                        if self.lines[row].strip() and _indent(self.lines[row]) <= indent), None)
        if restart is None:
            return []
        region = self.lines[restart:last_row + 1]
        source = _encode(region)
        if self.budget[0] < len(source):
            return []
        self.budget[0] -= len(source)
        sub = _Walker(region, self.parser, self.budget)
        tree = self.parser.parse(source)
        found = [d for d in sub.collect(_roots(tree.root_node), prefix) if d.kind != "error"]
        return [d.shifted(restart) for d in found + sub.recovered]


def _has_own_lines(member: _Def, owner: _Def, previous: list[_Def]) -> bool:
    """True if the member shares no line with the class header or the previous member,
    and ends before the class's last line (or with it: Python has no closing brace).
    A member failing this stays inline in the class text."""
    after = previous[-1].last_row if previous else owner.sig_row
    ends_inside = member.last_row < owner.last_row or member.end_byte == owner.end_byte
    return member.first_row > after and ends_inside


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _encode(lines: list[str]) -> bytes:
    return "\n".join(lines).encode("utf-8", "replace")  # "replace" keeps the row count


def _roots(root: Node) -> list[Node]:
    """Top-level nodes; a root that is itself an ERROR is one broken region."""
    return [root] if root.type == "ERROR" else list(root.named_children)


# ---------------------------------------------------------------- pieces

_Item = tuple[str, str, list[_Piece]]  # (kind, name, pieces) before the size cap


def _rows(lines: list[str], first: int, last: int) -> list[_Piece]:
    return [_Piece(lines[row], row, row) for row in range(first, last + 1)]


def _lines_name(first_row: int, last_row: int) -> str:
    return f"lines {first_row + 1}-{last_row + 1}"


def _def_items(found: _Def, lines: list[str]) -> list[_Item]:
    """The definition's item (members as placeholder lines), then its members' items."""
    pieces, row = [], found.first_row
    for member in found.members:
        pieces += _rows(lines, row, member.first_row - 1)
        pieces.append(_Piece(member.placeholder, member.first_row, member.last_row))
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
        if any(ch.isalnum() for line in lines[row:last + 1] for ch in line):
            items.append(("block", _lines_name(row, last), _rows(lines, row, last)))
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
    parser = _parser_for(language)
    source = _encode(lines)
    walker = _Walker(lines, parser, [_REPARSE_BUDGET_FACTOR * len(source) + 65536])
    defs = walker.collect(_roots(parser.parse(source).root_node), "")
    claimed = [False] * len(lines)
    for found in defs:
        claimed[found.first_row:found.last_row + 1] = [True] * (found.last_row + 1 - found.first_row)
    items = _block_items(lines, claimed)
    for found in defs + walker.recovered:
        items += _def_items(found, lines)
    return items


def _pack(pieces: list[_Piece], max_chars: int) -> list[list[_Piece]]:
    """Consecutive groups of pieces whose joined text is at most ``max_chars`` long."""
    parts: list[list[_Piece]] = []
    current: list[_Piece] = []
    size = -1  # length of "\n".join(current)
    for piece in pieces:
        for start in range(0, max(len(piece.text), 1), max_chars):
            chunk = piece._replace(text=piece.text[start:start + max_chars])
            if current and size + 1 + len(chunk.text) > max_chars:
                parts.append(current)
                current, size = [], -1
            current.append(chunk)
            size += 1 + len(chunk.text)
    parts.append(current)
    return parts


def _capped(item: _Item, language: str, max_chars: int) -> list[Span]:
    kind, name, pieces = item
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
    ``max_span_chars`` caps every span's text length (in characters);
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
    if language in _GRAMMARS:
        try:
            items = _parsed_items(lines, language)
        except Exception as exc:  # a grammar or walker failure must not lose the file
            log.error("span_parse_failed", language=language, error=repr(exc))
    if items is None:
        items = _window_items(lines, window_lines)
    items.sort(key=lambda item: (item[2][0].first_row, -item[2][-1].last_row))
    return [span for item in items for span in _capped(item, language, max_span_chars)]


def split_file(
    relpath: str, data: bytes, *, max_file_bytes: int, max_span_chars: int = 12000
) -> list[Span]:
    """File bytes -> spans; the language comes from ``relpath`` (see :func:`language_for`),
    except that a ``.h`` file whose text looks like C++ (class, namespace,
    template, ``std::``, access labels) is split as cpp.

    Raises SkipFile("too_large") when ``len(data) > max_file_bytes`` (bytes),
    else SkipFile("binary") / SkipFile("decode_error") from :func:`decode_source`.
    """
    if len(data) > max_file_bytes:
        raise SkipFile("too_large", f"{len(data)} bytes > max_file_bytes {max_file_bytes}")
    language = language_for(relpath)
    text = decode_source(data, language)
    if relpath.lower().endswith(".h") and _CPP_HEADER.search(text):
        language = "cpp"
    return split_source(text, language, max_span_chars=max_span_chars)
