"""The ``llmc-rag`` command line (DESIGN.md "Contract: command line").

The only place that turns errors and outcomes into exit codes (the EX_*
constants below, sysexits.h numbers where one fits). Every expected fault
is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence, TextIO, cast

import structlog

from llmc_rag_service import __version__
from llmc_rag_service import logs as logsetup
from llmc_rag_service.config import Config, ConfigError, find_config_path, load_config, locate_config
from llmc_rag_service.output import CheckedOutput, OutputError, discard_stdout
from llmc_rag_service.paths import printable_name, shown_path, working_dir
from llmc_rag_service.store.faults import StoreUnusable, classify

EX_OK = 0
#: Some spans failed for good (enrich); nothing to show (show); a check failed (doctor).
EX_FAILED = 1
#: Bad arguments (install-unit); argparse itself exits 2 for a malformed command line.
EX_USAGE = 64
#: A repo path is missing (enrich).
EX_NOINPUT = 66
#: Ollama unreachable, busy or the model missing for longer than --wait-s (enrich).
EX_UNAVAILABLE = 69
#: Another serve holds the state directory, or serve's stop outlived its deadline (stop_overdue).
EX_SOFTWARE = 70
#: The state store is unusable (sysexits EX_IOERR): unreadable, corrupt or another
#: application's, read-only, full, or deleted/replaced under a running serve.
EX_IOERR = 74
#: Bad config.
EX_CONFIG = 78
#: A malformed command line (any command), or a bad search query or option
#: (search, export): argparse's own usage code, as DESIGN.md lists for search.
EX_BAD_QUERY = 2
#: Ctrl-C (128 + SIGINT).
EX_INTERRUPTED = 130
#: SIGTERM under enrich (128 + SIGTERM, what a shell reports for a process the
#: signal killed), after the same clean stop as Ctrl-C.
EX_TERMINATED = 143


class _Terminated(KeyboardInterrupt):
    """SIGTERM during ``enrich``: unwinds like Ctrl-C (the work kept), then exits :data:`EX_TERMINATED`."""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, as every other error of this
    CLI (``llmc-rag: search: argument --limit: must be ...; see llmc-rag search
    --help``), exit :data:`EX_BAD_QUERY`, instead of the usage block and the
    error. Sub-commands' parsers are made of this class too (add_subparsers)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("llmc-rag").strip()
        _err(f"{command + ': ' if command else ''}{message}; see {self.prog} --help")
        sys.exit(EX_BAD_QUERY)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llmc-rag", description="Keep an LLM enrichment of code repositories fresh.")
    parser.add_argument("--version", action="version", version=f"llmc-rag {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(subparser=p)  # main() reports late usage errors with this command's usage
        p.add_argument("-c", "--config", help="config file (default: $LLMC_RAG_CONFIG, "
                       "$XDG_CONFIG_HOME/llmc-rag/config.yaml, /etc/llmc-rag/config.yaml)")
        return p

    add("serve", "run the daemon in the foreground (systemd's ExecStart)")
    p = add("enrich", "scan and enrich every pending span, then exit")
    p.add_argument("--wait-s", type=_wait_s, default=300.0,
                   help="give up (exit 69) when Ollama is unreachable or the model missing this long (seconds)")
    p.add_argument("--retry-failed", action="store_true",
                   help="first give dead-lettered spans a fresh start (after fixing the cause)")
    p.add_argument("repos", nargs="*", help="repositories to enrich (default: the configured ones)")
    p = add("status", "show counts and daemon state")
    p.add_argument("--json", action="store_true")
    p = add("show", "show the spans of a file and their enrichments")
    p.add_argument("--json", action="store_true")
    p.add_argument("target", metavar="PATH[:LINE]")
    p = add("doctor", "check config, store, Ollama, models, inotify limits and the unit; say how to fix each")
    p.add_argument("--json", action="store_true")
    p = add("search", "ranked spans for a natural-language or identifier query")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=_limit, default=10, help="hits to show, 1-100 (default 10)")
    p.add_argument("--repo", help="only this configured repository")
    p.add_argument("--path", help="only paths matching this glob, relative to the repo ('*' also matches '/')")
    p.add_argument("--lang", help="only this language (python, javascript, typescript, tsx, go, rust, java, c, cpp, text)")
    p.add_argument("--kind", help="only this span kind (function, method, class, block, window, error)")
    p.add_argument("--mode", default="hybrid", help="hybrid (default), lexical or semantic")
    # nargs="*": main() says that QUERY is missing, with the '--' hint when an unknown option took its place.
    p.add_argument("query", metavar="QUERY", nargs="*",
                   help="words, identifiers or a question (a query starting with '-' goes after --: search -- -x)")
    p = add("export", "every span with its enrichment as JSON Lines on stdout")
    p.add_argument("--repo", help="only this configured repository")
    add("mcp", "serve the index to coding agents over MCP on stdio (extra [mcp])")
    p = sub.add_parser("install-unit", help="write the systemd unit for this installation")
    p.add_argument("--user", action="store_true", help="a user unit (systemctl --user)")
    p.add_argument("--run-as", help="system unit: the user that owns the repos")
    p.add_argument("--dest", help="directory to write to (default: the systemd unit directory)")
    return parser


def _wait_s(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, not {text!r}")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 100, not {text!r}")
    return value


def _load(args: argparse.Namespace) -> Config:
    config = load_config(locate_config(args.config))
    from llmc_rag_service.enrich.prompt import check_num_ctx

    check_num_ctx(config)
    logsetup.configure_logging(config.logging.level, config.logging.format)
    return config


def _err(text: str) -> None:
    """One line on stderr; a non-UTF-8 file name prints as escapes, never raises."""
    print(f"llmc-rag: {text}".encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)


def _owner(path: Path) -> str:
    import pwd

    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (OSError, KeyError):
        return "its owner"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed arguments; a usage error exits 2 (argparse) naming the bad argument.

    A search query that starts with '-' (``search -x``) reads as an unknown
    option: the error says to put it after ``--`` (``search -- -x``).
    """
    parser = _parser()
    if not (sys.argv[1:] if argv is None else argv):
        parser.print_help(sys.stderr)  # a bare `llmc-rag`: the commands, not an error line
        sys.exit(EX_BAD_QUERY)
    args, extra = parser.parse_known_args(argv)
    command: argparse.ArgumentParser = getattr(args, "subparser", parser)
    dashed = next((arg for arg in extra if arg.startswith("-")), None)
    hint = (f"; a query that starts with '-' goes after --, as in: llmc-rag search -- {dashed}"
            if args.command == "search" and dashed else "")
    if extra:
        command.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    if args.command == "search" and not args.query:
        command.error("the following arguments are required: QUERY")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parse(argv)
    stdout = sys.stdout
    if args.command not in ("serve", "mcp"):  # mcp: stdout is the protocol's, left to the SDK
        sys.stdout = cast(TextIO, CheckedOutput(stdout))
    try:
        status = _run(args)
        sys.stdout.flush()  # what is still buffered fails here, not unreported at exit
        return status
    except OutputError as exc:
        # Disk full or an I/O error under `> file`: the output's fault, not the store's.
        _err(f"{args.command}: cannot write the output to stdout: {exc}")
        discard_stdout()
        return EX_IOERR
    except BrokenPipeError:
        discard_stdout()
        return EX_OK
    finally:
        sys.stdout = stdout


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; returns the exit status."""
    try:
        if args.command == "install-unit":
            return _install_unit(args)
        if args.command == "doctor":
            return _doctor(args)
        try:
            config = _load(args)
        except ConfigError as exc:
            _err(f"config error: {exc}")
            return EX_CONFIG
        try:
            return {"serve": _serve, "enrich": _enrich, "status": _status, "show": _show, "search": _search,
                    "export": _export, "mcp": _mcp}[args.command](config, args)
        except BrokenPipeError:
            raise
        except PermissionError:
            owner = _owner(config.state_dir)
            who = "root" if owner == "root" else f"{owner} (the service's user) and root"
            _err(f"cannot read the store {config.db_path}: permission denied; only {who} may read it")
            return EX_IOERR
        except (StoreUnusable, OSError, sqlite3.Error) as exc:
            # A corrupt, unwritable, full or replaced store: one line naming it, no traceback.
            return _store_unusable(args.command, config, exc)
    except KeyboardInterrupt as exc:
        # enrich: pending work stays in the store for the next run.
        more = "; the pending work is kept: run llmc-rag enrich again to go on" if args.command == "enrich" else ""
        by = " by SIGTERM" if isinstance(exc, _Terminated) else ""
        print(f"llmc-rag: interrupted{by}{more}", file=sys.stderr)
        return EX_TERMINATED if isinstance(exc, _Terminated) else EX_INTERRUPTED
    except BrokenPipeError:
        # `llmc-rag status --json | head`: the reader left; say nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EX_OK


def _store_unusable(command: str, config: Config, exc: BaseException) -> int:
    """Say what is wrong with the store in one line (serve: a log event for
    the journal, named for the fault) and exit 74."""
    fault = classify(exc, config.db_path) if isinstance(exc, (StoreUnusable, sqlite3.Error)) else None
    if fault is None:
        _err(f"state unusable: {config.db_path}: {exc}")
    elif command == "serve":
        structlog.get_logger(__name__).error(fault.event, **fault.fields())
    else:
        _err(f"state unusable: {fault}")
    return EX_IOERR


def _serve(config: Config, args: argparse.Namespace) -> int:
    from llmc_rag_service.service.daemon import AlreadyRunning, Daemon

    try:
        # A watchdog timeout's SIGABRT (or a fatal error) dumps every thread's
        # stack to stderr, the journal, before the process dies.
        faulthandler.enable(all_threads=True)
        fatal = Daemon(config.source or find_config_path(args.config), config,
                       on_stop_overdue=lambda: os._exit(EX_SOFTWARE)).run()
    except AlreadyRunning as exc:
        structlog.get_logger(__name__).error("already_running", error=str(exc), pid=exc.pid,
                                             state_dir=str(exc.state_dir))
        return EX_SOFTWARE
    except (OSError, sqlite3.Error) as exc:
        if isinstance(exc, sqlite3.DatabaseError) and classify(exc, config.db_path):
            raise  # a store fault: said by main()
        structlog.get_logger(__name__).error("startup_failed", error=str(exc), state_dir=str(config.state_dir))
        return EX_IOERR
    return EX_OK if fatal is None else EX_IOERR  # a fatal store fault, logged by the daemon


def _enrich(config: Config, args: argparse.Namespace) -> int:
    from llmc_rag_service.service.oneshot import Outcome, run_enrich

    # SIGTERM (kill, a script's cleanup, a CI timeout) stops it as Ctrl-C does, with
    # the same closing line. SIGINT is left as inherited: a shell starts a
    # background job (`llmc-rag enrich &`) with SIGINT ignored, on purpose, so a
    # Ctrl-C at the terminal does not reach it; Python keeps that. A SIGTERM
    # inherited ignored stays ignored too (glibc manual, "Basic Signal Handling").
    # Only the main thread may set handlers (an embedding program may call main() elsewhere).
    previous = signal.getsignal(signal.SIGTERM)
    install = previous is not signal.SIG_IGN and threading.current_thread() is threading.main_thread()
    if install:
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        outcome = run_enrich(config, args.repos, args.wait_s, retry_failed=args.retry_failed)
    finally:
        if install:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return {Outcome.DONE: EX_OK, Outcome.SOME_FAILED: EX_FAILED, Outcome.REPO_MISSING: EX_NOINPUT,
            Outcome.GAVE_UP: EX_UNAVAILABLE}[outcome]


def _raise_terminated(signum: int, frame: object) -> None:
    # Raised in the main thread, as Python raises KeyboardInterrupt for SIGINT,
    # so a long scan stops too, not only the wait for answers.
    raise _Terminated


#: What plain ``status`` says after a repo's counts for each ``state`` but ok.
_STATE_NOTES = {"missing": " (missing: no directory at this path)",
                "polling": " (watched by polling: the inotify limits are reached, see doctor)",
                "unwatched": " (not in the config: searchable, not watched)"}


def _status(config: Config, args: argparse.Namespace) -> int:
    from llmc_rag_service.service.runtime import describe_store, store_report
    from llmc_rag_service.service.status import status_report

    report = {**status_report(config), "store": store_report(config)}
    if args.json:
        print(json.dumps(report, indent=2))
        return EX_OK
    print(describe_store(report["store"]))
    d = report["daemon"]
    by_hand = " (started by hand, not by systemd)" if d["running"] and report["store"]["service"] is None else ""
    print(f"daemon: {'running, pid ' + str(d['pid']) + by_hand if d['running'] else 'not running'}")
    if d["status"]:
        print(f"status: {d['status']}")
    o = report["ollama"]
    print(f"ollama: {o['url']} model {o['model']}" + (f" (last error: {o['last_error']})" if o["last_error"] else ""))
    for r in report["repos"] + [{"path": "total", **report["totals"]}]:
        embedded = f", {r['embedded']} embedded" if config.search.embed_model else ""
        print(f"{r['path']}: {_count(r['files'], 'file')}, {_count(r['spans'], 'span')}, {r['enriched']} enriched{embedded}, "
              f"{r['pending']} pending, {r['failed']} failed{_STATE_NOTES.get(r.get('state', 'ok'), '')}")
    return EX_OK


def _count(n: int, noun: str) -> str:
    """``1 file``, ``3 files``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _show(config: Config, args: argparse.Namespace) -> int:
    from llmc_rag_service.service.explain import utf8_name, why_no_spans
    from llmc_rag_service.service.status import resolve_file, show_report

    def spans_of(path: str, line: int | None = None) -> list[dict[str, Any]] | None:
        # A name that is not UTF-8 was never stored (and cannot be looked up).
        return show_report(config, path, line) if utf8_name(path) else None

    path, line = args.target, None
    head, sep, tail = args.target.rpartition(":")
    # A file may itself be named "x:12"; only an unknown name is read as PATH:LINE.
    if sep and tail.isdigit() and spans_of(args.target) is None:
        path, line = head, int(tail)
    spans = spans_of(path, line)
    if not spans:
        _err(why_no_spans(config, path, line))
        return EX_FAILED
    if args.json:
        print(json.dumps(spans, indent=2))
        return EX_OK
    if not spans[0]["fresh"]:
        _err(f"{path} changed since it was indexed: the line numbers below may be off until it is indexed "
             "again (a running serve does it within seconds; else run llmc-rag enrich)")
    where = resolve_file(config, path)  # the repo: show_report found the file in it
    for s in spans:
        # As search prints it (relative to the cwd when under it, else absolute), so it can be pasted.
        shown = shown_path(where[0] / s["path"], working_dir()) if where else printable_name(s["path"])
        # Names and model text escaped: a hostile name (or a model echoing it) may hold ESC sequences.
        print(f"{shown}:{s['start_line']}-{s['end_line']} "
              + printable_name(f"{s['kind']} {s['name']} [{s['state']}]"))
        if s["enrichment"]:
            e = s["enrichment"]
            print(f"  {printable_name(e['summary'])}")
            for key in ("inputs", "outputs", "side_effects", "pitfalls"):
                if e[key]:
                    print(f"  {key}: " + printable_name("; ".join(e[key])))
            if e["usage"]:
                print(f"  usage: {printable_name(e['usage'])}")
        elif s["error"]:
            print(f"  error: {printable_name(s['error'])}")
    return EX_OK


