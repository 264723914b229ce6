"""Tree-sitter: find the definitions (functions, classes, methods) of a file.

One role table serves every language (node types come from the grammar wheels
pinned in pyproject.toml). :func:`find_definitions` returns the top-level
definitions, with their members, plus definitions recovered from inside
syntax errors; ``spans.py`` turns them into spans. Parsers are built lazily,
one per language per thread (tree-sitter parsers are not thread-safe;
``Language`` objects are shared).
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

from tree_sitter import Language, Node, Parser

#: language id -> (grammar module, function returning the language pointer)
GRAMMARS = {
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


def _parser_for(language: str) -> Parser:
    """This thread's parser for ``language``; raises ImportError if the grammar is missing."""
    parsers = getattr(_thread_state, "parsers", None)
    if parsers is None:
        parsers = _thread_state.parsers = {}
    if language not in parsers:
        with _languages_lock:
            if language not in _languages:
                module, attr = GRAMMARS[language]
                _languages[language] = Language(getattr(importlib.import_module(module), attr)())
            parsers[language] = Parser(_languages[language])
    parser: Parser = parsers[language]
    return parser


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


class Piece(NamedTuple):
    """One line of span text and the source rows (0-based, inclusive) it stands for."""

    text: str
    first_row: int
    last_row: int


@dataclass
class Def:
    """A definition found in the tree; rows are 0-based inclusive."""

    kind: str
    name: str | None
    first_row: int
    last_row: int
    sig_row: int
    end_byte: int
    placeholder: str  # the line standing for this definition in its class's text
    members: list[Def] = field(default_factory=list)

    def shifted(self, rows: int) -> Def:
        """The same definition ``rows`` lines further down (for a re-parsed region)."""
        return Def(self.kind, self.name, self.first_row + rows, self.last_row + rows,
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
        current = nxt if nxt is not None else (current.named_children[-1] if current.named_children else None)
    return _text(current).replace("::", ".") if current is not None else None


def _base_type(node: Node | None) -> str:
    """``*T``, ``T[K]``, ``Vec<T>`` -> the bare type name."""
    while node is not None and node.type in ("pointer_type", "generic_type", "reference_type"):
        inner = node.child_by_field_name("type")
        node = inner if inner is not None else (node.named_children[-1] if node.named_children else None)
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
    receiver_node = node.child_by_field_name("receiver") if node.type == "method_declaration" else None
    if receiver_node:
        receiver = receiver_node.named_children  # Go: func (r *T) M()
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
        self.recovered: list[Def] = []

    def collect(self, nodes: list[Node], prefix: str) -> list[Def]:
        """Definitions among the sibling nodes of a module or namespace body."""
        defs: list[Def] = []
        for node in nodes:
            for found in self._top_level(node, prefix):
                last = defs[-1] if defs else None
                if last and found.kind == last.kind == "error" and (
                        found.first_row - last.last_row <= _ERROR_MERGE_ROWS):
                    last.last_row, last.end_byte = max(last.last_row, found.last_row), found.end_byte
                elif last is None or found.last_row > last.last_row:
                    defs.append(found)  # else it lies on the previous one's lines (one-line code)
        return defs

    def _top_level(self, node: Node, prefix: str) -> list[Def]:
        inner = _unwrap(node)
        if inner.type in _CONTAINERS:
            return self._container(inner, prefix)
        if node.type == "ERROR" or node.has_error:
            return [self._error(node, prefix)]
        found = self._definition(inner, node, prefix, in_class=False)
        return [found] if found else []

    def _container(self, node: Node, prefix: str) -> list[Def]:
        role = _CONTAINERS[node.type]
        body = node.child_by_field_name(role) if role else node
        if body is None:
            return []
        listing = body is node or body.type.endswith("_list") or body.type == "statement_block"
        if node.type in _NAMED_CONTAINERS:
            prefix = _qualify(prefix, _name_of(node, node)[0]) or prefix
        return self.collect(body.named_children if listing else [body], prefix)

    def _definition(self, node: Node, outer: Node, prefix: str, in_class: bool) -> Def | None:
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

    def _members(self, node: Node, owner: Def, prefix: str | None) -> list[Def]:
        """Methods and nested classes that get a placeholder line in ``owner``'s text."""
        body = node.child_by_field_name("body")
        children: list[Node] = []
        for child in body.named_children if body is not None else []:
            children.extend(child.named_children if child.type == "enum_body_declarations" else [child])
        members: list[Def] = []
        for child in children:
            found = self._definition(_unwrap(child), child, prefix or "", in_class=True)
            if found is not None and _has_own_lines(found, owner, members):
                members.append(found)
        return members

    def _make(self, kind: str, name: str | None, node: Node, outer: Node) -> Def:
        row = _sig_row(node)
        placeholder = _placeholder(self.lines[row], node, row)
        return Def(kind, name, _first_row(outer), _last_row(outer), row, outer.end_byte, placeholder)

    def _error(self, node: Node, prefix: str) -> Def:
        broken = self._make("error", None, node, node)
        self.recovered.extend(self._recover(node.start_point.row, broken.last_row, prefix))
        return broken

    def _recover(self, start_row: int, last_row: int, prefix: str) -> list[Def]:
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


def _has_own_lines(member: Def, owner: Def, previous: list[Def]) -> bool:
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


def find_definitions(lines: list[str], language: str) -> tuple[list[Def], list[Def]]:
    """Parse ``lines`` (no line ends) as ``language``: (top-level definitions,
    definitions recovered inside broken regions). Rows are 0-based inclusive.

    Raises ImportError if the grammar is missing, and whatever tree-sitter raises.
    """
    parser = _parser_for(language)
    source = _encode(lines)
    walker = _Walker(lines, parser, [_REPARSE_BUDGET_FACTOR * len(source) + 65536])
    return walker.collect(_roots(parser.parse(source).root_node), ""), walker.recovered
