"""The system checks, run inside the booted container by ``llmc-rag-check.service``.

Each check records ``{name, ok, detail, seconds}`` in ``<results>/results.json``
(rewritten after every check, so a crash still leaves what ran); the unit's
journal goes to ``journal.txt``, ``doctor`` outputs to ``doctor-*.txt``. Waits
are polls with deadlines. Order matters: the README's install command comes
first (as the user llmc would type it in the clone), then the clean part
(start, status, reading the store as root and as llmc, an edit, doctor,
reload, stop, no error in the journal) before the watchdog check, which makes
errors on purpose; then an upgrade, a broken setup for doctor, and uninstall.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

UNIT = "llmc-rag"
CONFIG = Path("/etc/llmc-rag/config.yaml")
CLONE = Path("/home/llmc/llmc-rag-service")
STATE = Path("/var/lib/llmc-rag")
APP = Path("/home/llmc/repo/src/app.py")
RESULTS = Path(sys.argv[1] if len(sys.argv) > 1 else "/results")
results: list[dict] = []


class CheckFailed(Exception):
    """A check's assertion did not hold; the message is the detail."""


def sh(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def as_user(user: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``command`` in a login shell of ``user`` (HOME, USER and PATH as that user has them)."""
    return sh("runuser", "-l", user, "-c", command, timeout=timeout)


def readme_install_command() -> str:
    """The system install line of the README's systemd section, verbatim."""
    lines = [line.strip() for line in (CLONE / "README.md").read_text().splitlines()]
    found = [line for line in lines if line.startswith("sudo ./scripts/install.sh --run-as")]
    if len(found) != 1:
        raise CheckFailed(f"expected one install line in README.md, found {found}")
    return found[0].split("  #")[0].strip()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def status_json(user: str) -> dict:
    result = sh("llmc-rag", "status", "--json") if user == "root" else as_user(user, "llmc-rag status --json")
    expect(result.returncode == 0, f"status as {user}: {result.returncode} {result.stderr}")
    return json.loads(result.stdout)


CONFIG_SHA = sha(CONFIG)


def prop(name: str) -> str:
    return sh("systemctl", "show", "-p", name, "--value", UNIT).stdout.strip()


def wait_for(condition, timeout_s: float, what: str, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


def expect(condition: bool, detail: str) -> None:
    if not condition:
        raise CheckFailed(detail)


def journal(*extra: str) -> list[dict]:
    out = sh("journalctl", "-u", UNIT, "-o", "json", "--no-pager", *extra).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def events(name: str) -> list[dict]:
    """The daemon's JSON log records with event ``name``, each with journald's receipt time."""
    found = []
    for entry in journal():
        message = entry.get("MESSAGE")
        if isinstance(message, str) and message.startswith("{"):
            try:
                record = json.loads(message)
            except ValueError:
                continue
            if record.get("event") == name:
                found.append({**record, "_received_us": int(entry["__REALTIME_TIMESTAMP"])})
    return found


def messages() -> list[str]:
    return [e["MESSAGE"] for e in journal() if isinstance(e.get("MESSAGE"), str)]


def check(name: str):
    def run(fn):
        started = time.monotonic()
        try:
            detail, ok = fn() or "ok", True
        except Exception as exc:  # a failed check is recorded, the next ones still run
            detail, ok = f"{type(exc).__name__}: {exc}", False
        results.append({"name": name, "ok": ok, "detail": detail, "seconds": time.monotonic() - started})
        (RESULTS / "results.json").write_text(json.dumps(results, indent=2))
        return fn
    return run


def start_and_watch_states() -> list[str]:
    """``systemctl start --no-block``, then every ActiveState seen until active or failed."""
    expect(sh("systemctl", "start", "--no-block", UNIT).returncode == 0, "systemctl start --no-block failed")
    states: list[str] = []

    def settled() -> bool:
        state = prop("ActiveState")
        if not states or states[-1] != state:
            states.append(state)
        return state in ("active", "failed")

    wait_for(settled, 90, "active", every_s=0.01)
    return states


def iso_us(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1_000_000)


@check("emulator answers")
def _emulator():
    def up() -> bool:
        try:
            return urllib.request.urlopen("http://127.0.0.1:11434/api/version", timeout=2).status == 200
        except OSError:
            return False
    wait_for(up, 60, "the emulator", every_s=0.2)


@check("README install command, as llmc in the clone: venv, unit, service active")
def _install():
    command = readme_install_command()
    started = time.monotonic()
    result = as_user("llmc", f"cd {shlex.quote(str(CLONE))} && {command}", timeout=600)
    took = time.monotonic() - started
    expect(result.returncode == 0, f"{command!r} exited {result.returncode}: {result.stdout}{result.stderr}")
    expect(prop("ActiveState") == "active" and prop("UnitFileState") == "enabled",
           f"after install: {prop('ActiveState')}, {prop('UnitFileState')}")
    unit = Path("/etc/systemd/system/llmc-rag.service").read_text()
    expect("ExecStart=/opt/llmc-rag/bin/llmc-rag serve" in unit and "User=llmc" in unit, "unit: " + unit[:400])
    expect("Type=notify\n" in unit, "systemd 252 must get Type=notify")
    expect(os.readlink("/usr/local/bin/llmc-rag") == "/opt/llmc-rag/bin/llmc-rag", "no llmc-rag on PATH")
    expect(sha(CONFIG) == CONFIG_SHA, "install.sh changed an existing config")
    wait_for(lambda: events("daemon_ready"), 10, "the daemon_ready line")
    return f"{command!r} took {took:.1f} s; {result.stdout.strip().splitlines()[-1]}"


@check("start: active only after READY (store, watches in place)")
def _start():
    expect(sh("systemctl", "stop", UNIT).returncode == 0, "stop before start failed")
    seen_ready, seen_watched = len(events("daemon_ready")), len(events("repo_watched"))
    states = start_and_watch_states()
    expect(states[-1] == "active", f"states {states}")
    expect("activating" in states, f"never seen activating: {states}")
    # Log lines reach journald through a pipe, READY=1 through the notify
    # socket: the line may arrive a moment after systemd saw the unit active.
    ready = wait_for(lambda: events("daemon_ready")[seen_ready:], 10, "the daemon_ready line", every_s=0.05)
    watched = events("repo_watched")[seen_watched:]
    expect(len(ready) == 1 and len(watched) == 1, f"daemon_ready {len(ready)}, repo_watched {len(watched)}")
    started = [e for e in journal() if "Started" in str(e.get("MESSAGE")) and e.get("_PID") == "1"]
    expect(bool(started), "no 'Started' message from systemd")
    active_us = int(started[-1]["__REALTIME_TIMESTAMP"])
    expect(iso_us(watched[0]["timestamp"]) <= iso_us(ready[0]["timestamp"]) <= active_us,
           "daemon_ready logged after systemd saw the unit active")
    start_s = (int(prop("ActiveEnterTimestampMonotonic")) - int(prop("ExecMainStartTimestampMonotonic"))) / 1e6
    return f"states {states}; READY {start_s:.2f} s after exec; watches took {watched[0]['duration_s']} s"


@check("systemctl status shows the STATUS line")
def _status():
    text = wait_for(lambda: (t := prop("StatusText")) and "ollama ok" in t and t.startswith("idle") and t,
                    60, "an idle STATUS with ollama ok", every_s=0.2)
    status = sh("systemctl", "status", "--no-pager", "-l", UNIT).stdout
    expect(f'Status: "{text}"' in status, f"not in systemctl status: {text!r}\n{status}")
    return text


@check("status and show, as root and as llmc, read the store the service writes; nobody else can")
def _one_store():
    def done(user: str):
        report = status_json(user)
        totals = report["totals"]
        return report if totals["spans"] and totals["enriched"] == totals["spans"] else None

    root = wait_for(lambda: done("root"), 60, "every span enriched, as root reads it", every_s=0.5)
    llmc = status_json("llmc")
    for who, report in (("root", root), ("llmc", llmc)):
        store = report["store"]
        expect(store["path"] == str(STATE / "llmc-rag.db") and store["service_uses_this_store"] is True,
               f"{who}: store {store}")
        expect(report["daemon"]["running"] and report["totals"] == root["totals"], f"{who}: {report}")
    text = sh("llmc-rag", "status").stdout
    expect("written by the running service" in text, f"status text: {text}")
    for who in ("root", "llmc"):
        cmd = f"llmc-rag show --json {APP}:2"
        shown = sh(*shlex.split(cmd)) if who == "root" else as_user(who, cmd)
        spans = json.loads(shown.stdout or "[]")
        expect(shown.returncode == 0 and [s["name"] for s in spans] == ["add"] and spans[0]["state"] == "enriched",
               f"show as {who}: {shown.returncode} {shown.stdout} {shown.stderr}")
    modes = {p: (stat.S_IMODE(p.stat().st_mode), p.owner()) for p in (STATE, STATE / "llmc-rag.db")}
    expect(modes[STATE] == (0o700, "llmc") and modes[STATE / "llmc-rag.db"] == (0o600, "llmc"), f"modes {modes}")
    other = as_user("other", "llmc-rag status")
    expect(other.returncode == 74 and "Traceback" not in other.stderr and len(other.stderr.strip().splitlines()) == 1,
           f"another user: {other.returncode} {other.stderr}")
    return f"totals {root['totals']}; other user: {other.stderr.strip()}"


@check("an edit by llmc is enriched and shown to both")
def _edit():
    before = status_json("llmc")["totals"]["spans"]
    as_user("llmc", f"printf '\\n\\ndef sub(a, b):\\n    return a - b\\n' >> {APP}")

    def enriched() -> bool:
        totals = status_json("llmc")["totals"]
        return totals["spans"] == before + 1 and totals["enriched"] == totals["spans"]

    wait_for(enriched, 30, "the new span enriched", every_s=0.2)
    shown = json.loads(sh("llmc-rag", "show", "--json", f"{APP}:11").stdout)
    expect([s["name"] for s in shown] == ["sub"] and shown[0]["state"] == "enriched", f"show: {shown}")
    return "sub() enriched"


@check("doctor, as root and as llmc: every check ok")
def _doctor():
    lines = []
    for who in ("root", "llmc"):
        result = sh("llmc-rag", "doctor") if who == "root" else as_user(who, "llmc-rag doctor")
        (RESULTS / f"doctor-{who}.txt").write_text(result.stdout + result.stderr)
        expect(result.returncode == 0, f"doctor as {who}: {result.returncode}\n{result.stdout}{result.stderr}")
        bad = [line for line in result.stdout.splitlines() if line.startswith(("FAIL", "warn"))]
        expect(not bad, f"doctor as {who}: {bad}")
        lines.append(f"{who}: {result.stdout.strip().splitlines()[-1]}")
    return "; ".join(lines)


@check("systemctl reload re-reads the config and adds a repo")
def _reload():
    pid = prop("MainPID")
    CONFIG.write_text(CONFIG.read_text().replace("  - path: /home/llmc/repo\n",
                                                 "  - path: /home/llmc/repo\n  - path: /home/llmc/second\n"))
    result = sh("systemctl", "reload", UNIT)
    expect(result.returncode == 0, f"reload failed: {result.stderr}")
    reloaded = wait_for(lambda: events("reloaded"), 30, "the reloaded event")
    expect(reloaded[-1]["added"] == ["/home/llmc/second"], f"reloaded: {reloaded[-1]}")
    wait_for(lambda: prop("ActiveState") == "active" and "second" in str(events("jobs_queued")), 30,
             "the second repo's jobs")
    expect(prop("MainPID") == pid, "the main PID changed")
    expect(prop("NRestarts") == "0", "restarted")
    return f"reloaded: {reloaded[-1]}"


@check("systemctl stop ends cleanly")
def _stop():
    result = sh("systemctl", "stop", UNIT)
    expect(result.returncode == 0, f"stop failed: {result.stderr}")
    state = {p: prop(p) for p in ("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")}
    expect(state["ActiveState"] == "inactive" and state["Result"] == "success" and state["ExecMainStatus"] == "0",
           f"after stop: {state}")
    expect(bool(events("daemon_stopped")), "no daemon_stopped event")
    return f"{state}"


@check("journalctl -u llmc-rag -p err is empty on a clean run")
def _no_errors():
    out = sh("journalctl", "-u", UNIT, "-p", "err", "-q", "--no-pager", "-o", "cat").stdout
    expect(out.strip() == "", f"errors: {out}")


@check("journald priorities: info at 6, a refused reload is one error at 3, the daemon keeps running")
def _priorities():
    states = start_and_watch_states()
    expect(states[-1] == "active", f"states {states}")
    good = CONFIG.read_text()
    CONFIG.write_text("ollama: [broken\n")
    try:
        expect(sh("systemctl", "reload", UNIT).returncode == 0, "reload failed")
        wait_for(lambda: events("reload_failed"), 30, "reload_failed")
    finally:
        CONFIG.write_text(good)
    by_event = {}
    for entry in journal():
        try:
            by_event.setdefault(json.loads(entry["MESSAGE"]).get("event"), set()).add(entry.get("PRIORITY"))
        except (ValueError, TypeError, AttributeError):
            continue
    expect(by_event.get("daemon_ready") == {"6"}, f"daemon_ready priorities {by_event.get('daemon_ready')}")
    expect(by_event.get("reload_failed") == {"3"}, f"reload_failed priorities {by_event.get('reload_failed')}")
    errors = sh("journalctl", "-u", UNIT, "-p", "err", "-q", "--no-pager", "-o", "cat").stdout.splitlines()
    expect(len(errors) == 1 and '"reload_failed"' in errors[0], f"journalctl -p err: {errors}")
    expect(prop("ActiveState") == "active" and prop("NRestarts") == "0", "not running after a refused reload")
    return f"-p err shows: {errors[0][:120]}"


@check("SIGSTOP of the main PID: watchdog restart with thread stacks in the journal")
def _watchdog():
    pid = int(prop("MainPID"))
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    seen: set[str] = set()

    def restarted() -> bool:
        seen.add(prop("Result"))
        return prop("NRestarts") not in ("", "0") and prop("ActiveState") == "active" and int(prop("MainPID")) != pid

    wait_for(restarted, 60, "a restart with a new main PID", every_s=0.1)
    text = "\n".join(messages())
    expect("watchdog" in seen, f"Result values seen: {seen}")
    expect("Failed with result 'watchdog'" in text, "no watchdog result in the journal")
    expect("most recent call first" in text, "no thread stacks (faulthandler) in the journal")
    return f"restarted {time.monotonic() - stopped_at:.1f} s after SIGSTOP; NRestarts={prop('NRestarts')}; results seen {sorted(seen)}"


@check("systemctl stop after the restart ends cleanly too")
def _stop_again():
    expect(sh("systemctl", "stop", UNIT).returncode == 0, "stop failed")
    expect(prop("Result") == "success" and prop("ExecMainStatus") == "0", f"Result={prop('Result')}")


@check("the README command again upgrades in place and restarts the running service")
def _upgrade():
    expect(sh("systemctl", "start", UNIT).returncode == 0, "start failed")
    pid = prop("MainPID")
    totals = status_json("root")["totals"]
    config_before = sha(CONFIG)
    started = time.monotonic()
    result = as_user("llmc", f"cd {shlex.quote(str(CLONE))} && {readme_install_command()}", timeout=600)
    took = time.monotonic() - started
    expect(result.returncode == 0, f"exited {result.returncode}: {result.stdout}{result.stderr}")
    expect("restarting" in result.stdout, f"no restart said: {result.stdout}")
    expect(prop("ActiveState") == "active" and prop("MainPID") not in (pid, "0"), f"pid {pid} -> {prop('MainPID')}")
    expect(sha(CONFIG) == config_before, "the upgrade changed the config")
    after = wait_for(lambda: (t := status_json("root")["totals"])["spans"] >= totals["spans"] and t, 30, "counts")
    return f"upgrade took {took:.1f} s; pid {pid} -> {prop('MainPID')}; totals {after}"


@check("doctor on a broken setup: Ollama stopped, a repo missing -> exit 1, each with its fix")
def _doctor_broken():
    sh("systemctl", "stop", "ollama-emulator")
    good = CONFIG.read_text()
    CONFIG.write_text(good.replace("  - path: /home/llmc/second\n", "  - path: /home/llmc/second\n  - path: /home/llmc/gone\n"))
    try:
        result = sh("llmc-rag", "doctor")
    finally:
        CONFIG.write_text(good)
        sh("systemctl", "start", "ollama-emulator")
    (RESULTS / "doctor-broken.txt").write_text(result.stdout + result.stderr)
    text = result.stdout
    expect(result.returncode == 1, f"exit {result.returncode}: {text}{result.stderr}")
    expect(re.search(r"^FAIL  ollama .*unreachable", text, re.M) and re.search(r"^FAIL  repos .*/home/llmc/gone", text, re.M),
           text)
    expect(text.count("fix: ") >= 2, text)
    return text.strip().splitlines()[-1]


@check("--uninstall removes venv and unit, keeps config and store")
def _uninstall():
    result = as_user("llmc", f"cd {shlex.quote(str(CLONE))} && sudo ./scripts/install.sh --uninstall")
    expect(result.returncode == 0, f"exited {result.returncode}: {result.stdout}{result.stderr}")
    gone = [p for p in ("/opt/llmc-rag", "/etc/systemd/system/llmc-rag.service", "/usr/local/bin/llmc-rag")
            if os.path.lexists(p)]
    expect(not gone, f"still there: {gone}")
    expect(prop("LoadState") == "not-found" and prop("ActiveState") == "inactive", f"{prop('LoadState')}")
    expect(CONFIG.exists() and (STATE / "llmc-rag.db").exists(), "config or store removed")
    return result.stdout.strip().splitlines()[-1]


def readme_user_command() -> str:
    """The README's per-user install command, verbatim."""
    found = re.findall(r"`(\./scripts/install\.sh --user --now)`", (CLONE / "README.md").read_text())
    expect(len(set(found)) == 1, f"user install command in README.md: {found}")
    return found[0]


@check("the README's --user command: a user service for llmc with its own store, doctor all ok")
def _user_service():
    uid = int(sh("id", "-u", "llmc").stdout)
    env = f"export XDG_RUNTIME_DIR=/run/user/{uid}; "
    config = Path("/home/llmc/.config/llmc-rag/config.yaml")
    as_user("llmc", f"mkdir -p {config.parent} && printf '%s' {shlex.quote(CONFIG.read_text())} > {config}")
    expect(sh("loginctl", "enable-linger", "llmc").returncode == 0, "enable-linger failed")
    wait_for(lambda: Path(f"/run/user/{uid}/systemd/private").exists(), 30, "llmc's user manager")
    started = time.monotonic()
    result = as_user("llmc", env + f"cd {shlex.quote(str(CLONE))} && {readme_user_command()}", timeout=600)
    took = time.monotonic() - started
    expect(result.returncode == 0, f"exited {result.returncode}: {result.stdout}{result.stderr}")
    active = as_user("llmc", env + "systemctl --user is-active llmc-rag").stdout.strip()
    expect(active == "active", f"user service {active}")

    def done():
        status = as_user("llmc", env + "llmc-rag status --json")
        report = json.loads(status.stdout) if status.returncode == 0 else {}
        totals = report.get("totals", {})
        return report if totals.get("spans") and totals["enriched"] == totals["spans"] else None

    report = wait_for(done, 60, "the user service's store enriched", every_s=0.5)
    expect(report["store"]["path"] == "/home/llmc/.local/state/llmc-rag/llmc-rag.db"
           and report["store"]["service_uses_this_store"] is True, f"store {report['store']}")
    doctor = as_user("llmc", env + "llmc-rag doctor")
    (RESULTS / "doctor-user.txt").write_text(doctor.stdout + doctor.stderr)
    expect(doctor.returncode == 0 and "FAIL" not in doctor.stdout, doctor.stdout + doctor.stderr)
    removed = as_user("llmc", env + f"cd {shlex.quote(str(CLONE))} && ./scripts/install.sh --user --uninstall")
    expect(removed.returncode == 0 and not Path("/home/llmc/.local/share/llmc-rag").exists(), removed.stdout)
    expect(Path(report["store"]["path"]).exists(), "the user store was removed")
    return f"install took {took:.1f} s; totals {report['totals']}; doctor: {doctor.stdout.strip().splitlines()[-1]}"


(RESULTS / "journal.txt").write_text(sh("journalctl", "-u", UNIT, "--no-pager", "-o", "short-precise").stdout)
(RESULTS / "journal-all.txt").write_text(sh("journalctl", "-b", "--no-pager").stdout)