def _doctor(args: argparse.Namespace) -> int:
    from llmc_rag_service.service import doctor

    logsetup.configure_logging("error", "auto")  # the checks speak for themselves
    checks = doctor.run_checks(args.config)
    print(json.dumps(doctor.as_json(checks), indent=2) if args.json else doctor.as_text(checks))
    return EX_FAILED if any(c.status == "fail" for c in checks) else EX_OK


def _search(config: Config, args: argparse.Namespace) -> int:
    from llmc_rag_service.search import cli_view

    def run() -> None:
        result = cli_view.run_search(config, " ".join(args.query), mode=args.mode, limit=args.limit, repo=args.repo,
                                     path=args.path, language=args.lang, kind=args.kind, err=sys.stderr)
        cli_view.print_result(result, sys.stdout, sys.stderr, args.json)

    return _read_store("search", run)


def _export(config: Config, args: argparse.Namespace) -> int:
    from llmc_rag_service.search import cli_view

    return _read_store("export", lambda: cli_view.run_export(config, sys.stdout, args.repo, sys.stderr))


def _read_store(command: str, run: Callable[[], object]) -> int:
    """Run a read command: a bad query or filter exits 2, a store that cannot be read 74, each with one line."""
    from llmc_rag_service.search import QueryError, StoreUnusable

    try:
        run()
    except QueryError as exc:
        _err(f"{command}: {exc}")
        return EX_BAD_QUERY
    except (StoreUnusable, sqlite3.Error) as exc:
        _err(f"{command}: the store cannot be used: {exc}")
        return EX_IOERR
    return EX_OK


