"""systemd units: rendered text, install, and systemd-analyze verify/security."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmc_rag_service.service import units
from llmc_rag_service.service.units import (
    DEFAULT_EXEC_PATH,
    DEFAULT_USER_EXEC_PATH,
    UnitError,
    install_unit,
    render_unit,
    systemd_version,
)

REPO = Path(__file__).resolve().parent.parent
MAX_EXPOSURE = 3.0


@pytest.fixture(scope="module")
def analyze() -> str:
    """The systemd-analyze binary; its absence fails the test (Debian: package systemd)."""
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze not found: apt-get install systemd"
    return path


def _settings(text: str) -> dict[str, list[str]]:
    """KEY -> values of every assignment line in a unit's text."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def _write(tmp_path: Path, text: str, user_unit: bool) -> Path:
    folder = tmp_path / ("user" if user_unit else "system")
    folder.mkdir(exist_ok=True)
    unit = folder / "llmc-rag.service"
    unit.write_text(text, encoding="utf-8")
    return unit


def _run(analyze: str, tmp_path: Path, user_unit: bool, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if user_unit:
        # The user manager needs a runtime dir even for offline checks.
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    scope = ["--user"] if user_unit else []
    return subprocess.run(
        [analyze, *scope, *args], capture_output=True, text=True, env=env, timeout=30, check=False
    )


def _verify_output(analyze: str, tmp_path: Path, text: str, user_unit: bool) -> str:
    unit = _write(tmp_path, text, user_unit)
    result = _run(analyze, tmp_path, user_unit, "verify", str(unit))
    return result.stdout + result.stderr


def test_repository_units_equal_rendered_units():
    """systemd/llmc-rag.service and the user unit are render_unit's text (no drift), and nothing else is under systemd/."""
    system = (REPO / "systemd" / "llmc-rag.service").read_text(encoding="utf-8")
    user = (REPO / "systemd" / "user" / "llmc-rag.service").read_text(encoding="utf-8")
    assert system == render_unit(False, DEFAULT_EXEC_PATH)
    assert user == render_unit(True, DEFAULT_USER_EXEC_PATH)
    shipped = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "systemd").rglob("*") if p.is_file())
    assert shipped == ["systemd/llmc-rag.service", "systemd/user/llmc-rag.service"]


def _fake_executable(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)


def test_every_file_under_systemd_verifies_without_a_single_line(analyze, tmp_path):
    """`systemd-analyze verify` on each shipped unit, as it is in the repository, prints no line at all on this
    systemd (252 on Debian 12). The executables install.sh would create exist only for the check: /opt is a
    private tmpfs in a throwaway mount namespace (unshare), HOME a temp dir."""
    system = REPO / "systemd" / "llmc-rag.service"
    script = (f"mount -t tmpfs tmpfs /opt && mkdir -p {Path(DEFAULT_EXEC_PATH).parent} && "
              f"printf '#!/bin/sh\\n' > {DEFAULT_EXEC_PATH} && chmod 755 {DEFAULT_EXEC_PATH} && "
              f"exec {analyze} verify {system}")
    result = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script],
                            capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    home = tmp_path / "home"
    _fake_executable(Path(DEFAULT_USER_EXEC_PATH.replace("%h", str(home))))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = subprocess.run([analyze, "--user", "verify", str(REPO / "systemd" / "user" / "llmc-rag.service")],
                            capture_output=True, text=True, timeout=30,
                            env={**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)})
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_verify_check_sees_a_missing_executable(analyze, tmp_path):
    """The check above can fail: without the installed executable, verify says so."""
    home = tmp_path / "empty-home"
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = subprocess.run([analyze, "--user", "verify", str(REPO / "systemd" / "user" / "llmc-rag.service")],
                            capture_output=True, text=True, timeout=30,
                            env={**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)})
    assert "is not executable" in result.stdout + result.stderr


@pytest.mark.parametrize("user_unit", [False, True])
def test_notify_reload_variant_lets_systemd_send_the_signal(user_unit):
    """The systemd >= 253 variant: Type=notify-reload, ReloadSignal=SIGHUP, no ExecReload; otherwise equal."""
    plain = _settings(render_unit(user_unit, "/bin/true"))
    reload_ = _settings(render_unit(user_unit, "/bin/true", notify_reload=True))
    assert reload_["Type"] == ["notify-reload"] and reload_["ReloadSignal"] == ["SIGHUP"]
    assert "ExecReload" not in reload_
    assert {k: v for k, v in plain.items() if k not in ("Type", "ExecReload")} == \
        {k: v for k, v in reload_.items() if k not in ("Type", "ReloadSignal")}


def test_notify_reload_variant_verifies_clean_where_systemd_knows_it(analyze, tmp_path):
    """On systemd >= 253 the notify-reload unit verifies clean; on 252 verify warns about it (why it is not shipped)."""
    output = _verify_output(analyze, tmp_path, render_unit(False, sys.executable, notify_reload=True), False)
    if systemd_version() >= units.NOTIFY_RELOAD_SINCE:
        assert output == ""
    else:
        assert "notify-reload" in output


