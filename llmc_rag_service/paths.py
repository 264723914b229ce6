"""A path a person or an agent typed -> an absolute path, without ever raising.

``show PATH``, ``search --repo``, ``enrich DIR``, MCP ``get_span`` and the
config all take paths from outside: relative to the working directory,
``~``/``~user``, through symlinked directories, or names no file can have (a
NUL byte, a component over ``NAME_MAX``, an unknown ``~user``, a symlink
loop). ``pathlib``'s own ``resolve()``/``expanduser()`` raise ``RuntimeError``
or ``ValueError`` on the last three; here each is simply "no such path", so a
caller says so in one line instead of printing a traceback. The other way:
:func:`shown_path`, how plain ``search`` and ``show`` print a file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def expand_user(text: str) -> str | None:
    """``text`` with a leading ``~`` or ``~user`` expanded (``os.path.expanduser``);
    None when it names a user without a home (``~nosuchuser/x``), which would
    otherwise stay a relative path starting with ``~``."""
    expanded = os.path.expanduser(text)
    return None if expanded.startswith("~") else expanded


def real_path(text: str, follow_last: bool = True) -> Path | None:
    """The absolute, symlink-free path of ``text`` (absolute, relative to the
    working directory, or starting with ``~``), or None if no file can have
    this name (NUL byte, unknown ``~user``, working directory deleted).

    With ``follow_last=False`` the last component is kept as named when it is
    a symlink (the directories above it are still resolved): the scanner never
    follows a symlink, so ``link.py`` is its own name, not its target's. A name
    too long or a symlink loop is returned as far as it resolves (it then
    matches no stored file), as ``os.path.realpath`` does.
    """
    if "\x00" in text:
        return None
    expanded = expand_user(text)
    if expanded is None:
        return None
    try:
        # Joined, not abspath(): "link/.." must go where the kernel goes, not be cut lexically.
        # An absolute path needs no working directory (which may have been deleted).
        full = expanded if os.path.isabs(expanded) else os.path.join(os.getcwd(), expanded)
    except OSError:  # the working directory was deleted
        return None
    head, name = os.path.split(full)
    if follow_last or name in ("", ".", ".."):
        return Path(os.path.realpath(full))
    return Path(os.path.realpath(head)) / name


#: C0 and C1 control characters, DEL, and lone surrogates (undecodable bytes of a name).
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable_name(name: str) -> str:
    """``name`` safe to print on a terminal: each control character (a newline, an
    ESC starting a terminal sequence a hostile file name could carry, or a model
    echoed) or undecodable byte as a ``\\n``/``\\x1b``/``\\udcNN`` escape, so one name is one line and changes nothing
    but its own text."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), name)


def working_dir() -> Path | None:
    """The working directory, or None when it was deleted (``os.getcwd`` then raises)."""
    try:
        return Path(os.getcwd())
    except OSError:
        return None


def shown_path(full: Path, cwd: Path | None) -> str:
    """How plain ``search`` and ``show`` print the file ``full`` (absolute): relative
    to ``cwd`` when under it, else absolute, so it can be pasted into a shell or an
    editor from there; escaped by :func:`printable_name`. Absolute too with no
    working directory (``cwd`` None: deleted) or ``/`` (``tmp/x.py`` reads as a typo)."""
    under = cwd is not None and cwd != Path(cwd.anchor) and full.is_relative_to(cwd)
    return printable_name(os.path.relpath(full, cwd) if under else str(full))
