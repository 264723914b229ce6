"""``llmc-rag mcp`` end to end: the official SDK's own client talks to the server over real stdio.

The store is built by a real ``llmc-rag enrich`` against the emulator; the server is a
subprocess (``python -m llmc_rag_service mcp -c CONFIG``) reading it read-only.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from llmc_rag_service.cli import main
from llmc_rag_service.testing import OllamaEmulator
from llmc_rag_service.testing.repos import make_config, write_tree

SOURCE = {
    "src/retry.py": (
        "def backoff_delay(attempt, base_s=1.0):\n"
        "    \"\"\"Jittered exponential backoff.\"\"\"\n"
        "    return base_s * 2 ** attempt\n\n\n"
        "class ConfigParser:\n"
        "    def parse_config_file(self, path):\n"
        "        return open(path).read()\n"
    ),
    "src/net.py": "def open_socket(host, port):\n    return (host, port)\n",
}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A repo enriched once; yields its config file path and repo root."""
    tmp = tmp_path_factory.mktemp("mcp")
    repo = tmp / "repo"
    write_tree(repo, SOURCE)
    with OllamaEmulator(["test-model"], latency_s=0.0) as emu:
        make_config(tmp, emu.url, [repo], logging={"level": "warning"})
        assert main(["enrich", "-c", str(tmp / "config.yaml"), "--wait-s", "5"]) == 0
    return tmp / "config.yaml", repo


def _session(config_path: Path):
    # Imported here, not at the top: the SDK takes most of a second to import, which every parallel
    # worker would pay while collecting, though only the one running these tests needs it.
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "llmc_rag_service", "mcp", "-c", str(config_path)])
    return Client(params, read_timeout_seconds=30)


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def _payload(result) -> dict:
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


@pytest.mark.timeout(90)
def test_tools_are_listed_with_bounded_input_schemas(indexed):
    """The server lists search_code, get_span and index_status; limit is bounded 1-50; descriptions guide the agent."""
    async def go():
        async with _session(indexed[0]) as client:
            return (await client.list_tools()).tools
    tools = {t.name: t for t in _run(go())}
    assert set(tools) == {"search_code", "get_span", "index_status"}
    limit = tools["search_code"].input_schema["properties"]["limit"]
    assert (limit["minimum"], limit["maximum"]) == (1, 50)
    assert "grep" in tools["search_code"].description
    assert tools["get_span"].input_schema["required"] == ["path", "line"]


@pytest.mark.timeout(90)
def test_each_tool_answers_and_bad_arguments_are_tool_errors(indexed):
    """get_span returns code + enrichment, index_status the counts, search_code ranked hits; bad input is isError."""
    config_path, repo = indexed

    async def go():
        async with _session(config_path) as client:
            span = await client.call_tool("get_span", {"path": "src/retry.py", "line": 7})
            absolute = await client.call_tool("get_span", {"path": str(repo / "src/net.py"), "line": 1})
            status = await client.call_tool("index_status", {})
            found = await client.call_tool("search_code", {"query": "parse config", "limit": 5})
            with_code = await client.call_tool("search_code", {"query": "socket", "include_code": True})
            errors = [await client.call_tool("get_span", {"path": "src/nope.py", "line": 1}),
                      await client.call_tool("get_span", {"path": "src/retry.py", "line": 999}),
                      await client.call_tool("search_code", {"query": "x", "limit": 0}),
                      await client.call_tool("search_code", {"query": "x", "language": "cobol"})]
            alive = await client.call_tool("index_status", {})
            return span, absolute, status, found, with_code, errors, alive

    span, absolute, status, found, with_code, errors, alive = _run(go())
    s = _payload(span)
    assert s["name"] == "ConfigParser.parse_config_file" or s["name"].endswith("parse_config_file")
    assert "return open(path).read()" in s["text"] and s["fresh"] is True
    assert s["state"] == "enriched" and s["enrichment"]["summary"]
    assert _payload(absolute)["name"] == "open_socket"
    totals = _payload(status)["totals"]
    assert totals["spans"] >= 4 and totals["enriched"] == totals["spans"]
    hits = _payload(found)["hits"]
    assert hits and hits[0]["name"].endswith("parse_config_file")
    assert {"path", "lines", "kind", "name", "summary", "fresh"} <= set(hits[0])
    assert "code" not in hits[0]
    assert "return (host, port)" in _payload(with_code)["hits"][0]["code"]
    assert all(e.is_error for e in errors)
    assert "not indexed" in errors[0].content[0].text and "no span covers" in errors[1].content[0].text
    assert not alive.is_error  # the server survived every bad call


#: A relative path out of the repo root (built, so no file of the clone spells a climb above it).
UP_TWICE = "/".join(["..", "..", "etc", "passwd"])


@pytest.mark.timeout(90)
def test_get_span_paths_no_file_can_have_are_tool_errors_that_say_why(indexed, capfd):
    """A NUL byte, a name over NAME_MAX, a symlink loop, `..` out of the repo: each a tool error
    naming the path (not a bare 'Error executing tool' with a traceback on stderr); `sub/../x` works."""
    config_path, repo = indexed
    (repo / "loop1").symlink_to("loop2")
    (repo / "loop2").symlink_to("loop1")

    async def go():
        async with _session(config_path) as client:
            calls = [{"path": str(repo / "src/net.py") + "\x00", "line": 1}, {"path": "x" * 300, "line": 1},
                     {"path": str(repo / "loop1/x.py"), "line": 1}, {"path": UP_TWICE, "line": 1},
                     {"path": "~nosuchuser-llmc/x.py", "line": 1}]
            errors = [await client.call_tool("get_span", args) for args in calls]
            dotted = await client.call_tool("get_span", {"path": "src/../src/net.py", "line": 1})
            return errors, dotted

    try:
        errors, dotted = _run(go())
    finally:
        (repo / "loop1").unlink()
        (repo / "loop2").unlink()
    texts = [e.content[0].text for e in errors]
    assert all(e.is_error for e in errors), texts
    assert "not inside a configured repository" in texts[0] and "x" * 300 in texts[1]
    assert "loop1/x.py: not indexed" in texts[2] and f"{UP_TWICE}: outside every configured" in texts[3]
    assert "~nosuchuser-llmc/x.py: not inside a configured repository" in texts[4]
    assert _payload(dotted)["name"] == "open_socket"
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.timeout(90)
def test_an_unusable_store_is_a_tool_error_naming_it(tmp_path, capfd):
    """A corrupt store makes each tool answer a tool error that names the store and says what to do,
    not 'Error executing tool' with a traceback on the server's stderr; the server stays up."""
    repo = tmp_path / "repo"
    write_tree(repo, {"a.py": "def f():\n    pass\n"})
    config = make_config(tmp_path, "http://127.0.0.1:9", [repo], logging={"level": "warning"})
    config.db_path.parent.mkdir(parents=True, exist_ok=True)
    config.db_path.write_bytes(b"SQLite format 3\x00" + b"\x5a" * 8192)

    async def go():
        async with _session(config.source) as client:
            return [await client.call_tool("search_code", {"query": "f"}),
                    await client.call_tool("get_span", {"path": "a.py", "line": 1}),
                    await client.call_tool("index_status", {})]

    results = _run(go())
    assert all(r.is_error for r in results)
    for r in results:
        assert f"the index store cannot be used: {config.db_path}" in r.content[0].text
    assert "Traceback" not in capfd.readouterr().err
