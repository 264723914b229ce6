"""``llmc-rag doctor`` against the Ollama emulator: healthy, then each failure provoked on purpose.

systemd is not PID 1 here, so the unit checks meet a stand-in ``systemctl``
(a shell script first on PATH that prints what ``systemctl show`` would);
everything else is real: files, the store, the emulator's HTTP server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmc_rag_service import cli
from llmc_rag_service.service import doctor_unit
from llmc_rag_service.service.doctor import Limits, run_checks
from llmc_rag_service.testing.emulator import OllamaEmulator
from tests.helpers import make_config, write_tree


@pytest.fixture
def emu():
    """An emulator with the chat model and the default embed model installed."""
    with OllamaEmulator(["test-model"], embed_models=["nomic-embed-text"]) as e:
        yield e


@pytest.fixture
def setup(tmp_path, emu, monkeypatch):
    """A repo, a config against the emulator, an enriched store, no runtime dir of a real service."""
    repo = tmp_path / "repo"
    write_tree(repo, {"a.py": "def f():\n    return 1\n", "pkg/b.py": "x = 1\n"})
    config = make_config(tmp_path, emu.url, [repo], logging={"level": "error"},
                         search={"embed_model": "nomic-embed-text"})
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(doctor_unit, "running_as_root", lambda: False)  # a developer's own account
    assert cli.main(["enrich", "-c", str(config.source)]) == 0
    return config


def fake_systemctl(tmp_path: Path, monkeypatch, props: dict[str, str] | None, exit_code: int = 0) -> None:
    """A `systemctl` first on PATH printing ``props`` as `systemctl show` does (or failing)."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    body = "".join(f"echo '{k}={v}'\n" for k, v in (props or {}).items())
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\n{body}exit {exit_code}\n")
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def healthy_unit(**override: str) -> dict[str, str]:
    return {"LoadState": "loaded", "UnitFileState": "enabled", "ActiveState": "active", "MainPID": "4242",
            "ExecStart": f"{{ path={sys.executable} ; argv[]={sys.executable} serve ; ignore_errors=no }}",
            "FragmentPath": "/home/u/.config/systemd/user/llmc-rag.service", **override}


def by_name(checks) -> dict[str, list]:
    out: dict[str, list] = {}
    for c in checks:
        out.setdefault(c.name, []).append(c)
    return out


def test_a_healthy_setup_is_all_ok_and_exits_0(setup, tmp_path, monkeypatch, capsys):
    """Config, repos, store, disk, Ollama, both models, inotify, unit, service, store: every check ok; exit 0."""
    fake_systemctl(tmp_path, monkeypatch, healthy_unit())
    assert cli.main(["doctor", "-c", str(setup.source)]) == 0
    out = capsys.readouterr().out
    names = [line.split()[1] for line in out.splitlines() if line.startswith("ok")]
    assert {"config", "repos", "state", "disk", "ollama", "chat", "embed", "inotify", "unit", "service",
            "store"} <= set(names)
    assert not [line for line in out.splitlines() if line.startswith(("FAIL", "warn"))]
    assert out.strip().endswith("0 warn, 0 fail")


