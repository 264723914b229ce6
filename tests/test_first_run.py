"""What a new user meets: progress, a missing model, show's explanations, honest exits, hints."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from llmc_rag_service import cli
from llmc_rag_service.config import load_config
from llmc_rag_service.enrich.prompt import min_num_ctx
from llmc_rag_service.service.progress import Lane, Progress, format_eta
from llmc_rag_service.service.status import status_report
from llmc_rag_service.testing.emulator import OllamaEmulator
from tests.helpers import make_config, write_tree

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    write_tree(root, {"a.py": "def f(x):\n    return x\n\n\n\n\ndef g(y):\n    return y\n",
                      "blob.bin": b"\x00\x01\x02", ".env": "TOKEN=x\n", ".gitignore": "gen/\n",
                      "gen/out.py": "def gen():\n    pass\n", "big.py": "x = 1\n" * 200})
    return root


def run(config, *args) -> int:
    return cli.main([args[0], "-c", str(config.source), *args[1:]])


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- progress ---------------------------------------------------------------------------------

def test_progress_shows_rate_and_eta_from_the_clock():
    """10 spans enriched in 5 s of 40: 2.0 spans/s and 0:15 left on the bar; the embedding lane,
    not started, adds nothing to the ETA yet."""
    now = [100.0]
    bar = Progress(_Tty(), clock=lambda: now[0], width=200)
    bar.update([Lane("enriched", 0, 40), Lane("embedded", 0, 40)], "starting")
    now[0] += 5
    bar.update([Lane("enriched", 10, 40), Lane("embedded", 0, 40)], "enriching")
    assert "] 10/40 enriched  0/40 embedded  2.0 spans/s  ETA 0:15  enriching" in bar.stream.getvalue()
    assert (format_eta(None), format_eta(3725)) == ("--:--", "1:02:05")


def test_the_eta_adds_each_lanes_spans_left_over_its_own_rate():
    """Enrichment at 2 spans/s with 36 left, embedding at 16 spans/s with 8 left: 18 s + 0.5 s, the
    rate shown is the current lane's (enrichment's); once enrichment is done, embedding's."""
    now = [0.0]
    bar = Progress(_Tty(), clock=lambda: now[0], width=200)
    bar.update([Lane("enriched", 0, 40), Lane("embedded", 0, 40)], "")
    now[0] += 2
    assert bar.rate_and_eta([Lane("enriched", 4, 40), Lane("embedded", 32, 40)]) == (2.0, 18.5)
    done = Progress(_Tty(), clock=lambda: now[0], width=200)
    done.update([Lane("enriched", 40, 40), Lane("embedded", 0, 40)], "")
    now[0] += 2
    assert done.rate_and_eta([Lane("enriched", 40, 40), Lane("embedded", 32, 40)]) == (16.0, 0.5)


def test_off_a_terminal_progress_is_a_log_event_every_10_s_not_a_text_line():
    """A pipe or file gets enrich_progress events in the log's format (one per 10 s from the start, none
    for the final state: the summary says it), never a bar or a bare text line among the log lines."""
    now = [0.0]
    plain = Progress(io.StringIO(), clock=lambda: now[0])
    with capture_logs() as logs:
        plain.update([Lane("enriched", 0, 40), Lane("embedded", 0, 40)], "starting")  # nothing known yet
        now[0] += 5
        plain.update([Lane("enriched", 10, 40), Lane("embedded", 0, 40)], "enriching")  # within 10 s: nothing
        now[0] += 5
        plain.update([Lane("enriched", 20, 40), Lane("embedded", 0, 40)], "enriching")
        now[0] += 5
        plain.update([Lane("enriched", 30, 40), Lane("embedded", 0, 40)], "enriching")  # 5 s after the last
        now[0] += 5
        plain.update([Lane("enriched", 40, 40), Lane("embedded", 40, 40)], "idle", final=True)
    assert plain.stream.getvalue() == ""
    assert [e["event"] for e in logs] == ["enrich_progress"]
    assert logs[0]["log_level"] == "info" and {k: logs[0][k] for k in (
        "enriched", "enriched_total", "embedded", "embedded_total", "rate_per_s", "eta_s", "status")} == {
        "enriched": 20, "enriched_total": 40, "embedded": 0, "embedded_total": 40, "rate_per_s": 2.0,
        "eta_s": 10, "status": "enriching"}