def _mcp(config: Config, args: argparse.Namespace) -> int:
    try:
        from llmc_rag_service.mcp.server import run
    except ImportError as exc:
        _err(f"the MCP server needs the optional extra: pip install 'llmc-rag-service[mcp]' ({exc})")
        return EX_UNAVAILABLE
    run(config)  # stdout is the protocol: everything else goes to stderr
    return EX_OK


def _install_unit(args: argparse.Namespace) -> int:
    from llmc_rag_service.service.units import UnitError, install_unit

    try:
        path = install_unit(args.user, Path(args.dest) if args.dest else None, args.run_as)
    except UnitError as exc:
        _err(f"install-unit: {exc}")
        return EX_USAGE
    scope = "--user " if args.user else ""
    print(f"wrote {path}")
    exec_line = next((line for line in path.read_text().splitlines() if line.startswith("ExecStart=")), "")
    private_tmp = "PrivateTmp=yes" in path.read_text().splitlines()  # the system unit's; the user unit has none
    if private_tmp and ("/tmp/" in exec_line or "/var/tmp/" in exec_line):
        print("llmc-rag: warning: ExecStart points into a temporary directory, which the unit's "
              "PrivateTmp=yes hides from the service; install llmc-rag elsewhere", file=sys.stderr)
    if not args.user and not args.run_as:
        print("llmc-rag: warning: User=llmc-rag is a placeholder; pass --run-as USER (the owner of the repos) "
              "or set User= in a drop-in", file=sys.stderr)
    if args.dest:
        print(f"next: copy it into the systemd unit directory, then systemctl {scope}daemon-reload")
    else:
        print(f"next: systemctl {scope}daemon-reload && systemctl {scope}enable --now llmc-rag")
    return EX_OK
