"""Command-line edges: exit codes, broken pipes, install-unit advice."""

import subprocess
import sys

import pytest

from llmc_rag_service import cli
from tests.helpers import make_config


def test_status_piped_into_a_closed_reader_exits_quietly(tmp_path):
    """`llmc-rag status --json | head -1` prints no BrokenPipeError traceback."""
    config = make_config(tmp_path, "http://127.0.0.1:9", [tmp_path])
    proc = subprocess.run(
        f"{sys.executable} -m llmc_rag_service status --json -c {config.source} | head -c 1",
        shell=True, capture_output=True, text=True, timeout=30,
    )
    assert proc.stdout == "{"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_interrupt_exits_130_with_one_line(tmp_path, monkeypatch, capsys):
    """Ctrl-C during a command exits 130 with one line, no traceback."""
    config = make_config(tmp_path, "http://127.0.0.1:9", [tmp_path])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    import llmc_rag_service.service.oneshot as oneshot

    monkeypatch.setattr(oneshot, "run_enrich", interrupted)
    assert cli.main(["enrich", "-c", str(config.source)]) == 130
    assert capsys.readouterr().err == ("llmc-rag: interrupted; the pending work is kept: "
                                       "run llmc-rag enrich again to go on\n")


@pytest.mark.parametrize(("args", "said"), [
    (["enrich", "--wait-s", "-1"], "enrich: argument --wait-s: must be a number of seconds, 0 or more, not '-1'"),
    (["enrich", "--wait-s", "abc"], "enrich: argument --wait-s: must be a number of seconds, 0 or more, not 'abc'"),
    (["status", "--bogus"], "status: unrecognized arguments: --bogus"),
    (["frob"], "argument command: invalid choice: 'frob'"),
])
def test_a_malformed_command_line_is_one_line_naming_the_argument_and_exits_2(capsys, args, said):
    """argparse's usage block is not printed: one line, the command, the argument, and where help is."""
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith(f"llmc-rag: {said}") and err.count("\n") == 1
    assert err.rstrip().endswith("--help")


def test_a_bare_llmc_rag_prints_the_commands(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([])
    assert exited.value.code == 2 and "enrich" in capsys.readouterr().err.splitlines()[1]


def test_install_unit_warns_about_the_placeholder_user(tmp_path, capsys):
    """install-unit without --run-as warns that User= is a placeholder, and --dest changes the advice."""
    assert cli.main(["install-unit", "--dest", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "placeholder" in out.err and "--run-as" in out.err
    assert "copy it into" in out.out
    assert (tmp_path / "llmc-rag.service").exists()
    assert cli.main(["install-unit", "--dest", str(tmp_path), "--run-as", "nobody"]) == 0
    assert "placeholder" not in capsys.readouterr().err
    assert "User=nobody" in (tmp_path / "llmc-rag.service").read_text()


@pytest.mark.parametrize("user", [False, True])
def test_install_unit_warns_of_a_tmp_exec_start_only_under_private_tmp(tmp_path, capsys, monkeypatch, user):
    """An ExecStart under /tmp is hidden by the system unit's PrivateTmp=yes: warned. The user
    unit has no PrivateTmp=, so the same installation there gets no such warning."""
    from llmc_rag_service.service import units

    monkeypatch.setattr(units, "this_installation", lambda: ("/tmp/venv/bin/llmc-rag", ()))
    args = ["install-unit", "--dest", str(tmp_path)] + (["--user"] if user else ["--run-as", "nobody"])
    assert cli.main(args) == 0
    assert ("PrivateTmp=yes" in (tmp_path / "llmc-rag.service").read_text()) != user
    assert ("temporary directory" in capsys.readouterr().err) != user


def test_status_with_a_missing_config_exits_78(tmp_path, capsys):
    """status needs a readable config too: 78 naming the file."""
    assert cli.main(["status", "-c", str(tmp_path / "none.yaml")]) == 78
    assert "none.yaml" in capsys.readouterr().err


def test_status_reads_a_store_in_a_read_only_state_dir(tmp_path, capsys):
    """status works on a stopped daemon's store whose directory is read-only (no -shm can be made)."""
    import os

    config = make_config(tmp_path, "http://127.0.0.1:9", [tmp_path])
    from llmc_rag_service.store.db import Store

    Store(config.db_path).close()
    for extra in ("-shm", "-wal"):
        p = config.db_path.with_name(config.db_path.name + extra)
        if p.exists():
            p.unlink()
    code = (
        "import sys, json; from llmc_rag_service import cli; sys.exit(cli.main(['status', '--json', '-c', sys.argv[1]]))"
    )
    os.chmod(config.state_dir, 0o500)
    try:
        # Root ignores directory permissions; drop the capability that lets it.
        proc = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner",
                               sys.executable, "-c", code, str(config.source)],
                              capture_output=True, text=True, timeout=30)
    finally:
        os.chmod(config.state_dir, 0o700)
    assert proc.returncode == 0, proc.stderr
    assert '"totals"' in proc.stdout


def test_show_finds_a_file_whose_name_looks_like_path_line(tmp_path, capsys):
    """A file literally named `x:12` is shown as that file, not as line 12 of `x`."""
    from llmc_rag_service.models import Span
    from llmc_rag_service.store.db import Store

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "x:12").write_text("hello\n")  # show answers for files that still exist
    config = make_config(tmp_path, "http://127.0.0.1:9", [repo])
    store = Store(config.db_path)
    rid = store.repo_id(repo)
    with store.write() as tx:
        store.put_file(tx, rid, "x:12", size=1, mtime_ns=1, content_hash="h", language="text",
                       skipped=None, spans=[Span("window", "lines 1-1", 1, 1, "hello", "text")])
    store.close()
    assert cli.main(["show", "-c", str(config.source), "--json", str(repo / "x:12")]) == 0
    assert '"path": "x:12"' in capsys.readouterr().out


def test_status_on_a_store_file_not_yet_migrated_is_all_zero(tmp_path, capsys):
    """A database file that exists but has no schema yet (a daemon starting) reads as empty, not as an error."""
    import json
    import sqlite3

    config = make_config(tmp_path, "http://127.0.0.1:9", [tmp_path])
    config.state_dir.mkdir(parents=True)
    sqlite3.connect(config.db_path).close()
    assert cli.main(["status", "--json", "-c", str(config.source)]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["spans"] == 0


def test_a_missing_dash_c_file_is_one_line_with_the_fix_and_exit_78(tmp_path, capsys):
    """`-c` naming no file: one line naming it and what to do, exit 78 (config error)."""
    missing = tmp_path / "nope.yaml"
    assert cli.main(["status", "-c", str(missing)]) == 78
    err = capsys.readouterr().err
    assert err.startswith(f"llmc-rag: config error: {missing}: no such file; create it from the commented sample: cp ")
    assert "drop -c" in err and err.count("\n") == 1


def test_no_config_anywhere_names_the_lookup_order(tmp_path, monkeypatch, capsys):
    """Without -c and with no config in any default place, the error lists where it looked."""
    monkeypatch.delenv("LLMC_RAG_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert cli.main(["status"]) == 78
    err = capsys.readouterr().err
    assert "$LLMC_RAG_CONFIG" in err and "/etc/llmc-rag/config.yaml" in err
