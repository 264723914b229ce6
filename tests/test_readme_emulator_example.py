"""The README's "Testing your own integration with the emulator" example runs as written."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import structlog

from llmc_rag_service.cli import main
from llmc_rag_service.testing.emulator import main as emulator_main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_example_enriches_one_span_through_the_emulator(tmp_path, capsys):
    """The snippet, with its `...` replaced by a real `llmc-rag enrich`, sends exactly one chat request."""
    text = README.read_text()
    section = text[text.index("### Testing your own integration with the emulator"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "..." in code
    code = code.replace("...  #", "assert main(['enrich', '-c', str(tmp / 'config.yaml')]) == 0  #")
    exec(compile(code, "README.md", "exec"), {"tmp": tmp_path, "main": main})


def test_the_emulator_program_on_a_taken_port_says_so_in_one_line(capsys):
    """`python -m llmc_rag_service.testing --port P` while something listens on P: one line naming the
    port and what to do, exit 1, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        saved = structlog.get_config()  # the program configures logging for its own process
        try:
            assert emulator_main(["--port", str(port)]) == 1
        finally:
            structlog.configure(**saved)
    err = capsys.readouterr().err
    assert err == f"ollama emulator: cannot listen on 127.0.0.1:{port}: Address already in use; pick another --port\n"