def _fake_systemctl(tmp_path: Path, monkeypatch, first_line: str) -> None:
    """A `systemctl` first on PATH that prints ``first_line`` for --version."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\necho '{first_line}'\necho '+PAM +AUDIT'\n")
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


@pytest.mark.parametrize(("line", "version", "unit_type"), [
    ("systemd 252 (252.38-1~deb12u1)", 252, "notify"),
    ("systemd 253 (253.5-1ubuntu6)", 253, "notify-reload"),
    ("systemd 255 (255.4-1ubuntu8)", 255, "notify-reload"),
    ("something else", None, "notify"),
])
def test_install_unit_picks_the_type_from_systemctl_version(tmp_path, monkeypatch, line, version, unit_type):
    """install_unit asks `systemctl --version`: Type=notify-reload from 253 on, Type=notify before or when unknown."""
    _fake_systemctl(tmp_path, monkeypatch, line)
    assert systemd_version() == version
    written = install_unit(False, dest_dir=tmp_path / "units", run_as="nobody")
    assert _settings(written.read_text())["Type"] == [unit_type]


@pytest.mark.parametrize("user_unit", [False, True])
def test_unit_has_the_lifecycle_settings(user_unit):
    """Both units: notify, watchdog, reload by shell builtin, restart rules, journald."""
    s = _settings(render_unit(user_unit, DEFAULT_EXEC_PATH))
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == ["/opt/llmc-rag/bin/llmc-rag serve"]
    assert s["RuntimeDirectory"] == ["llmc-rag"]
    assert s["ExecReload"] == ["/bin/sh -c 'kill -HUP \"$MAINPID\"'"]
    assert s["WatchdogSec"] == ["60"]
    assert s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["78"]
    assert int(s["TimeoutStopSec"][0]) > 20  # the daemon's own stop grace
    assert s["SyslogIdentifier"] == ["llmc-rag"]
    assert "PYTHONFAULTHANDLER=1" in s["Environment"][0].split()
    assert s["UMask"] == ["0077"]


def test_system_unit_runs_as_given_user_with_state_directory():
    """The system unit has User= (placeholder or run_as) and StateDirectory=llmc-rag 0700."""
    assert _settings(render_unit(False, DEFAULT_EXEC_PATH))["User"] == ["llmc-rag"]
    s = _settings(render_unit(False, DEFAULT_EXEC_PATH, run_as="alice"))
    assert s["User"] == ["alice"]
    assert (s["StateDirectory"], s["StateDirectoryMode"]) == (["llmc-rag"], ["0700"])
    assert s["CapabilityBoundingSet"] == [""]


def test_user_unit_has_no_user_or_state_directory():
    """The user unit runs as its caller and leaves the state dir to the daemon
    (systemd < 254 would map StateDirectory= into ~/.config)."""
    s = _settings(render_unit(True, DEFAULT_EXEC_PATH))
    assert "User" not in s
    assert "StateDirectory" not in s
    assert s["WantedBy"] == ["default.target"]


def test_exec_path_is_quoted_and_escaped():
    """A path with a space, '$' or '%' is quoted and escaped for ExecStart=."""
    s = _settings(render_unit(False, "/opt/my tools/$v%1/python", prefix_args=("-m", "llmc_rag_service")))
    assert s["ExecStart"] == ['"/opt/my tools/$$v%%1/python" -m llmc_rag_service serve']


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user_unit": False, "exec_path": "llmc-rag"}, "absolute"),
        ({"user_unit": True, "exec_path": "/bin/true", "run_as": "alice"}, "calling user"),
        ({"user_unit": False, "exec_path": "/bin/true", "run_as": "al ice"}, "user name"),
        ({"user_unit": False, "exec_path": "/bin/true", "run_as": "%n"}, "user name"),
    ],
)
def test_render_unit_refuses_bad_arguments(kwargs, message):
    """A relative exec path, run_as for a user unit, or a bad user name raise ValueError."""
    with pytest.raises(ValueError, match=message):
        render_unit(**kwargs)


@pytest.mark.parametrize("user_unit", [False, True])
def test_systemd_analyze_verify_prints_nothing(analyze, tmp_path, user_unit):
    """systemd-analyze verify has nothing at all to say about either unit."""
    text = render_unit(user_unit, sys.executable, prefix_args=("-m", "llmc_rag_service"))
    assert _verify_output(analyze, tmp_path, text, user_unit) == ""


def test_systemd_analyze_verify_catches_a_trailing_comment(analyze, tmp_path):
    """The verify check can fail: a trailing comment on a key line is reported."""
    text = render_unit(False, "/bin/true").replace("NoNewPrivileges=yes", "NoNewPrivileges=yes # no")
    assert "yes # no" in _verify_output(analyze, tmp_path, text, False)


def test_system_unit_exposure_is_at_most_3(analyze, tmp_path):
    """systemd-analyze security --offline=yes rates the system unit's exposure <= 3.0."""
    unit = _write(tmp_path, render_unit(False, "/bin/true"), False)
    result = _run(analyze, tmp_path, False, "security", "--offline=yes", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE


@pytest.mark.parametrize("user_unit", [False, True])
def test_install_unit_names_this_installation_not_path(analyze, tmp_path, monkeypatch, user_unit):
    """install_unit's ExecStart is the llmc-rag of sys.prefix (this venv), even when another llmc-rag comes first on PATH."""
    other = tmp_path / "other" / "llmc-rag"
    _fake_executable(other)
    monkeypatch.setenv("PATH", f"{other.parent}:{os.environ['PATH']}")
    written = install_unit(user_unit, dest_dir=tmp_path / "units", version=252)
    assert written == tmp_path / "units" / "llmc-rag.service"
    text = written.read_text(encoding="utf-8")
    assert _settings(text)["ExecStart"] == [f"{Path(sys.prefix) / 'bin' / 'llmc-rag'} serve"]
    assert written.stat().st_mode & 0o777 == 0o644
    assert _verify_output(analyze, tmp_path, text, user_unit) == ""


def test_install_unit_falls_back_to_python_module(tmp_path, monkeypatch):
    """Without an llmc-rag script in this installation, ExecStart runs this interpreter with -m llmc_rag_service."""
    monkeypatch.setattr(units.sysconfig, "get_path", lambda name: str(tmp_path / "noscripts"))
    monkeypatch.setattr(units.sys, "prefix", str(tmp_path / "noprefix"))
    written = install_unit(False, dest_dir=tmp_path, run_as="nobody", version=252)
    s = _settings(written.read_text(encoding="utf-8"))
    assert s["ExecStart"] == [f"{sys.executable} -m llmc_rag_service serve"]
    assert s["User"] == ["nobody"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"user_unit": False, "run_as": "no-such-user-llmc"}, "no such user"),
    ({"user_unit": False, "run_as": "al ice"}, "not a usable user name"),
    ({"user_unit": True, "run_as": "nobody"}, "--run-as is for the system unit"),
])
def test_install_unit_refuses_bad_arguments_with_one_line(tmp_path, kwargs, message):
    """A run-as user that does not exist or is malformed, or --run-as with --user: UnitError, one line, nothing written."""
    with pytest.raises(UnitError, match=message) as err:
        install_unit(dest_dir=tmp_path / "units", version=252, **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "units").exists()