def test_a_log_line_is_written_above_the_bar_never_into_it():
    """A record written while the bar shows erases the bar, takes its own line, and the bar is drawn again."""
    bar = Progress(_Tty(), clock=lambda: 0.0, width=200)
    lanes = [Lane("enriched", 1, 4)]
    bar.update(lanes, "working")
    bar.log_stream().write("job_retry something\n")
    out = bar.stream.getvalue()
    assert out.endswith("\r\x1b[Kjob_retry something\n" + bar.text(lanes, "working"))


def test_leaving_the_bar_early_ends_its_line_before_anything_else_is_written(monkeypatch):
    """Ctrl-C (or an error) inside logs_above: the bar's line is ended, so the records logged after it
    (the stop's job_done lines) do not run on at the end of the bar."""
    from llmc_rag_service import logs

    monkeypatch.setattr(logs, "configure_logging", lambda *args, **kwargs: None)  # this process's logging stays
    bar = Progress(_Tty(), clock=lambda: 0.0, width=200)
    with pytest.raises(KeyboardInterrupt), bar.logs_above("info", "console"):
        bar.update([Lane("enriched", 1, 4)], "working")
        raise KeyboardInterrupt
    assert bar.stream.getvalue().endswith(bar.text([Lane("enriched", 1, 4)], "working") + "\n")


def test_after_the_bar_info_records_stay_hidden_until_the_process_ends():
    """Ctrl-C inside logs_above: the records the stop logs after the bar is gone (the in-flight jobs'
    job_done) stay hidden as under the bar; a warning still shows."""
    import structlog

    from llmc_rag_service import logs

    bar = Progress(_Tty(), clock=lambda: 0.0, width=200)
    log = structlog.get_logger("tests.first_run")
    try:
        with pytest.raises(KeyboardInterrupt), bar.logs_above("info", "console"):
            bar.update([Lane("enriched", 1, 4)], "working")
            raise KeyboardInterrupt
        log.info("job_done", span="a.py:1-2")
        log.warning("job_retry", span="b.py:1-2")
    finally:
        logs.reset_logging()
    out = bar.stream.getvalue()
    assert "job_retry" in out and "job_done" not in out


def test_the_bar_counts_failed_spans_apart_and_not_as_left():
    """37 of 40 enriched and 3 failed for good: the bar says so, is full, and nothing is left (ETA 0:00)."""
    now = [0.0]
    bar = Progress(_Tty(), clock=lambda: now[0], width=200)
    bar.update([Lane("enriched", 30, 40, 3)], "")
    now[0] += 2
    text = bar.text([Lane("enriched", 37, 40, 3)], "idle")
    assert text.startswith("[####################] 37/40 enriched (3 failed)  3.5 spans/s  ETA 0:00"), text


@pytest.mark.timeout(60)
def test_the_bar_counts_spans_as_the_summary_does_with_a_total_that_never_moves(tmp_path, ollama):
    """Spans of identical content share one enrichment (one job): the bar still counts spans, as the
    closing summary and status do; every bar drawn has all the spans the scan found as its total, and
    the last one is full."""
    from llmc_rag_service import logs
    from llmc_rag_service.service.oneshot import Outcome, run_enrich

    repo = tmp_path / "repo"
    same = "def same(x):\n    return x + 1\n"
    write_tree(repo, {**{f"d{i}.py": same for i in range(12)},
                      **{f"u{i}.py": f"def u{i}(x):\n    return x * {i}\n" for i in range(6)}})
    ollama.install_embed("nomic-embed-text")
    config = make_config(tmp_path, ollama.url, [repo], search={"embed_model": "nomic-embed-text"},
                         logging={"level": "error", "format": "console"})
    stream = _Tty()
    try:
        assert run_enrich(config, stream=stream) is Outcome.DONE
    finally:
        logs.reset_logging()
    spans = status_report(config)["totals"]["spans"]
    chats = [r for r in ollama.requests if r.path == "/api/chat"]
    assert spans >= 18 and len(chats) < spans  # fewer jobs than spans
    bars = re.findall(r"\] (\d+)/(\d+) enriched  (\d+)/(\d+) embedded", stream.getvalue())
    assert bars and {(int(b[1]), int(b[3])) for b in bars} == {(spans, spans)}, bars
    assert bars[-1] == (str(spans),) * 4
    assert f"enrich: {spans}/{spans} spans enriched, {spans} embedded" in stream.getvalue()


def _screen(raw: str) -> list[str]:
    """What a terminal shows for ``raw``: \\r returns to column 0, ESC[K erases the rest of the line."""
    raw = re.sub(r"\x1b\[[0-9;]*m", "", raw)  # colours
    lines, line, col = [], [], 0
    for part in re.split(r"(\r|\n|\x1b\[K)", raw):
        if part == "\r":
            col = 0
        elif part == "\n":
            lines.append("".join(line).rstrip())
            line, col = [], 0
        elif part == "\x1b[K":
            del line[col:]
        else:
            line[col:col + len(part)] = list(part)
            col += len(part)
    if line:
        lines.append("".join(line).rstrip())
    return lines


def _readme_try_it_config(tmp_path: Path, repo: Path, url: str) -> Path:
    """The README's try-it config (its printf line), with this test's paths and emulator."""
    text = (ROOT / "README.md").read_text()
    (line,) = [x for x in text.splitlines() if x.startswith("printf 'state_dir: /tmp/my-state")]
    body = shlex.split(line)[1].encode().decode("unicode_escape")
    body = body.replace("/tmp/my-state", str(tmp_path / "state")).replace("/path/to/your/repo", str(repo))
    body = body.replace("http://127.0.0.1:11434", url).replace("demo-model", "test-model")
    path = tmp_path / "my.yaml"
    path.write_text(body)
    return path


@pytest.mark.timeout(60)
def test_enrich_on_a_terminal_shows_one_bar_and_only_warnings_above_it(tmp_path, ollama):
    """The README's try-it config on a terminal (a pty): a bar with rate and ETA, no line per job, and a
    warning (a retried bad answer) on its own line above the bar."""
    repo = tmp_path / "repo"
    write_tree(repo, {f"m{i}.py": f"def f{i}(x):\n    return x * {i}\n" for i in range(40)})
    config = _readme_try_it_config(tmp_path, repo, ollama.url)
    ollama.install_embed("nomic-embed-text")  # as the README's emulator program does
    ollama.inject("invalid_json", count=1)
    primary, secondary = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "llmc_rag_service", "enrich", "-c", str(config)],
                                stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary,
                                env={**os.environ, "COLUMNS": "160", "TERM": "xterm"})
        os.close(secondary)
        chunks = []
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(30) == 0
    finally:
        os.close(primary)
    raw = b"".join(chunks).decode("utf-8", "replace")
    screen = [line for line in _screen(raw) if line]
    assert any("/40 enriched" in line and "spans/s" in line and "ETA" in line for line in screen), screen
    assert "job_done" not in raw  # the bar counts spans; no line per job
    retry = [line for line in screen if "job_retry" in line]
    assert len(retry) == 1 and not retry[0].startswith("[") and "spans/s" not in retry[0]
    assert len(screen) <= 5, screen
    assert screen[-1].startswith("enrich: 40/40 spans enriched")


# -- a missing model, at once ----------------------------------------------------------------

def test_a_missing_model_is_said_at_once_with_what_the_server_has(tmp_path, repo, capsys):
    """Before any waiting (and before any chat request) enrich names the models the server has and the pull;
    off a terminal as an error log record (preflight_model_missing), like every line before the summary."""
    with OllamaEmulator(["qwen2.5:7b", "nomic-embed-text"]) as emu:
        config = make_config(tmp_path, emu.url, [repo], logging={"level": "error"})
        assert run(config, "enrich", "--wait-s", "0.5") == 69
        paths = [r.path for r in emu.requests]
    err = capsys.readouterr().err
    records = [json.loads(line) for line in err[:err.index("\nenrich: ") + 1].splitlines()]  # each one a record
    (said,) = [r for r in records if r["event"] == "preflight_model_missing"]
    assert {k: said[k] for k in ("level", "url", "model", "models", "wait_s", "hint")} == {
        "level": "error", "url": emu.url, "model": "test-model", "models": ["nomic-embed-text:latest", "qwen2.5:7b"],
        "wait_s": 0.5, "hint": "ollama pull test-model"}
    assert [r["event"] for r in records].index("preflight_model_missing") < \
        [r["event"] for r in records].index("enrich_gave_up")
    assert paths[:2] == ["/api/version", "/api/tags"] and "/api/chat" not in paths[:2]


def test_on_a_terminal_a_missing_model_is_one_readable_line(tmp_path, repo):
    """On a terminal the same news is a sentence naming the models the server has, the pull and the wait."""
    from llmc_rag_service import logs
    from llmc_rag_service.service.oneshot import Outcome, run_enrich

    stream = _Tty()
    with OllamaEmulator(["qwen2.5:7b"]) as emu:
        config = make_config(tmp_path, emu.url, [repo], logging={"level": "error", "format": "console"})
        try:
            assert run_enrich(config, wait_s=0.5, stream=stream) is Outcome.GAVE_UP
        finally:
            logs.reset_logging()
    said = f"llmc-rag: model test-model not found on {emu.url}; this server has: qwen2.5:7b; " \
           "run: ollama pull test-model; waiting up to 0 s (--wait-s)"
    assert said in _screen(stream.getvalue())


def test_an_unreachable_server_is_said_at_once(tmp_path, repo, capsys):
    """Nothing listening: one record at once (off a terminal), then the give-up after --wait-s."""
    with OllamaEmulator() as emu:
        url = emu.url
    config = make_config(tmp_path, url, [repo], logging={"level": "error"})
    assert run(config, "enrich", "--wait-s", "0.2") == 69
    err = capsys.readouterr().err
    records = [json.loads(line) for line in err[:err.index("\nenrich: ") + 1].splitlines()]
    (said,) = [r for r in records if r["event"] == "preflight_unreachable"]
    assert said["url"] == url and said["wait_s"] == 0.2 and said["error"] and said["level"] == "error"


# -- show says why ---------------------------------------------------------------------------

@pytest.fixture
def enriched(tmp_path, repo, ollama):
    config = make_config(tmp_path, ollama.url, [repo], watch={"max_file_bytes": 1000}, logging={"level": "error"})
    data = yaml.safe_load(config.source.read_text())
    data["repos"][0]["exclude"] = ["*.log"]
    config.source.write_text(yaml.safe_dump(data))
    config = load_config(config.source)
    assert run(config, "enrich") == 0
    return config


@pytest.mark.parametrize(("target", "said"), [
    ("a.py:5", "a.py:5: no span covers line 5 (a blank or skipped stretch between spans)"),
    ("a.py:99", "a.py:99: no span covers line 99: the file's spans end at line 8"),
    ("a.py:0", "a.py:0: there is no line 0: line numbers start at 1 (its spans cover lines 1-8)"),
    ("blob.bin", "blob.bin: skipped: binary (it holds NUL bytes)"),
    ("big.py", "big.py: skipped: too large (over watch.max_file_bytes)"),
    (".env", ".env: excluded: a secret file (never read)"),
    ("gen/out.py", "gen/out.py: excluded: by .gitignore, repos[].exclude or the default excludes"),
    ("x.log", "x.log: excluded: by .gitignore, repos[].exclude or the default excludes"),
    ("new.py", "new.py: not scanned yet (the service or llmc-rag enrich has not indexed it)"),
    ("nope.py", "nope.py: no such file"),
    ("gen", "gen: excluded: by .gitignore, repos[].exclude or the default excludes"),
])
def test_show_says_why_there_is_no_span(enriched, repo, capsys, target, said):
    """Each reason show finds nothing is one line naming the path, and exit 1."""
    write_tree(repo, {"new.py": "def n():\n    pass\n", "x.log": "log\n"})
    capsys.readouterr()
    assert run(enriched, "show", str(repo / target)) == 1
    assert capsys.readouterr().err == f"llmc-rag: {repo}/{said}\n"


def test_show_outside_every_repo_and_before_any_store(tmp_path, repo, capsys):
    """A path in no repo names the repos; before the first run, a repo file is 'not scanned yet (no store)'."""
    config = make_config(tmp_path, "http://127.0.0.1:9", [repo])
    assert run(config, "show", str(tmp_path)) == 1
    assert f"not in a configured repo (repos: {repo}" in capsys.readouterr().err
    assert run(config, "show", str(repo / "a.py")) == 1
    assert "a.py: not scanned yet (no store at" in capsys.readouterr().err


def test_a_file_name_that_is_not_utf8_prints_and_never_raises(tmp_path, repo, ollama):
    """enrich skips it; show of it says why, with the name escaped; no traceback."""
    name = os.fsencode(repo) + b"/caf\xe9.py"
    with open(name, "wb") as fh:
        fh.write(b"def c():\n    pass\n")
    config = make_config(tmp_path, ollama.url, [repo], logging={"level": "error"})
    assert run(config, "enrich") == 0
    proc = subprocess.run([os.fsencode(sys.executable), b"-m", b"llmc_rag_service", b"show", b"-c",
                           os.fsencode(config.source), name], capture_output=True, timeout=30)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "Traceback" not in err and "caf\\udce9.py: not indexed: its name is not valid UTF-8" in err


# -- honest exits and hints ------------------------------------------------------------------

def test_a_missing_repo_path_exits_66_naming_it_and_enriches_the_others(tmp_path, repo, ollama, capsys):
    """A configured repo that is not a directory: named at once, the others enriched, exit 66; a REPO argument too."""
    gone = tmp_path / "gone"
    config = make_config(tmp_path, ollama.url, [repo, gone], logging={"level": "error"})
    assert run(config, "enrich") == 66
    err = capsys.readouterr().err
    # Off a terminal every line before the summary is a log record (at error level: the run exits 66).
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert {"event": "enrich_repo_missing", "path": str(gone), "reason": "no such directory"}.items() <= next(
        r for r in records if r.get("event") == "enrich_repo_missing").items()
    assert f"repo {gone}: no such directory" not in err.replace('"', "")
    assert status_report(config)["repos"][0]["enriched"] > 0
    assert run(config, "enrich", str(gone)) == 66
    assert f"repo {gone}: no such directory\n" in capsys.readouterr().err


def test_plain_status_says_a_repo_is_missing_and_counts_embeddings(tmp_path, repo, ollama, capsys):
    """Plain status (not only --json) says when a repo's directory is missing, and gives the embedded
    count when embeddings are on."""
    ollama.install_embed("nomic-embed-text")
    gone = tmp_path / "gone"
    config = make_config(tmp_path, ollama.url, [repo, gone], logging={"level": "error"},
                         search={"embed_model": "nomic-embed-text"})
    assert run(config, "enrich", str(repo)) == 0
    capsys.readouterr()
    assert run(config, "status") == 0
    lines = capsys.readouterr().out.splitlines()
    spans = status_report(config)["totals"]["spans"]
    assert f"{repo}: 3 files, {spans} spans, {spans} enriched, {spans} embedded, 0 pending, 0 failed" in lines
    assert f"{gone}: 0 files, 0 spans, 0 enriched, 0 embedded, 0 pending, 0 failed (missing: no directory at this path)" in lines