def test_json_output_has_every_check_with_status_and_fix(setup, tmp_path, monkeypatch, capsys):
    """doctor --json: {ok, checks: [{name, status, detail, fix}]}."""
    fake_systemctl(tmp_path, monkeypatch, healthy_unit())
    assert cli.main(["doctor", "--json", "-c", str(setup.source)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert all(set(c) == {"name", "status", "detail", "fix"} and c["status"] == "ok" for c in report["checks"])


def test_an_invalid_config_fails_naming_file_line_and_key(tmp_path, monkeypatch, capsys):
    """A config with a duplicate key: config fails with its line and key, the fix says where; exit 1."""
    path = tmp_path / "config.yaml"
    path.write_text(f"repos:\n  - path: {tmp_path}\nollama:\n  model: a\n  model: b\n")
    fake_systemctl(tmp_path, monkeypatch, None, exit_code=1)
    assert cli.main(["doctor", "-c", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  config       {path}:5: ollama.model: duplicate key" in out
    assert f"fix: edit {path} line 5 (ollama.model)" in out


def test_a_missing_dash_c_file_fails_with_the_cp_of_the_sample(tmp_path, monkeypatch):
    """doctor -c naming no file: the detail gives the cp of the shipped sample, the fix says it or drop -c."""
    fake_systemctl(tmp_path, monkeypatch, None, exit_code=1)
    missing = tmp_path / "mine.yaml"
    (config,) = [c for c in run_checks(str(missing), {**os.environ}) if c.name == "config"]
    assert config.status == "fail" and config.detail.startswith(f"{missing}: no such file;")
    assert f"etc/llmc-rag.yaml {missing}" in config.detail and config.fix == f"the cp above creates {missing}; or drop -c"


@pytest.mark.parametrize("booted", [True, False])
def test_no_config_anywhere_fails_with_the_install_command_where_systemd_runs(tmp_path, monkeypatch, booted):
    """Without -c and no config in the lookup places, the fix is the install script where
    systemd runs (sd_booted: /run/systemd/system exists), else the cp of the sample and serve by hand."""
    from llmc_rag_service.service import doctor_unit

    monkeypatch.delenv("LLMC_RAG_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    fake_systemctl(tmp_path, monkeypatch, None, exit_code=1)
    run_systemd = tmp_path / "run-systemd-system"
    if booted:
        run_systemd.mkdir()
    monkeypatch.setattr(doctor_unit, "RUN_SYSTEMD", run_systemd)
    env = {**os.environ}
    if Path("/etc/llmc-rag/config.yaml").exists():
        pytest.fail("this machine has /etc/llmc-rag/config.yaml; the test needs none")
    (config,) = [c for c in run_checks(None, env) if c.name == "config"]
    assert config.status == "fail" and "no config file found" in config.detail
    assert ("scripts/install.sh" in config.fix) == booted
    assert booted or config.fix.startswith("the cp above") and "llmc-rag serve by hand" in config.fix


def test_a_missing_repo_fails(setup, tmp_path):
    """A repos[].path that is not a directory fails, naming it and the config."""
    gone = tmp_path / "gone"
    config = make_config(tmp_path, "http://127.0.0.1:9", [setup.repos[0].path, gone])
    (repos,) = by_name(run_checks(str(config.source)))["repos"]
    assert repos.status == "fail" and f"repos[1].path {gone}" in repos.detail
    assert repos.fix.startswith(f"mkdir -p {gone}")


def test_a_damaged_store_fails_quick_check(setup, tmp_path):
    """A store file overwritten with garbage: state fails with the move-aside command the store's own
    error gives (.bad); systemctl around it only when a service under systemd uses that store."""
    setup.db_path.write_bytes(b"this is not a database" * 200)
    for extra in ("-wal", "-shm"):
        setup.db_path.with_name(setup.db_path.name + extra).unlink(missing_ok=True)
    (state,) = by_name(run_checks(str(setup.source)))["state"]
    assert state.status == "fail" and "damaged" in state.detail
    assert state.fix == (f"mv {setup.db_path} {setup.db_path}.bad (stop a serve that uses it first), "
                         "then run llmc-rag enrich or serve")
    run = tmp_path / "run" / "llmc-rag"  # the user unit's RuntimeDirectory, naming this store
    run.mkdir(parents=True)
    (run / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "state_dir": str(setup.state_dir),
                                                 "config": str(setup.source), "started_at": 0}))
    (state,) = by_name(run_checks(str(setup.source)))["state"]
    assert state.fix == (f"systemctl --user stop llmc-rag && mv {setup.db_path} {setup.db_path}.bad && "
                         "systemctl --user start llmc-rag")


def test_a_state_dir_open_to_others_warns(setup):
    """A state dir with group/other bits: warn with chmod 700."""
    os.chmod(setup.state_dir, 0o755)
    checks = by_name(run_checks(str(setup.source)))
    assert checks["state"][0].status == "ok"
    assert checks["state mode"][0].status == "warn" and checks["state mode"][0].fix == f"chmod 700 {setup.state_dir}"


def test_a_state_dir_this_user_cannot_write_fails(setup):
    """Run without the capability that lets root ignore modes: a 0500 state dir fails for this user."""
    os.chmod(setup.state_dir, 0o500)
    code = ("import json, sys; from llmc_rag_service.service.doctor import run_checks; "
            "print(json.dumps([c.__dict__ for c in run_checks(sys.argv[1]) if c.name == 'state']))")
    try:
        proc = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner",
                               sys.executable, "-c", code, str(setup.source)],
                              capture_output=True, text=True, timeout=60)
    finally:
        os.chmod(setup.state_dir, 0o700)
    (state,) = json.loads(proc.stdout)
    assert state["status"] == "fail" and "not writable" in state["detail"], proc.stderr
    assert state["fix"].startswith("sudo -u ")


def test_low_disk_space_fails_or_warns(setup):
    """Free space below the limits: fail below the hard one, warn below the soft one."""
    free_now = 2**62
    (disk,) = by_name(run_checks(str(setup.source), limits=Limits(disk_fail_bytes=free_now, disk_warn_bytes=free_now)))["disk"]
    assert disk.status == "fail" and "df -h" in disk.fix
    (disk,) = by_name(run_checks(str(setup.source), limits=Limits(disk_fail_bytes=0, disk_warn_bytes=free_now)))["disk"]
    assert disk.status == "warn"


def test_ollama_unreachable_fails(setup, emu):
    """The server stopped: ollama fails with the URL and the reason; no model checks are guessed."""
    emu.stop()
    checks = by_name(run_checks(str(setup.source)))
    (ollama,) = checks["ollama"]
    assert ollama.status == "fail" and emu.url in ollama.detail and "unreachable" in ollama.detail
    assert "chat model" not in checks


def test_a_missing_chat_model_fails_listing_what_the_server_has(setup, emu):
    """The chat model not pulled: fail naming what the server has and `ollama pull MODEL`."""
    emu.uninstall("test-model")
    emu.install("qwen2.5:7b")
    (chat,) = by_name(run_checks(str(setup.source)))["chat model"]
    assert chat.status == "fail"
    assert chat.detail == f"model test-model not found on {emu.url}; this server has: nomic-embed-text:latest, qwen2.5:7b; " \
                          "run: ollama pull test-model"
    assert chat.fix == "ollama pull test-model"


def test_a_missing_embed_model_warns_and_null_turns_the_check_off(setup, emu, tmp_path):
    """Without the embed model search is only lexical: warn with the pull; search.embed_model: null is ok."""
    emu.uninstall("nomic-embed-text")
    (embed,) = by_name(run_checks(str(setup.source)))["embed model"]
    assert embed.status == "warn" and embed.fix == "ollama pull nomic-embed-text"
    config = make_config(tmp_path, emu.url, list(r.path for r in setup.repos), search={"embed_model": None})
    (embed,) = by_name(run_checks(str(config.source)))["embed model"]
    assert embed.status == "ok" and "off" in embed.detail


def test_too_few_inotify_watches_fails_or_warns(setup, tmp_path):
    """Directories to watch against max_user_watches: over the limit fails, over half warns; the fix is sysctl."""
    limit = tmp_path / "max_user_watches"
    limit.write_text("1\n")  # the repo has 2 directories (root and pkg/)
    (inotify,) = by_name(run_checks(str(setup.source), limits=Limits(max_user_watches=limit)))["inotify"]
    assert inotify.status == "fail" and "2 directories" in inotify.detail
    assert "fs.inotify.max_user_watches=524288" in inotify.fix and "sysctl" in inotify.fix
    limit.write_text("3\n")
    (inotify,) = by_name(run_checks(str(setup.source), limits=Limits(max_user_watches=limit)))["inotify"]
    assert inotify.status == "warn"


@pytest.mark.parametrize(("props", "unit_status", "service_status", "fix"), [
    ({"LoadState": "not-found"}, "warn", None, "./scripts/install.sh --user --now"),
    (healthy_unit(ExecStart="{ path=/nonexistent/llmc-rag ; argv[]=/nonexistent/llmc-rag serve }"), "fail", "ok",
     "./scripts/install.sh --user --now"),
    (healthy_unit(ActiveState="failed"), "ok", "fail", "systemctl --user restart llmc-rag"),
    (healthy_unit(ActiveState="inactive"), "ok", "warn", "systemctl --user enable --now llmc-rag"),
    (healthy_unit(UnitFileState="disabled"), "ok", "warn", "systemctl --user enable llmc-rag"),
])
def test_unit_problems_are_each_named_with_their_fix(setup, tmp_path, monkeypatch, props, unit_status,
                                                     service_status, fix):
    """Not installed, ExecStart gone, failed, stopped, not enabled: each with the one command that fixes it."""
    fake_systemctl(tmp_path, monkeypatch, props)
    checks = by_name(run_checks(str(setup.source)))
    assert checks["unit"][0].status == unit_status
    if service_status is None:
        assert "service" not in checks
    else:
        assert checks["service"][0].status == service_status
    worst = [c for c in checks["unit"] + checks.get("service", []) if c.status != "ok"]
    assert worst[0].fix == fix


def test_without_systemd_the_unit_file_is_read(setup, tmp_path, monkeypatch):
    """systemctl cannot answer (no systemd): the user unit file is read; enabled is its wants/ link; active unknown."""
    fake_systemctl(tmp_path, monkeypatch, None, exit_code=1)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert cli.main(["install-unit", "--user"]) == 0
    wants = tmp_path / "cfg" / "systemd" / "user" / "default.target.wants"
    wants.mkdir()
    (wants / "llmc-rag.service").symlink_to("../llmc-rag.service")
    checks = by_name(run_checks(str(setup.source)))
    assert checks["unit"][0].status == "ok" and str(Path(sys.prefix) / "bin" / "llmc-rag") in checks["unit"][0].detail
    service = checks["service"][0]
    assert service.status == "warn" and service.detail.startswith("enabled;") and "unknown" in service.detail


def test_a_service_using_another_store_warns(setup, tmp_path, monkeypatch):
    """A running service (its runtime file, a live pid) whose state dir differs: warn with the -c to use."""
    run = tmp_path / "run" / "llmc-rag"
    run.mkdir(parents=True)
    (run / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "state_dir": "/srv/other",
                                                 "config": "/srv/other.yaml", "started_at": 0}))
    (store,) = by_name(run_checks(str(setup.source)))["store"]
    assert store.status == "warn" and "/srv/other" in store.detail
    assert store.fix == "llmc-rag doctor -c /srv/other.yaml"
    (run / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "state_dir": str(setup.state_dir),
                                                 "config": str(setup.source), "started_at": 0}))
    (store,) = by_name(run_checks(str(setup.source)))["store"]
    assert store.status == "ok" and f"pid {os.getpid()}" in store.detail


