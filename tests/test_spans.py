"""Tests of llmc_rag_service.index.spans: decoding, language detection and file -> spans."""

from __future__ import annotations

import textwrap
import threading
from pathlib import Path

import pytest

from llmc_rag_service.index import syntax as syntax_module
from llmc_rag_service.models import Span, span_hash_of
from llmc_rag_service.index.spans import SkipFile, decode_source, language_for, split_file, split_source

CASES_COPY = Path(__file__).resolve().parent / "data" / "cases_files"
MAX = 1 << 20


def case_bytes(name: str) -> bytes:
    """A case file, from the byte-exact copy kept in tests/data/cases_files."""
    return (CASES_COPY / name).read_bytes()


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def outline(spans: list[Span]) -> list[tuple[str, str, int, int]]:
    return [(s.kind, s.name, s.start_line, s.end_line) for s in spans]


def by_name(spans: list[Span]) -> dict[str, Span]:
    return {s.name: s for s in spans}


def assert_exact_lines(text: str, spans: list[Span]) -> None:
    """Every non-class span's text is exactly its lines of the normalised text."""
    lines = text.split("\n")
    for span in spans:
        if span.kind != "class":
            assert span.text == "\n".join(lines[span.start_line - 1 : span.end_line]), span.name


# --------------------------------------------------------- shared case files


def test_latin1_file_is_decoded_by_its_coding_cookie() -> None:
    """latin1.py is decoded by its PEP 263 cookie and yields the one span `brew`."""
    spans = split_file("latin1.py", case_bytes("latin1.py"), max_file_bytes=MAX)
    assert [(s.kind, s.name) for s in spans] == [("function", "brew")]
    assert "café au lait" in spans[0].text


def test_bom_and_crlf_are_normalised_without_moving_lines() -> None:
    """bom_crlf.py gives alpha (1-2) and beta (5-6) with no BOM and no CR in any text."""
    spans = split_file("bom_crlf.py", case_bytes("bom_crlf.py"), max_file_bytes=MAX)
    assert outline(spans) == [("function", "alpha", 1, 2), ("function", "beta", 5, 6)]
    assert all("\ufeff" not in s.text and "\r" not in s.text for s in spans)
    assert spans[0].text == "def alpha():\n    return 1"


def test_mixed_line_endings_keep_one_based_line_numbers() -> None:
    """mixed_eol.py gives f0..f4 and g0..g4 at their true lines (f0 at 1, g0 at 16)."""
    spans = split_file("mixed_eol.py", case_bytes("mixed_eol.py"), max_file_bytes=MAX)
    expected = [("function", f"f{i}", 1 + 3 * i, 2 + 3 * i) for i in range(5)]
    expected += [("function", f"g{i}", 16 + 3 * i, 17 + 3 * i) for i in range(5)]
    assert outline(spans) == expected
    assert all("\r" not in s.text for s in spans)


def test_syntax_error_keeps_good_functions_and_flags_the_broken_region() -> None:
    """syntax_error.py gives functions one, two, four, five and an error span at 9-14."""
    data = case_bytes("syntax_error.py")
    spans = split_file("syntax_error.py", data, max_file_bytes=MAX)
    assert outline(spans) == [
        ("function", "one", 1, 2),
        ("function", "two", 5, 6),
        ("error", "lines 9-14", 9, 14),
        ("function", "four", 13, 14),
        ("function", "five", 17, 18),
    ]
    assert by_name(spans)["lines 9-14"].text.startswith("def three(:")
    assert_exact_lines(decode_source(data, "python"), spans)


def test_fixed_syntax_error_file_yields_five_functions() -> None:
    """Once `three` is fixed the file yields five function spans and no error span."""
    fixed = case_bytes("syntax_error.py").replace(b"def three(:", b"def three():")
    fixed = fixed.replace(b"return (3", b"return 3")
    spans = split_file("syntax_error.py", fixed, max_file_bytes=MAX)
    assert [(s.kind, s.name) for s in spans] == [
        ("function", n) for n in ("one", "two", "three", "four", "five")
    ]


