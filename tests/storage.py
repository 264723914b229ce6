"""Real storage faults for the tests: a state disk that fills, damaged state files.

:class:`SmallDisk` puts a state dir on a real tmpfs of a few MB when this
process may mount one (root with CAP_SYS_ADMIN, as in CI), and fills it with a
filler file: SQLite's WAL then cannot grow and the store gets the kernel's
ENOSPC as SQLITE_FULL. Where mounting is impossible, the test makes the same
SQLite error itself one layer up: every write transaction runs under
``PRAGMA max_page_count`` pinned at the size the file had when it was
"filled", so SQLite raises its real SQLITE_FULL ("database or disk is full")
as soon as the store must grow.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from llmc_rag_service.store import database

#: Bytes of the tmpfs: room for a small store and its WAL, and little else.
DISK_BYTES = 4 * 1024 * 1024
#: SQLite's largest page count: "no limit".
NO_PAGE_LIMIT = 1073741823


class SmallDisk:
    """A state dir (``path``) whose filesystem the test fills and frees.

    ``mounted`` tells which fault it makes (see the module docstring).
    """

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch, mount: bool = True):
        self.path = path
        path.mkdir(parents=True)
        self.mounted = mount and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700", "tmpfs", str(path)],
            capture_output=True).returncode == 0
        self.filler = path / "filler"
        self.page_limit: int | None = None
        if not self.mounted:
            self._limit_pages(monkeypatch)

    def _limit_pages(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = database.Database.write

        def write(db, busy_timeout_s=None):
            db.conn.execute(f"PRAGMA max_page_count = {self.page_limit or NO_PAGE_LIMIT}")
            return original(db, busy_timeout_s)

        monkeypatch.setattr(database.Database, "write", write)

    def fill(self) -> None:
        """Leave no room for the store to grow."""
        if not self.mounted:
            with contextlib.closing(sqlite3.connect(self.path / "llmc-rag.db")) as conn:
                self.page_limit = conn.execute("PRAGMA page_count").fetchone()[0]
            return
        with open(self.filler, "ab", buffering=0) as f:
            chunk = b"\0" * 65536
            while True:
                try:
                    f.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        break
                    chunk = chunk[: len(chunk) // 2]

    def free(self) -> None:
        """Give the room back."""
        self.page_limit = None
        if self.filler.exists():
            self.filler.unlink()

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=True)


@pytest.fixture(params=["filesystem", "page_limit"])
def small_disk(request, tmp_path, monkeypatch):
    """A :class:`SmallDisk` at ``tmp_path/state``: each test runs on a real
    small filesystem (where one can be mounted) and under the page limit."""
    disk = SmallDisk(tmp_path / "state", monkeypatch, mount=request.param == "filesystem")
    yield disk
    disk.close()


def integrity(db_path: Path) -> str:
    """``PRAGMA integrity_check`` of the file: ``ok`` or the problems found."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return "; ".join(r[0] for r in conn.execute("PRAGMA integrity_check"))


def done_without_enrichment(db_path: Path) -> int:
    """Jobs marked done whose enrichment is missing: half-written results (must be 0)."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return conn.execute(
            """SELECT COUNT(*) FROM jobs j WHERE j.state = 'done' AND NOT EXISTS (SELECT 1 FROM enrichments e
               WHERE e.span_hash = j.span_hash AND e.model = j.model AND e.prompt_version = j.prompt_version)"""
        ).fetchone()[0]


def enriched(db_path: Path) -> int:
    """Enrichments stored."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return conn.execute("SELECT COUNT(*) FROM enrichments").fetchone()[0]


def damaged_state(kind: str, db_path: Path, sample_store: Path) -> None:
    """Write a damaged state file of ``kind`` at ``db_path``:

    * ``random``: random bytes;
    * ``header``: a valid SQLite header (the first 100 bytes of ``sample_store``, a real store) followed by garbage;
    * ``pages``: a real store whose pages after the first are garbage (met by queries, not at open);
    * ``foreign``: another application's SQLite database (its own tables and schema version);
    * ``foreign-unversioned``: the same without a schema version (would read as a new, empty store).
    """
    db_path.parent.mkdir(parents=True, exist_ok=True)
    real = sample_store.read_bytes()
    if kind == "random":
        data = os.urandom(16384)
    elif kind == "header":
        data = real[:100] + os.urandom(16384)
    elif kind == "pages":
        page = int.from_bytes(real[16:18], "big") or 65536
        data = real[:page] + os.urandom(len(real) - page)
    else:
        version = 0 if kind == "foreign-unversioned" else 3
        with contextlib.closing(sqlite3.connect(db_path)) as conn:
            conn.executescript("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT); "
                               f"INSERT INTO users(name) VALUES ('ann'); PRAGMA user_version = {version};")
        return
    db_path.write_bytes(data)


def run_without_root_powers(args: list[str]) -> subprocess.CompletedProcess:
    """``python -m llmc_rag_service ARGS`` in a subprocess that directory
    permissions bind: as root, with the capabilities that bypass them dropped."""
    command = [sys.executable, "-m", "llmc_rag_service", *args]
    if os.geteuid() == 0:
        command = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def read_only(state_dir: Path):
    """Make ``state_dir`` and the files in it read-only (as a read-only mount
    would; see :func:`run_without_root_powers`), and writable again after."""
    files = [p for p in state_dir.iterdir() if p.is_file()]
    for path in files:
        path.chmod(0o400)
    state_dir.chmod(0o500)
    try:
        yield
    finally:
        state_dir.chmod(0o700)
        for path in files:
            path.chmod(0o600)