@pytest.mark.parametrize("booted", [False, True])
def test_no_unit_and_no_systemd_says_so_instead_of_an_install_that_cannot_run(setup, tmp_path, monkeypatch, booted):
    """systemctl cannot answer and no unit is installed: on a machine where systemd is not the init system
    (no /run/systemd/system) doctor says to run serve by hand or under another supervisor, with no install
    command; where systemd runs, it gives the install command."""
    fake_systemctl(tmp_path, monkeypatch, None, exit_code=1)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    run = tmp_path / "run-systemd"
    if booted:
        run.mkdir()
    monkeypatch.setattr(doctor_unit, "RUN_SYSTEMD", run)
    unit = by_name(run_checks(str(setup.source)))["unit"][0]
    assert unit.status == "warn"
    if booted:
        assert unit.fix == "./scripts/install.sh --user --now"
    else:
        assert unit.fix is None and "systemd is not running here" in unit.detail and "by hand" in unit.detail


@pytest.mark.parametrize(("props", "fix"), [
    ({"LoadState": "not-found"}, "./scripts/install.sh --run-as USER --now"),
    (healthy_unit(ActiveState="failed"), "systemctl restart llmc-rag"),
])
def test_as_root_the_unit_checked_is_the_system_one_and_fixes_need_no_sudo(setup, tmp_path, monkeypatch, props, fix):
    """root running doctor on its own config: the system unit is checked (root has no user manager to
    host a --user unit on a server), and the fix is the system install or systemctl, without sudo."""
    monkeypatch.setattr(doctor_unit, "running_as_root", lambda: True)
    calls = tmp_path / "calls"
    fake_systemctl(tmp_path, monkeypatch, props)
    (tmp_path / "fakebin" / "systemctl").write_text(
        (tmp_path / "fakebin" / "systemctl").read_text().replace("#!/bin/sh\n", f"#!/bin/sh\necho \"$@\" >> {calls}\n"))
    checks = by_name(run_checks(str(setup.source)))
    worst = [c for c in checks["unit"] + checks.get("service", []) if c.status != "ok"]
    assert worst[0].fix == fix
    assert "--user" not in calls.read_text()