def test_binary_blob_is_skipped_as_binary() -> None:
    """blob.bin (it holds NUL bytes) raises SkipFile with reason binary."""
    with pytest.raises(SkipFile) as info:
        split_file("blob.bin", case_bytes("blob.bin"), max_file_bytes=MAX)
    assert info.value.reason == "binary"


# ------------------------------------------------------------ decoding rules


def test_too_large_file_is_skipped_before_decoding() -> None:
    """A file over max_file_bytes raises SkipFile too_large; one at the limit is split."""
    data = b"def f():\n    return 1\n"
    with pytest.raises(SkipFile) as info:
        split_file("a.py", data, max_file_bytes=len(data) - 1)
    assert info.value.reason == "too_large"
    assert [s.name for s in split_file("a.py", data, max_file_bytes=len(data))] == ["f"]


@pytest.mark.parametrize("relpath", ["bad.py", "notes.txt"])
def test_invalid_utf8_without_cookie_is_a_decode_error(relpath: str) -> None:
    """Invalid UTF-8 with no coding cookie raises SkipFile decode_error (.py and .txt)."""
    with pytest.raises(SkipFile) as info:
        split_file(relpath, b"x = 'caf\xe9'\n", max_file_bytes=MAX)
    assert info.value.reason == "decode_error"


def test_coding_cookie_is_honoured_for_python_only() -> None:
    """A latin-1 cookie decodes a .py file but not a .js file."""
    data = b"#!/usr/bin/env python\n# vim: set fileencoding=latin-1 :\nx = '\xe9'\n"
    assert decode_source(data, "python").endswith("x = 'é'\n")
    with pytest.raises(SkipFile) as info:
        decode_source(data, "javascript")
    assert info.value.reason == "decode_error"


def test_unknown_coding_cookie_is_a_decode_error() -> None:
    """A cookie naming no codec raises SkipFile decode_error, not LookupError."""
    with pytest.raises(SkipFile) as info:
        decode_source(b"# coding: no-such-codec\nx = '\xe9'\n", "python")
    assert info.value.reason == "decode_error"


def test_lone_cr_and_crlf_become_lf() -> None:
    """CRLF and lone CR both become LF, so each old line ending stays one line."""
    assert decode_source(b"\xef\xbb\xbfa\rb\r\nc\n", "text") == "a\nb\nc\n"


def test_empty_and_whitespace_only_files_have_no_spans() -> None:
    """An empty or whitespace-only file yields no spans."""
    assert split_file("a.py", b"", max_file_bytes=MAX) == []
    assert split_file("a.txt", b"  \n\t\n\n", max_file_bytes=MAX) == []


@pytest.mark.parametrize(
    ("relpath", "language"),
    [("a/b.py", "python"), ("x.mjs", "javascript"), ("x.jsx", "javascript"),
     ("x.ts", "typescript"), ("X.TSX", "tsx"), ("main.go", "go"), ("lib.rs", "rust"),
     ("A.java", "java"), ("x.c", "c"), ("x.h", "c"), ("x.hpp", "cpp"), ("x.cc", "cpp"),
     ("README.md", "text"), ("Makefile", "text")],
)
def test_language_comes_from_the_extension(relpath: str, language: str) -> None:
    """The language id is chosen from the file extension, text for unknown ones."""
    assert language_for(relpath) == language


# ------------------------------------------------------------ per language

PYTHON = src('''
    import os

    CONST = 1


    @decorator
    def top(a):
        def inner():
            return a
        return inner()


    class Greeter(Base):
        """Says hello."""

        greeting = "hi"

        def __init__(self, name):
            self.name = name

        @property
        def hello(self):
            return f"{self.greeting} {self.name}"


    async def fetch():
        return await thing()
''')

JAVASCRIPT = src('''
    import x from "x";

    // Adds numbers.
    export function add(a, b) {
      return a + b;
    }

    const double = (n) => {
      return n * 2;
    };

    export class Counter {
      count = 0;

      increment() {
        this.count += 1;
      }

      reset = () => {
        this.count = 0;
      };
    }

    module.exports = { add };
''')

TYPESCRIPT = src('''
    export interface Shape {
      area(): number;
    }

    export namespace Geo {
      export function origin(): number {
        return 0;
      }
    }

    export class Square implements Shape {
      constructor(private side: number) {}

      area(): number {
        return this.side ** 2;
      }
    }
''')

TSX = src('''
    export function Hello(props: { name: string }) {
      return <div>Hello {props.name}</div>;
    }
''')

GO = src('''
    package shapes

    import "math"

    // Circle is round.
    type Circle struct {
        R float64
    }

    func (c *Circle) Area() float64 {
        return math.Pi * c.R * c.R
    }

    func New(r float64) Circle {
        return Circle{R: r}
    }
''')

RUST = src('''
    use std::fmt;

    #[derive(Debug)]
    pub struct Point {
        x: i32,
    }

    impl Point {
        pub fn new(x: i32) -> Self {
            Point { x }
        }
    }

    pub trait Shape {
        fn area(&self) -> f64;
    }

    fn main() {
        println!("{:?}", Point::new(1));
    }
''')

JAVA = src('''
    package demo;

    public class Account {
        private int balance;

        public Account(int start) {
            balance = start;
        }

        @Override
        public String toString() {
            return "Account";
        }
    }

    interface Named {
        String name();
    }
''')

C = src('''
    #include <stdio.h>

    struct point {
        int x;
    };

    static int *find(int *xs, int n) {
        return xs + n;
    }

    int main(void) {
        return 0;
    }
''')

CPP = src('''
    #include <string>

    namespace geo {

    class Shape {
     public:
      virtual double area() const {
        return 0;
      }
    };

    }  // namespace geo

    double geo::Shape::perimeter() const {
      return 1;
    }

    template <typename T>
    T twice(T v) {
      return v * 2;
    }
''')

LANGUAGE_CASES = {
    "python": ("m.py", PYTHON, [
        ("function", "top", 1, 10),
        ("class", "Greeter", 13, 23),
        ("method", "Greeter.__init__", 18, 19),
        ("method", "Greeter.hello", 21, 23),
        ("function", "fetch", 26, 27),
    ]),
    "javascript": ("m.js", JAVASCRIPT, [
        ("function", "add", 1, 6),
        ("function", "double", 8, 10),
        ("class", "Counter", 12, 24),
        ("method", "Counter.increment", 15, 17),
        ("method", "Counter.reset", 19, 21),
    ]),
    "typescript": ("m.ts", TYPESCRIPT, [
        ("class", "Shape", 1, 3),
        ("function", "Geo.origin", 5, 8),
        ("class", "Square", 11, 17),
        ("method", "Square.constructor", 12, 12),
        ("method", "Square.area", 14, 16),
    ]),
    "tsx": ("m.tsx", TSX, [("function", "Hello", 1, 3)]),
    "go": ("m.go", GO, [
        ("class", "Circle", 1, 8),
        ("method", "Circle.Area", 10, 12),
        ("function", "New", 14, 16),
    ]),
    "rust": ("m.rs", RUST, [
        ("class", "Point", 1, 6),
        ("class", "impl Point", 8, 12),
        ("method", "Point.new", 9, 11),
        ("class", "Shape", 14, 16),
        ("function", "main", 18, 20),
    ]),
    "java": ("Account.java", JAVA, [
        ("class", "Account", 1, 14),
        ("method", "Account.Account", 6, 8),
        ("method", "Account.toString", 10, 13),
        ("class", "Named", 16, 18),
    ]),
    "c": ("m.c", C, [
        ("class", "point", 1, 5),
        ("function", "find", 7, 9),
        ("function", "main", 11, 13),
    ]),
    "cpp": ("m.cpp", CPP, [
        ("class", "geo.Shape", 1, 10),
        ("method", "geo.Shape.area", 7, 9),
        ("method", "geo.Shape.perimeter", 12, 16),
        ("function", "twice", 18, 21),
    ]),
}