def test_install_unit_refuses_an_unwritable_destination(tmp_path):
    """A destination that cannot be made (a file in the way) is a UnitError naming the target."""
    (tmp_path / "afile").write_text("")
    with pytest.raises(UnitError, match="cannot write .*afile/sub/llmc-rag.service"):
        install_unit(False, dest_dir=tmp_path / "afile" / "sub", run_as="nobody", version=252)


def test_install_user_unit_defaults_to_xdg_config_home(tmp_path, monkeypatch):
    """A user unit goes to $XDG_CONFIG_HOME/systemd/user by default, created if missing."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    written = install_unit(True)
    assert written == tmp_path / "cfg" / "systemd" / "user" / "llmc-rag.service"
    assert "User" not in _settings(written.read_text(encoding="utf-8"))


@pytest.mark.timeout(60)
def test_daemon_dependencies_need_no_writable_executable_memory():
    """MemoryDenyWriteExecute=yes is safe: under the kernel's stricter PR_SET_MDWE,
    tree-sitter grammars parse, ctypes callbacks run and an inotify observer starts."""
    script = textwrap.dedent(
        """
        import ctypes, mmap, tempfile
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.prctl(65, 1, 0, 0, 0) == 0, "PR_SET_MDWE: errno %d" % ctypes.get_errno()
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            raise SystemExit("W+X mapping was allowed: MDWE not in force")
        except PermissionError:
            pass
        import tree_sitter, tree_sitter_python, tree_sitter_typescript, tree_sitter_cpp
        for lang in (tree_sitter_python.language(), tree_sitter_typescript.language_tsx(),
                     tree_sitter_cpp.language()):
            tree = tree_sitter.Parser(tree_sitter.Language(lang)).parse(b"int f() { return 1; }")
            assert tree.root_node.end_byte > 0
        callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
        assert callback(41) == 42
        from watchdog.observers.inotify import InotifyObserver
        observer = InotifyObserver()
        observer.schedule(__import__("watchdog.events").events.FileSystemEventHandler(),
                          tempfile.mkdtemp(), recursive=True)
        observer.start(); observer.stop(); observer.join(10)
        import httpx, sqlite3, yaml, structlog
        sqlite3.connect(":memory:").execute("pragma journal_mode=wal")
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=50, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr
