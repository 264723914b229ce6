"""Source files as text: language detection and decoding.

``language_for(relpath)`` names the language by extension; ``decode_source``
turns bytes into normalised text (UTF-8, or UTF-16/32 with a byte order mark;
BOMs dropped, CRLF and lone CR -> LF, so line numbers never move) or raises
:class:`SkipFile` (binary, undecodable).
"""

from __future__ import annotations

import codecs
import re
from pathlib import PurePosixPath

class SkipFile(Exception):
    """File is not indexed.

    Attributes:
        reason: ``binary``, ``too_large``, ``decode_error``, or ``secret`` (a
            credential file by content, see ``secret_files.is_secret_content``).
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


def language_for(relpath: str) -> str:
    """Language id from the file name's extension (case-insensitive).

    Returns one of python, javascript, typescript, tsx, go, rust, java, c, cpp,
    or ``text`` for anything else. ``.h`` maps to c (split_file may refine it to cpp).
    """
    suffix = PurePosixPath(relpath.replace("\\", "/")).suffix.lower().lstrip(".")
    return _EXTENSIONS.get(suffix, "text")


# ----------------------------------------------------------------- decoding

# PEP 263: the cookie is on line 1, or on line 2 if line 1 is a comment or blank.
_COOKIE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
_BLANK_OR_COMMENT = re.compile(rb"^[ \t\f]*(?:#.*)?\r?$")


#: Byte order marks and their codecs, longest first: the UTF-32 LE mark begins
#: with the UTF-16 LE one, so UTF-32 must be tried before UTF-16.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def decode_source(data: bytes, language: str) -> str:
    """Bytes -> normalised text: BOM dropped, CRLF and lone CR -> LF, and any
    U+FEFF inside the text dropped (two BOM'd files concatenated), so no span
    carries one; none of these moves a line.

    A file starting with a byte order mark is decoded by it: UTF-8, UTF-16 LE/BE,
    UTF-32 LE/BE (C# and PowerShell sources made on Windows). Those encodings are
    full of NUL bytes, so the mark is read before the NUL check. Else UTF-8; for
    ``python`` a PEP 263 coding cookie as the fallback.

    Raises SkipFile("binary") if a NUL byte (or, after a BOM, a NUL character) is
    present, and SkipFile("decode_error") if the bytes cannot be decoded.
    """
    codec = next((name for bom, name in _BOMS if data.startswith(bom)), None)
    if codec is not None:
        text = _decode_by_bom(data, codec)
    else:
        nul_at = data.find(b"\x00")
        if nul_at >= 0:
            raise SkipFile("binary", f"NUL byte at offset {nul_at}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            text = _decode_by_cookie(data, language, exc)
    return text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")


def _decode_by_bom(data: bytes, codec: str) -> str:
    bom = next(mark for mark, name in _BOMS if name == codec)
    try:
        text = data[len(bom):].decode(codec)
    except UnicodeDecodeError as exc:
        raise SkipFile("decode_error", f"not {codec} after its byte order mark "
                                       f"({exc.reason} at byte {exc.start + len(bom)})") from exc
    nul_at = text.find("\x00")
    if nul_at >= 0:
        raise SkipFile("binary", f"NUL character at offset {nul_at} ({codec})")
    return text


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


def looks_like_cpp(text: str) -> bool:
    """Whether a ``.h`` file's text uses C++ (class, namespace, template, ``std::``, access labels)."""
    return _CPP_HEADER.search(text) is not None