def test_a_directory_enriched_by_path_outside_the_config_is_in_status_and_show(tmp_path, repo, ollama, capsys):
    """enrich PATH on a directory the config does not name: status lists it (state unwatched, plain
    status says it is not watched) and counts it in the totals, and show answers for its files,
    as search already did."""
    config = make_config(tmp_path, ollama.url, [repo], logging={"level": "error"})
    other = tmp_path / "other"
    write_tree(other, {"z.py": "def zebra_walk(n):\n    return n * 2\n"})
    assert run(config, "enrich", str(other)) == 0
    report = status_report(config)
    assert [(r["path"], r["state"]) for r in report["repos"]] == [(str(repo), "ok"), (str(other), "unwatched")]
    assert report["repos"][1]["enriched"] == 1 and report["totals"]["spans"] == report["repos"][1]["spans"]
    capsys.readouterr()
    assert run(config, "status") == 0
    assert f"{other}: 1 file, 1 span, 1 enriched, 0 pending, 0 failed (not in the config" in capsys.readouterr().out
    assert run(config, "show", str(other / "z.py")) == 0
    assert "function zebra_walk [enriched]" in capsys.readouterr().out
    assert run(config, "search", "--mode", "lexical", "--repo", str(other), "zebra_walk") == 0
    assert "zebra_walk" in capsys.readouterr().out
    assert run(config, "enrich") == 0  # the configured repo too: the totals add both
    report = status_report(config)
    assert report["totals"]["spans"] == sum(r["spans"] for r in report["repos"]) > 1
    capsys.readouterr()
    assert run(config, "enrich", str(other)) == 0  # its summary counts that directory only
    assert "enrich: 1/1 spans enriched" in capsys.readouterr().err
    assert run(config, "enrich", str(repo / "gen")) == 0  # a directory of a configured repo is that repo
    assert [r["path"] for r in status_report(config)["repos"]] == [str(repo), str(other)]
    shutil.rmtree(other)
    assert status_report(config)["repos"][1]["state"] == "missing"