@pytest.mark.parametrize("language", sorted(LANGUAGE_CASES))
def test_definitions_get_kind_name_and_lines(language: str) -> None:
    """Each language's functions, classes and methods get the right kind, name and lines."""
    relpath, text, expected = LANGUAGE_CASES[language]
    spans = split_file(relpath, text.encode(), max_file_bytes=MAX)
    assert language_for(relpath) == language
    assert outline(spans) == expected
    assert all(s.language == language and s.span_hash == span_hash_of(language, s.text) for s in spans)
    assert_exact_lines(text, spans)


def test_nested_functions_stay_in_their_function() -> None:
    """A function defined inside a function is part of it, not a span of its own."""
    spans = by_name(split_source(PYTHON, "python"))
    assert "inner" not in spans and "top.inner" not in spans
    assert "def inner():" in spans["top"].text
    assert "\n@decorator\ndef top(a):\n" in spans["top"].text  # after the tiny head block it carries


# ------------------------------------------------------ class placeholders

EDITS = [
    ("python", "m.py", PYTHON, "self.name = name", "self.name = name\n        self.seen = 0",
     "Greeter.__init__"),
    ("javascript", "m.js", JAVASCRIPT, "this.count += 1;", "this.count += 2;\n    this.log();",
     "Counter.increment"),
    ("java", "Account.java", JAVA, "balance = start;", "balance = start * 2;", "Account.Account"),
    ("rust", "m.rs", RUST, "Point { x }", "Point { x: x + 0 }", "Point.new"),
    ("cpp", "m.cpp", CPP, "return 0;", "return 0.0;", "geo.Shape.area"),
]


@pytest.mark.parametrize(("language", "relpath", "text", "old", "new", "method"), EDITS,
                         ids=[e[0] for e in EDITS])
def test_editing_a_method_body_changes_only_that_methods_hash(
    language: str, relpath: str, text: str, old: str, new: str, method: str
) -> None:
    """Editing one method's body changes that method's hash only; the class hash stays."""
    assert text.count(old) == 1
    before = {s.span_hash: s.name for s in split_file(relpath, text.encode(), max_file_bytes=MAX)}
    edited = text.replace(old, new).encode()
    after = {s.span_hash: s.name for s in split_file(relpath, edited, max_file_bytes=MAX)}
    assert [name for h, name in before.items() if h not in after] == [method]
    assert [name for h, name in after.items() if h not in before] == [method]


def test_class_text_holds_signature_placeholders_not_method_bodies() -> None:
    """A class span covers the whole class, but each method is one `signature ...` line."""
    greeter = by_name(split_source(PYTHON, "python"))["Greeter"]
    assert greeter.text == src('''
        class Greeter(Base):
            """Says hello."""

            greeting = "hi"

            def __init__(self, name): ...

            def hello(self): ...
    ''').rstrip("\n")
    assert (greeter.start_line, greeter.end_line) == (13, 23)


def test_changing_a_method_signature_may_change_the_class_hash() -> None:
    """Renaming a method changes the class text, since the placeholder holds the signature."""
    before = by_name(split_source(PYTHON, "python"))["Greeter"]
    after = by_name(split_source(PYTHON.replace("def hello(self)", "def greet(self)"), "python"))
    assert "def greet(self): ..." in after["Greeter"].text
    assert after["Greeter"].span_hash != before.span_hash


def test_a_class_with_long_methods_is_not_split() -> None:
    """A class's own text stays small however long its methods are."""
    body = "".join(f"        total += {i}\n" for i in range(300))
    text = f"class Big:\n    def run(self):\n        total = 0\n{body}        return total\n"
    spans = by_name(split_source(text, "python", max_span_chars=2000))
    assert spans["Big"].text == "class Big:\n    def run(self): ..."
    assert (spans["Big"].start_line, spans["Big"].end_line) == (1, 304)
    assert len([name for name in spans if name.startswith("Big.run (part ")]) > 1


# ----------------------------------------------------------- size caps


def test_over_long_function_is_split_into_parts_on_line_boundaries() -> None:
    """A function over max_span_chars becomes consecutive `(part i/n)` spans, nothing lost."""
    body = "".join(f"    x{i} = {i}  # padding padding padding\n" for i in range(200))
    text = "import os\n\ndef big():\n" + body + "    return 0\n"
    parts = [s for s in split_source(text, "python", max_span_chars=1000) if s.kind == "function"]
    count = len(parts)
    assert count > 1
    assert [s.name for s in parts] == [f"big (part {i}/{count})" for i in range(1, count + 1)]
    assert all(len(s.text) <= 1000 for s in parts)
    assert (parts[0].start_line, parts[-1].end_line) == (1, 204)  # the import joined the function
    assert all(b.start_line == a.end_line + 1 for a, b in zip(parts, parts[1:]))
    assert "\n".join(s.text for s in parts) == "\n".join(text.split("\n")[0:204])
    assert_exact_lines(text, parts)


def test_a_single_over_long_line_is_cut_into_pieces() -> None:
    """One line longer than max_span_chars is cut into pieces that keep its line number."""
    text = "a" * 2500 + "\ntail\n"
    parts = split_source(text, "text", max_span_chars=1000)
    assert outline(parts) == [
        ("window", "lines 1-2 (part 1/3)", 1, 1),
        ("window", "lines 1-2 (part 2/3)", 1, 1),
        ("window", "lines 1-2 (part 3/3)", 1, 2),
    ]
    assert "".join(s.text for s in parts) == text.rstrip("\n")


# ------------------------------------------- blocks, windows, fallbacks


def test_module_level_code_becomes_blocks_and_comments_join_definitions() -> None:
    """Code between definitions is one block per gap; a comment right above a def joins it; a tiny
    block (here the docstring and import) joins the definition after it."""
    text = src('''
        """Module doc."""
        import os

        # Comment above f.
        def f():
            return 1

        X = 1


        Y = 2
        # trailing
    ''')
    spans = split_source(text, "python")
    assert outline(spans) == [
        ("function", "f", 1, 6),
        ("block", "lines 8-12", 8, 12),
    ]
    assert_exact_lines(text, spans)


def test_text_files_become_line_windows_skipping_blank_ones() -> None:
    """A text file is cut into window_lines-line windows; whitespace-only windows are skipped."""
    lines = [f"line {i}" for i in range(1, 61)] + [""] * 60 + [f"end {i}" for i in range(10)]
    text = "\n".join(lines) + "\n"
    spans = split_file("notes.txt", text.encode(), max_file_bytes=MAX)
    assert outline(spans) == [("window", "lines 1-60", 1, 60), ("window", "lines 121-130", 121, 130)]
    assert_exact_lines(text, spans)


