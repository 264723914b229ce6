"""One store for every command: the runtime file of the running service, and what status says about it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from llmc_rag_service import cli
from tests.helpers import make_config, wait_for


@pytest.mark.timeout(60)
def test_status_says_it_reads_the_running_services_store(tmp_path, repo, ollama, notify, serve_factory, capsys,
                                                         monkeypatch):
    """serve under systemd ($RUNTIME_DIRECTORY) leaves its pid and state dir; status with the same config says
    it reads that store, status with another config says which store the service uses and the -c to reach it;
    the file is gone after a clean stop."""
    runtime = tmp_path / "run" / "llmc-rag"
    runtime.mkdir(parents=True)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    config = make_config(tmp_path, ollama.url, [repo])
    serve = serve_factory(config, notify, env={"RUNTIME_DIRECTORY": str(runtime)})
    notify.wait("READY=1")
    written = json.loads((runtime / "daemon.json").read_text())
    assert written["pid"] == serve.proc.pid and written["state_dir"] == str(config.state_dir)
    assert written["config"] == str(config.source)

    assert cli.main(["status", "--json", "-c", str(config.source)]) == 0
    store = json.loads(capsys.readouterr().out)["store"]
    assert store == {"path": str(config.db_path), "exists": True, "service_uses_this_store": True,
                     "service": {"pid": serve.proc.pid, "config": str(config.source), "state_dir": str(config.state_dir)}}
    assert cli.main(["status", "-c", str(config.source)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == \
        f"store: {config.db_path}; written by the running service (pid {serve.proc.pid})"

    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = make_config(other_dir, ollama.url, [repo])
    assert cli.main(["status", "-c", str(other.source)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"store: {other.db_path} (not created yet); NOT the running service's store "
        f"(pid {serve.proc.pid} uses {config.state_dir}): run with -c {config.source}")

    assert serve.stop() == 0
    assert not (runtime / "daemon.json").exists()
    assert cli.main(["status", "-c", str(config.source)]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [f"store: {config.db_path}; no llmc-rag service runs under systemd",
                                                         "daemon: not running"]


def test_a_runtime_file_of_a_dead_process_is_ignored(tmp_path, repo, monkeypatch, capsys):
    """A leftover runtime file naming a pid that no longer runs means no service."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    runtime = tmp_path / "run" / "llmc-rag"
    runtime.mkdir(parents=True)
    (runtime / "daemon.json").write_text(json.dumps({"pid": int(dead.stdout), "state_dir": "/x", "config": None}))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    config = make_config(tmp_path, "http://127.0.0.1:9", [repo])
    assert cli.main(["status", "--json", "-c", str(config.source)]) == 0
    assert json.loads(capsys.readouterr().out)["store"]["service"] is None


def test_another_user_cannot_read_the_store_and_is_told_so(repo, ollama):
    """The state dir is 0700: a user who is neither its owner nor root gets exit 74 and one line saying who may."""
    base = Path(tempfile.mkdtemp(prefix="llmc-rag-test-"))  # pytest's own tmp is closed to other users
    try:
        os.chmod(base, 0o755)
        config = make_config(base, ollama.url, [repo], logging={"level": "error"})
        assert cli.main(["enrich", "-c", str(config.source)]) == 0
        assert config.state_dir.stat().st_mode & 0o777 == 0o700
        os.chmod(config.source, 0o644)
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                               "llmc_rag_service", "status", "-c", str(config.source)],
                              capture_output=True, text=True, timeout=30, env={**os.environ, "HOME": "/nonexistent"})
    finally:
        shutil.rmtree(base)
    assert proc.returncode == 74, proc.stderr
    assert proc.stderr == f"llmc-rag: cannot read the store {config.db_path}: permission denied; only root may read it\n"


@pytest.mark.timeout(60)
def test_already_running_names_the_pid_holding_the_lock(tmp_path, repo, ollama, notify, serve_factory):
    """A second serve on the same state exits 70 and its already_running line names the first one's pid."""
    config = make_config(tmp_path, ollama.url, [repo])
    first = serve_factory(config, notify)
    notify.wait("READY=1")
    second = serve_factory(config)
    assert second.proc.wait(30) == 70
    line = next(json.loads(x) for x in second.logs().splitlines() if '"already_running"' in x)
    assert line["pid"] == first.proc.pid and f"pid {first.proc.pid}" in line["error"]
    assert first.stop() == 0
    wait_for(lambda: first.proc.poll() is not None, 10, "the first serve to exit")