def test_a_num_ctx_no_request_fits_in_is_a_config_error_not_every_span_failed(tmp_path, repo, ollama, capsys):
    """num_ctx 256 cannot hold the fixed prompt and the shortest bounded answer: enrich exits 78 naming
    the key and the least that works, before any request; doctor's config check fails the same way."""
    config = make_config(tmp_path, ollama.url, [repo], ollama={"options": {"num_ctx": 256}})
    assert run(config, "enrich") == 78
    err = capsys.readouterr().err
    assert err.startswith(f"llmc-rag: config error: {config.source}: ollama.options.num_ctx: 256 tokens cannot hold "
                          "one request") and f"at least {min_num_ctx()}" in err and err.count("\n") == 1
    assert ollama.count("/api/chat") == 0 and not config.db_path.exists()
    assert cli.main(["doctor", "-c", str(config.source)]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert f"a `num_ctx` below {min_num_ctx()}," in (ROOT / "README.md").read_text()  # the README's number is true
    ok = make_config(tmp_path, ollama.url, [repo], ollama={"options": {"num_ctx": min_num_ctx()}},
                     logging={"level": "error"})
    assert run(ok, "enrich") == 0


@pytest.mark.parametrize(("text", "line", "key"), [
    ("", 1, "repos"),
    ("repos: []\n", 1, "repos"),
    ("repos:\n  - path: /tmp\nollama: {model: a}\nollama: {url: 'http://x:1'}\n", 4, "ollama"),
    ("repos:\n  - path: /tmp\nwatch:\n  debounce_ms: 1\n  debounce_ms: 2\n", 5, "watch.debounce_ms"),
])
def test_an_empty_config_or_a_duplicate_key_exits_78_naming_file_line_and_key(tmp_path, capsys, text, line, key):
    """enrich, status, show and serve refuse it with 78 and one line: file:line: key."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    for command in (["enrich"], ["status"], ["show", "x"], ["serve"]):
        assert cli.main([command[0], "-c", str(path), *command[1:]]) == 78
        err = capsys.readouterr().err
        assert err.startswith(f"llmc-rag: config error: {path}:{line}: {key}: ") and err.count("\n") == 1


@pytest.mark.parametrize(("args", "said"), [
    (["--user", "--run-as", "nobody"], "--run-as is for the system unit"),
    (["--run-as", "no-such-user-llmc"], "--run-as no-such-user-llmc: no such user"),
    (["--run-as", "bad name"], "not a usable user name"),
])
def test_install_unit_bad_arguments_exit_64_with_one_line(tmp_path, capsys, args, said):
    """Bad --run-as, --user with --run-as: 64, one line, no traceback, nothing written."""
    assert cli.main(["install-unit", "--dest", str(tmp_path / "u"), *args]) == 64
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "u").exists()


def test_install_unit_to_an_unwritable_place_exits_64(tmp_path, capsys):
    """--dest that cannot be created: 64 naming the file it could not write."""
    (tmp_path / "file").write_text("")
    assert cli.main(["install-unit", "--run-as", "nobody", "--dest", str(tmp_path / "file" / "d")]) == 64
    err = capsys.readouterr().err
    assert err.startswith(f"llmc-rag: install-unit: cannot write {tmp_path}/file/d/llmc-rag.service") and err.count("\n") == 1


def test_a_damaged_store_exits_74_with_one_line(tmp_path, repo, capsys):
    """status and show on a store that is not a database: 74, one line, no traceback."""
    config = make_config(tmp_path, "http://127.0.0.1:9", [repo])
    config.state_dir.mkdir()
    config.db_path.write_bytes(b"garbage" * 1000)
    for command in (["status"], ["show", str(repo / "a.py")]):
        assert cli.main([command[0], "-c", str(config.source), *command[1:]]) == 74
        err = capsys.readouterr().err
        assert err.startswith(f"llmc-rag: state unusable: {config.db_path}: ") and err.count("\n") == 1


def test_after_enrich_gives_up_status_shows_the_last_error_until_a_run_succeeds(tmp_path, repo, capsys):
    """status --json carries why enrich gave up; a later successful run clears it."""
    emu = OllamaEmulator()
    emu.start()
    try:
        emu.stop()
        config = make_config(tmp_path, emu.url, [repo], logging={"level": "error"})
        assert run(config, "enrich", "--wait-s", "0.2") == 69
        assert "refused" in status_report(config)["ollama"]["last_error"]
        emu.start()
        assert run(config, "enrich") == 0
        assert status_report(config)["ollama"]["last_error"] is None
    finally:
        emu.stop()


def test_a_plain_rerun_with_failed_spans_points_to_retry_failed(tmp_path, ollama, capsys, monkeypatch):
    """Spans failed for good: enrich (and a plain re-run) say how to retry them after fixing the cause."""
    from llmc_rag_service.store import jobs as q

    monkeypatch.setattr(q.backoff_s, "__defaults__", (0.01, 0.05))
    repo = tmp_path / "repo"
    write_tree(repo, {"only.py": "def z():\n    return 0\n"})
    ollama.inject("invalid_json", count=2)
    config = make_config(tmp_path, ollama.url, [repo], queue={"max_attempts": 2}, logging={"level": "error"})
    assert run(config, "enrich") == 1
    capsys.readouterr()
    assert run(config, "enrich") == 1
    err = capsys.readouterr().err
    assert "llmc-rag: 1 spans failed for good" in err and "run: llmc-rag enrich --retry-failed" in err
    assert run(config, "enrich", "--retry-failed") == 0
    assert "--retry-failed" not in capsys.readouterr().err