def test_a_failing_parser_falls_back_to_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the grammar cannot be loaded the file is still cut, into line windows."""
    def broken(language: str) -> None:
        raise ImportError(f"no grammar for {language}")

    monkeypatch.setattr(syntax_module, "_parser_for", broken)
    spans = split_source(PYTHON, "python", window_lines=20)
    assert outline(spans) == [("window", "lines 1-20", 1, 20), ("window", "lines 21-27", 21, 27)]


def test_javascript_syntax_error_keeps_the_rest_of_the_file() -> None:
    """A broken JS function becomes an error span; the functions around it stay."""
    text = src('''
        function good() {
          return 1;
        }

        function broken( {
          return 2;
        }

        function after() {
          return 3;
        }
    ''')
    spans = split_source(text, "javascript")
    assert outline(spans) == [
        ("function", "good", 1, 3),
        ("error", "lines 5-11", 5, 11),
        ("function", "after", 9, 11),
    ]
    assert_exact_lines(text, spans)


@pytest.mark.timeout(30)
def test_spans_are_the_same_when_computed_from_many_threads() -> None:
    """Concurrent splitting (one parser per thread) gives the same spans as serial splitting."""
    cases = [(text, language) for language, (_, text, _) in sorted(LANGUAGE_CASES.items())]
    serial = [split_source(text, language) for text, language in cases]
    start = threading.Barrier(6)
    results: list[list[list[Span]]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            start.wait(timeout=10)
            for _ in range(10):
                results.append([split_source(text, language) for text, language in cases])
        except BaseException as exc:  # reported by the asserting thread below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(results) == 60 and all(result == serial for result in results)


def test_header_with_cpp_syntax_is_split_as_cpp() -> None:
    """A .h file is C, unless its text looks like C++ (here a class), then it is cpp."""
    c_header = b"int add(int a, int b) {\n  return a + b;\n}\n"
    cpp_header = b"class Box {\n public:\n  int size() const {\n    return 1;\n  }\n};\n"
    assert [(s.language, s.kind) for s in split_file("a.h", c_header, max_file_bytes=MAX)] == [
        ("c", "function")]
    assert outline(split_file("b.h", cpp_header, max_file_bytes=MAX)) == [
        ("class", "Box", 1, 6), ("method", "Box.size", 3, 5)]


def test_unicode_line_separators_do_not_shift_line_numbers() -> None:
    """Only \\n ends a line: U+2028, NEL and form feed inside code keep later lines in place."""
    text = 's = "a\u2028b\x85c\x0cd"\n\ndef f():\n    return "\u00e9\u2028"\n'
    spans = split_source(text, "python")
    assert outline(spans) == [("function", "f", 1, 4)]
    assert_exact_lines(text, spans)


def test_one_line_methods_get_placeholders_without_their_bodies() -> None:
    """A method written on one line is cut before its body in the class placeholder."""
    text = 'class K {\n  m() { return "\u00e9\u00e9"; }\n  n() { return 2; }\n}\n'
    spans = split_source(text, "javascript")
    assert spans[0].text == "class K {\n  m() ...\n  n() ...\n}"
    assert outline(spans) == [("class", "K", 1, 4), ("method", "K.m", 2, 2), ("method", "K.n", 3, 3)]


# ------------------------------------------------------------ tiny blocks

TINY = src('''
    import os


    def f():
        return 1

    X = 1

    def g():
        return 2

    # the end
''')


def test_tiny_blocks_join_the_next_definition_or_the_last_one():
    """A block of at most 2 non-blank lines joins the definition after it; at the end, the one before it."""
    spans = split_source(TINY, "python")
    assert outline(spans) == [("function", "f", 1, 5), ("function", "g", 7, 12)]
    assert spans[1].text == "X = 1\n\ndef g():\n    return 2\n\n# the end"
    assert_exact_lines(TINY, spans)


def test_a_block_of_three_lines_or_a_file_without_definitions_keeps_its_block():
    """Three non-blank lines are worth a span of their own; so is the only code of a file."""
    three = "import os\nimport re\nimport sys\n\ndef f():\n    return 1\n"
    assert outline(split_source(three, "python")) == [("block", "lines 1-3", 1, 3), ("function", "f", 5, 6)]
    assert outline(split_source("VERSION = 1\n", "python")) == [("block", "lines 1-1", 1, 1)]


def test_editing_one_function_still_changes_that_span_only():
    """With tiny blocks joined, an edit of g (or of the tiny block it carries) changes g's hash alone."""
    before = {s.name: s.span_hash for s in split_source(TINY, "python")}
    for edit in (TINY.replace("return 2", "return 3"), TINY.replace("X = 1", "X = 2")):
        after = {s.name: s.span_hash for s in split_source(edit, "python")}
        assert after["f"] == before["f"] and after["g"] != before["g"]
    after = {s.name: s.span_hash for s in split_source(TINY.replace("return 1", "return 0"), "python")}
    assert after["g"] == before["g"] and after["f"] != before["f"]
