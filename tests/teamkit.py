"""Helpers for team-mode tests: daemons (real Pipelines) on copies of one real code base, sharing one PostgreSQL."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import llmc_rag_service
from llmc_rag_service.service.pipeline import Pipeline
from llmc_rag_service.team.settings import TeamSettings
from llmc_rag_service.testing.repos import make_config
from tests.helpers import wait_for

_PACKAGES = Path(llmc_rag_service.__file__).parent
#: The real code base the daemons watch: a package of this product's own source (the team package, some 130
#: spans: enough for three daemons at two requests each to contend for spans; every span costs CPU, so no more).
CODE_BASE = [_PACKAGES / "team"]


#: A smaller real code base (the search package, some 75 spans), for tests that embed too.
SMALL_CODE_BASE = [_PACKAGES / "search"]

#: A tiny real code base (the mcp package, some 15 spans), for tests of what happens to a few texts or spans.
TINY_CODE_BASE = [_PACKAGES / "mcp"]


def copy_code_base(dest: Path, packages: list[Path] = CODE_BASE) -> Path:
    """A copy of ``packages`` (default :data:`CODE_BASE`) at ``dest`` (the same relative paths in every copy)."""
    for package in packages:
        shutil.copytree(package, dest / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def team_settings(lease_s: float = 30.0, **overrides: Any) -> TeamSettings:
    """Short timeouts for tests (an unreachable server costs ~2 s, libpq's minimum connect_timeout), probes
    at most 0.25 s apart (a test that restarts the server waits for the first one after), and a short wait
    for a text a teammate embeds right now (its vector comes within a few requests' time)."""
    return TeamSettings(**{"connect_timeout_s": 2.0, "statement_timeout_s": 2.0, "lease_s": lease_s,
                           "probe_max_s": 0.25, "embed_wait_s": 0.1, **overrides})


#: The embedding model of :class:`Daemon` ``(embed=True)``; install it in the emulator (``embed_models=[EMBED]``).
EMBED = "nomic-embed-text"


class Daemon:
    """One developer's daemon: its own copy of the code base (or of ``source``) and its own state dir, a real
    :class:`Pipeline` with team mode on ``dsn`` (workers not started until :meth:`start`); with ``embed``, its
    embedding lane on (:data:`EMBED`)."""

    def __init__(self, tmp_path: Path, name: str, url: str, dsn: str | None, settings: TeamSettings,
                 concurrency: int = 2, source: Path | None = None, embed: bool = False):
        home = tmp_path / name
        self.repo = home / "repo"
        if source is None:
            copy_code_base(self.repo)
        else:
            shutil.copytree(source, self.repo)
        team = {"postgres": dsn, "lease_s": settings.lease_s} if dsn else {}
        self.config = make_config(home, url, [self.repo], team=team, logging={"level": "info"},
                                  ollama={"concurrency": concurrency}, search={"embed_model": EMBED if embed else None})
        self.changed = threading.Event()
        self.pipeline = Pipeline(self.config, on_change=self.changed.set, team_settings=settings)
        self.pipeline.scan_all()

    def start(self) -> Daemon:
        self.pipeline.start_workers()
        return self

    def settled(self) -> bool:
        counts = self.pipeline.counts()
        embeds = self.pipeline.embed_counts() or {"pending": 0, "running": 0}
        return counts["pending"] + counts["running"] + embeds["pending"] + embeds["running"] == 0

    def wait_done(self, timeout_s: float = 40.0) -> None:
        wait_for(self.settled, timeout_s, f"{self.repo.parent.name}: every job done")

    def rows(self, sql: str) -> set:
        return {tuple(r) if len(r) > 1 else r[0] for r in self.pipeline.store.conn.execute(sql)}

    def span_hashes(self) -> set[str]:
        return self.rows("SELECT DISTINCT span_hash FROM spans")

    def enriched(self) -> set[str]:
        return self.rows("SELECT span_hash FROM enrichments")

    def vectors(self) -> dict[str, bytes]:
        """Span hash -> its stored vector (float32 bytes) of :data:`EMBED`."""
        rows = self.pipeline.store.conn.execute("SELECT span_hash, vector FROM embeddings WHERE embed_model = ?",
                                                (EMBED,))
        return {r[0]: bytes(r[1]) for r in rows}

    def close(self) -> None:
        self.pipeline.close(2.0)
