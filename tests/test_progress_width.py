"""enrich's progress bar fits the terminal: its status text is cut at a word boundary with an ellipsis."""

from __future__ import annotations

import io

import pytest

from llmc_rag_service.service.progress import Lane, Progress, fit_words

STATUS = ("waiting: ollama unreachable at http://127.0.0.1:11434: connection refused; retry in 20 s; "
          "embeddings waiting: unreachable (connection refused); 40 pending")
LANES = [Lane("enriched", 14, 40), Lane("embedded", 0, 40)]


class _Tty(io.StringIO):
    def __init__(self, encoding: str | None = None):
        super().__init__()
        self._encoding = encoding

    @property
    def encoding(self):  # type: ignore[override]
        return self._encoding

    def isatty(self) -> bool:
        return True


def _whole_words_of(original: str, shown: str, ellipsis: str = "…") -> bool:
    """``shown`` is ``original`` cut right before a space (then ';,:' dropped), plus the ellipsis."""
    assert shown.endswith(ellipsis), shown
    kept = shown[: -len(ellipsis)]
    rest = original[len(kept):]
    return original.startswith(kept) and (kept == "" or rest == "" or rest[0] in " ;,:")


def test_a_long_status_is_cut_after_a_whole_word_with_an_ellipsis():
    """At 110 columns the bar is at most 109 characters and its status ends on a whole word, then '…'."""
    bar = Progress(_Tty(), clock=lambda: 0.0, width=110)
    text = bar.text(LANES, STATUS)
    head = text[: text.index("waiting:")]
    assert len(text) <= 109 and text.endswith("…")
    assert _whole_words_of(STATUS, text[len(head):])


@pytest.mark.parametrize("width", range(30, 240, 7))
def test_at_every_width_no_word_or_number_is_cut(width):
    """Whatever the terminal's width, the bar shows a run of whole words of its full text (the counts,
    the URL and '20' are never cut short), or the full text when it fits."""
    full = Progress(_Tty(), clock=lambda: 0.0, width=1000).text(LANES, STATUS)
    text = Progress(_Tty(), clock=lambda: 0.0, width=width).text(LANES, STATUS)
    assert len(text) <= width - 1
    assert text == full or _whole_words_of(full, text)


def test_a_narrow_terminal_cuts_the_counts_at_a_word_boundary_too():
    """Narrower than the counts themselves: the head is cut between words, never inside '14/40'."""
    text = Progress(_Tty(), clock=lambda: 0.0, width=40).text(LANES, STATUS)
    assert len(text) <= 39 and text.endswith("14/40 enriched…")


def test_fit_words_edges():
    """Fits: unchanged; a first word too long: just the ellipsis; no room at all: nothing."""
    assert fit_words("idle", 4) == "idle"
    assert fit_words("unreachable at x", 5) == "…"
    assert fit_words("retry in 20 s", 10) == "retry in…"
    assert fit_words("a; b", 3) == "a…"
    assert fit_words("abc", 0) == ""


def test_a_terminal_without_utf8_gets_three_dots():
    """An ISO-8859-1 terminal cannot show '…': the bar ends in '...' instead."""
    text = Progress(_Tty("iso-8859-1"), clock=lambda: 0.0, width=110).text(LANES, STATUS)
    assert text.endswith("...") and "…" not in text and len(text) <= 109
