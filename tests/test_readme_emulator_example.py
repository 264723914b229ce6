"""The README's "Testing your own integration with the emulator" example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from llmc_rag_service.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_example_enriches_one_span_through_the_emulator(tmp_path, capsys):
    """The snippet, with its `...` replaced by a real `llmc-rag enrich`, sends exactly one chat request."""
    text = README.read_text()
    section = text[text.index("### Testing your own integration with the emulator"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "..." in code
    code = code.replace("...  #", "assert main(['enrich', '-c', str(tmp / 'config.yaml')]) == 0  #")
    exec(compile(code, "README.md", "exec"), {"tmp": tmp_path, "main": main})
