"""The persistent job queue (table ``jobs`` of the store).

Jobs have a ``kind``: ``enrich`` (this module's :class:`JobQueue`: one span
content hash for one chat model and prompt version) or ``embed``
(:class:`~llmc_rag_service.store.embed_jobs.EmbedQueue`: one span content hash
for one embedding model and input version, kept in the same ``model`` and
``prompt_version`` columns). Both kinds share the states and guarantees::

    pending --claim--> running --complete--> done
       ^                  |
       +---- retry -------+  (attempts += 1, next_attempt_at = now + backoff)
       +---- release -----+  (attempts unchanged: outage, model missing, busy)
                          +--fail/dead_letter--> failed  (last_error kept)

Jobs are deduplicated by ``(kind, span_hash, model, prompt_version)``; a lower
``priority`` runs first (:data:`PRIORITY_LIVE` for a just-saved file,
:data:`PRIORITY_BACKFILL` for scans). A job whose span no longer exists in any
file is never claimed and is cancelled (deleted), so nothing is sent for
content that is gone. ``claimed_by`` holds the claiming process id, so a job
left ``running`` by a dead process is found and returned to pending.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import random
import sqlite3
from typing import Callable, Iterable

from llmc_rag_service.clock import SYSTEM, Clock
from llmc_rag_service.models import PROMPT_VERSION, Enrichment, Job
from llmc_rag_service.store.db import Store

#: The kinds of job (the CHECK of ``jobs.kind``).
KINDS = ("enrich", "embed")

PRIORITY_LIVE = 0
PRIORITY_BACKFILL = 10

#: Backoff after the first failed attempt, and its cap, in seconds.
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 300.0

# A job is only claimable while some current span still has its hash.
_HAS_SPAN = "EXISTS (SELECT 1 FROM spans s WHERE s.span_hash = jobs.span_hash)"

# Pending jobs of one key not due yet (backoff, deferred): a skip-scan of jobs_ready
# (kind, state, priority, next_attempt_at), one range per priority present.
_NOT_DUE_SQL = """
WITH RECURSIVE p(v) AS (
    SELECT (SELECT MIN(priority) FROM jobs WHERE kind = :kind AND state = 'pending')
    UNION ALL
    SELECT (SELECT MIN(priority) FROM jobs WHERE kind = :kind AND state = 'pending' AND priority > p.v)
    FROM p WHERE p.v IS NOT NULL)
SELECT COUNT(*) FROM p JOIN jobs j ON j.kind = :kind AND j.state = 'pending' AND j.priority = p.v
    AND j.next_attempt_at > :now
WHERE j.model = :model AND j.prompt_version = :ver"""

#: Prefix of the ``meta`` keys marking a queue key's catch-up as complete (see JobQueue.enqueue_missing).
COMPLETE_MARK = "queue_complete:"


def is_complete(tx: sqlite3.Connection, mark: str) -> bool:
    """Whether the catch-up mark ``mark`` is set (inside ``tx``)."""
    return tx.execute("SELECT 1 FROM meta WHERE key = ?", (mark,)).fetchone() is not None


def mark_complete(tx: sqlite3.Connection, mark: str) -> None:
    """Set the catch-up mark ``mark`` (inside the transaction of its pass)."""
    tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, '1')", (mark,))


def forget_complete(tx: sqlite3.Connection, kept: Iterable[str], kind: str = "") -> None:
    """Inside ``tx``, drop every catch-up mark (of ``kind``, or all kinds) but
    ``kept``: spans were added and only the keys in ``kept`` got jobs for them,
    or an enrichment was stored and no embedding queue was told."""
    keep = list(kept)
    prefix = COMPLETE_MARK + kind
    tx.execute(f"DELETE FROM meta WHERE key >= ? AND key < ? AND key NOT IN ({','.join('?' * len(keep))})",
               (prefix, prefix + "\U0010ffff", *keep))


def backoff_s(attempt: int, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_MAX_S) -> float:
    """Jittered exponential backoff ("full jitter" between half and all of
    ``base_s * 2**(attempt-1)``, capped at ``cap_s``), in seconds, for the
    ``attempt``-th failure (1-based)."""
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def _pid_alive(pid: int, claimed_at: float | None = None) -> bool:
    """Whether the process that claimed a job may still be working on it.

    False for a pid that does not exist, a zombie (killed, not yet reaped by
    its parent: ``/proc/PID/stat`` state ``Z``), or a pid reused by a process
    that started after the claim (``claimed_at``, wall seconds): ``os.kill(pid,
    0)`` alone says "alive" for all three (proc(5), fields 3 and 22)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _process_start(pid)
    if started is None:
        return True  # no /proc (or it vanished meanwhile): trust kill(0)
    state, start_s = started
    if state == "Z":
        return False
    return claimed_at is None or start_s <= claimed_at + 1.0


def _process_start(pid: int) -> tuple[str, float] | None:
    """(state letter, start time in wall seconds) of ``pid`` from /proc, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        with open("/proc/stat") as f:
            btime = next(float(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return fields[0], btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


class JobQueue:
    """Queue operations for one kind of job and one model (``model``) on a :class:`Store`.

    Args:
        store: The state store.
        model: Ollama model name; jobs and results are per model.
        max_attempts: Failed attempts before a job is dead-lettered.
        clock: Its ``time()`` (wall seconds) stamps jobs and decides when a
            backed-off job is due; tests pass a manual clock.

    ``on_result(tx, span_hash)`` is called inside the transaction that stores
    a result (e.g. to queue the span's re-embedding when its enrichment lands).
    Subclasses set :attr:`KIND`, :attr:`HAS_RESULT` (an SQL condition with the
    parameters ``:h`` span hash, ``:model``, ``:ver``) and :attr:`version`.
    """

    KIND = "enrich"
    HAS_RESULT = ("EXISTS (SELECT 1 FROM enrichments r WHERE r.span_hash = :h AND r.model = :model"
                  " AND r.prompt_version = :ver)")

    def __init__(self, store: Store, model: str, max_attempts: int = 5, clock: Clock = SYSTEM):
        self.store, self.model, self.max_attempts, self.clock = store, model, max_attempts, clock
        self.prompt_version = PROMPT_VERSION
        self.on_result: Callable[[sqlite3.Connection, str], None] | None = None

    @property
    def version(self) -> int:
        """The version part of the job key (the prompt version for enrichments)."""
        return self.prompt_version

    def _key(self) -> tuple[str, str, int]:
        return self.KIND, self.model, self.version

    def _params(self, **extra: object) -> dict[str, object]:
        return {"kind": self.KIND, "model": self.model, "ver": self.version, **extra}

    def enqueue(self, tx: sqlite3.Connection, span_hashes: Iterable[str], priority: int) -> int:
        """Inside ``tx``, add a pending job for each hash that has neither a
        result nor a job yet; raise the priority of waiting ones. New spans
        were cut without the other job kinds' queues, if any: their catch-up
        marks are dropped (see :meth:`enqueue_missing`).

        Returns the number of jobs created.
        """
        hashes = list(span_hashes)
        created = self.add_jobs(tx, hashes, priority)
        if hashes:
            forget_complete(tx, [self.complete_mark])
        return created

    def add_jobs(self, tx: sqlite3.Connection, span_hashes: Iterable[str], priority: int) -> int:
        """:meth:`enqueue` without touching the catch-up marks (the caller does).

        Two statements for the whole batch (hashes passed as one JSON array),
        not two per span: a cold scan queues every span of the tree.
        """
        hashes = json.dumps(list(dict.fromkeys(span_hashes)))
        params = self._params(hashes=hashes, prio=priority, now=self.clock.time())
        result = self.HAS_RESULT.replace(":h", "h.value")
        created = tx.execute(
            f"""INSERT INTO jobs(kind, span_hash, model, prompt_version, state, priority, created_at, updated_at)
                SELECT :kind, h.value, :model, :ver, 'pending', :prio, :now, :now FROM json_each(:hashes) h
                WHERE NOT {result} ON CONFLICT DO NOTHING""", params).rowcount
        if priority < PRIORITY_BACKFILL:  # no job waits at a lower priority than a backfill's
            # CROSS JOIN keeps json_each outermost: one job-key index lookup per
            # hash (the planner otherwise walks the jobs, seconds on a large queue).
            tx.execute(
                """UPDATE jobs SET priority = :prio WHERE id IN (SELECT j.id FROM json_each(:hashes) h CROSS
                   JOIN jobs j ON j.kind = :kind AND j.span_hash = h.value AND j.model = :model
                   AND j.prompt_version = :ver WHERE j.state = 'pending' AND j.priority > :prio)""",
                params)
        return created

    def cancel_orphans(self, tx: sqlite3.Connection, span_hashes: Iterable[str] | None = None) -> int:
        """Inside ``tx``, delete pending jobs whose span is in no file any more.

        ``span_hashes`` limits the check to those hashes (the spans a file just
        lost): a per-file scan step must not cost a pass over every pending job,
        or a large backfill becomes quadratic."""
        if span_hashes is None:
            return tx.execute(f"DELETE FROM jobs WHERE kind = ? AND state = 'pending' AND NOT {_HAS_SPAN}",
                              (self.KIND,)).rowcount
        # ``+state``: without it SQLite walks every pending job of the kind
        # (jobs_claim's (kind, state) prefix) for each hash instead of the job
        # key index's (kind, span_hash): quadratic in a checkout of 10k files.
        return tx.execute(
            f"""DELETE FROM jobs WHERE kind = ? AND span_hash IN (SELECT value FROM json_each(?))
                AND +state = 'pending' AND NOT {_HAS_SPAN}""",
            (self.KIND, json.dumps(sorted(set(span_hashes))))).rowcount

    @property
    def complete_mark(self) -> str:
        """The ``meta`` key saying every span in the tree has a result or a job
        of this queue's key (see :meth:`enqueue_missing`)."""
        return f"{COMPLETE_MARK}{self.KIND}:{self.model}:{self.version}"

    def enqueue_missing(self, tx: sqlite3.Connection, priority: int = PRIORITY_BACKFILL) -> int:
        """Inside ``tx``, queue every span hash in the tree that has neither a
        result nor a job for this model and version (after the model or prompt
        changed, or spans were cut while this queue was not in force). Returns
        how many were queued.

        Incremental: once a pass has run, its mark (:attr:`complete_mark` in
        ``meta``) stays while every new span is queued with this key, which
        :meth:`enqueue` and :meth:`QueueSet.enqueue` see to (they drop the marks
        of the keys they do not serve). With the mark in place nothing can be
        missing and the pass is skipped: a full scan of an unchanged tree (every
        restart) costs one ``meta`` read here, not a pass over every span.
        """
        if is_complete(tx, self.complete_mark):
            return 0
        queued = self._missing_pass(tx, priority)
        mark_complete(tx, self.complete_mark)
        return queued

    def _missing_pass(self, tx: sqlite3.Connection, priority: int) -> int:
        """The pass over every span of :meth:`enqueue_missing`."""
        result = self.HAS_RESULT.replace(":h", "s.span_hash")
        return tx.execute(
            f"""INSERT INTO jobs(kind, span_hash, model, prompt_version, state, priority, created_at, updated_at)
               SELECT DISTINCT :kind, s.span_hash, :model, :ver, 'pending', :prio, :now, :now FROM spans s
               WHERE NOT {result}
               ON CONFLICT DO NOTHING""", self._params(prio=priority, now=self.clock.time())).rowcount

    def requeue_failed(self, repo_ids: Iterable[int]) -> int:
        """Give dead-lettered jobs of this model whose spans are in the given
        repos a fresh start (pending, no attempts), e.g. after the cause was
        fixed. Returns how many."""
        ids = list(repo_ids)
        marks = ",".join("?" * len(ids))
        with self.store.write() as tx:
            return tx.execute(
                f"""UPDATE jobs SET state = 'pending', attempts = 0, next_attempt_at = 0, updated_at = ?
                    WHERE state = 'failed' AND kind = ? AND model = ? AND prompt_version = ? AND span_hash IN
                    (SELECT s.span_hash FROM spans s JOIN files f ON f.id = s.file_id WHERE f.repo_id IN ({marks}))""",
                (self.clock.time(), *self._key(), *ids),
            ).rowcount

    def recover(self, every_kind: bool = False, busy_timeout_s: float | None = None) -> int:
        """Return jobs of this kind (or of ``every_kind``) left ``running`` by a
        dead process (or by an earlier life of this one) to pending, waiting at
        most ``busy_timeout_s`` seconds for the write lock (default the store's).
        Returns how many."""
        kinds = KINDS if every_kind else (self.KIND,)
        rows = self.store.conn.execute(
            f"SELECT id, claimed_by, claimed_at FROM jobs WHERE state = 'running' "
            f"AND kind IN ({','.join('?' * len(kinds))})", kinds).fetchall()
        stale = [r["id"] for r in rows if r["claimed_by"] in (None, os.getpid())
                 or not _pid_alive(r["claimed_by"], r["claimed_at"])]
        with self.store.write(busy_timeout_s) as tx:
            tx.executemany(
                "UPDATE jobs SET state = 'pending', claimed_by = NULL WHERE id = ? AND state = 'running'",
                [(i,) for i in stale],
            )
        return len(stale)

    def claim(self, max_priority: int | None = None) -> Job | None:
        """Atomically take the most urgent ready job (pending, due, span still
        present) and mark it running by this process; None if there is none.
        ``max_priority``: only a job of that priority or a more urgent one
        (:data:`PRIORITY_LIVE`: the workers' live slot takes saves only)."""
        jobs = self.claim_many(1, max_priority)
        return jobs[0] if jobs else None

    def claim_many(self, limit: int, max_priority: int | None = None) -> list[Job]:
        """Atomically take up to ``limit`` ready jobs, most urgent first (see :meth:`claim`)."""
        now = self.clock.time()
        urgent = "" if max_priority is None else "AND priority <= :maxprio"
        with self.store.write() as tx:
            rows = tx.execute(
                f"""UPDATE jobs SET state = 'running', claimed_by = :pid, claimed_at = :now, updated_at = :now
                    WHERE id IN (SELECT id FROM jobs WHERE state = 'pending' AND kind = :kind AND model = :model
                                 AND prompt_version = :ver AND next_attempt_at <= :now AND {_HAS_SPAN} {urgent}
                                 ORDER BY priority, id LIMIT :limit)
                    RETURNING id, span_hash, model, attempts, priority""",
                self._params(pid=os.getpid(), now=now, limit=limit, maxprio=max_priority)).fetchall()
        return sorted((Job(*row) for row in rows), key=lambda job: (job.priority, job.id))

    def complete(self, job: Job, enrichment: Enrichment, duration_s: float | None) -> None:
        """Store the enrichment and mark the job done, in one transaction.
        ``duration_s``: seconds the request took (None: taken from the team cache)."""
        self.complete_many([(job, enrichment, duration_s)])

    def complete_many(self, results: Iterable[tuple[Job, Enrichment, float | None]]) -> None:
        """:meth:`complete` for several ``(job, enrichment, duration_s)`` in one
        transaction: all stored or none (the worker pool's result writer)."""
        with self.store.write() as tx:
            for job, enrichment, duration_s in results:
                self._put_enrichment(tx, job.span_hash, enrichment, duration_s)
                self.mark_done(tx, job)
                if self.on_result is not None:
                    self.on_result(tx, job.span_hash)
            if self.on_result is None:
                forget_complete(tx, [], kind="embed")  # see _result_stored, once per transaction

    def _result_stored(self, tx: sqlite3.Connection, span_hash: str) -> None:
        """An enrichment landed: tell ``on_result``; with none, no embedding
        queue re-embedded the span, so their catch-up marks go."""
        if self.on_result is not None:
            self.on_result(tx, span_hash)
        else:
            forget_complete(tx, [], kind="embed")

    def mark_done(self, tx: sqlite3.Connection, job: Job, basis: str | None = None) -> None:
        """Inside ``tx``, mark a claimed job done (its attempt counted); ``basis``
        records what the result was made from (see EmbedQueue)."""
        tx.execute("UPDATE jobs SET state = 'done', attempts = attempts + 1, last_error = NULL, basis = ?,"
                   " updated_at = ? WHERE id = ?", (basis, self.clock.time(), job.id))

    def _put_enrichment(self, tx: sqlite3.Connection, span_hash: str, e: Enrichment, duration_s: float | None) -> None:
        tx.execute(
            """INSERT OR REPLACE INTO enrichments(span_hash, model, prompt_version, summary, inputs, outputs,
               side_effects, pitfalls, usage, created_at, duration_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (span_hash, self.model, self.prompt_version, e.summary, json.dumps(e.inputs), json.dumps(e.outputs),
             json.dumps(e.side_effects), json.dumps(e.pitfalls), e.usage, self.clock.time(), duration_s),
        )

    def retry(self, job: Job, error: str, delay_s: float | None = None) -> bool:
        """Count a failed attempt. Back to pending after a jittered backoff (or
        ``delay_s``), or dead-lettered (``failed``) once ``max_attempts`` is
        reached. Returns True if the job was dead-lettered."""
        attempts = job.attempts + 1
        if attempts >= self.max_attempts:
            self.fail(job, error, attempts)
            return True
        delay = backoff_s(attempts) if delay_s is None else delay_s
        self._update(job, "pending", attempts, error, self.clock.time() + delay)
        return False

    def fail(self, job: Job, error: str, attempts: int | None = None) -> None:
        """Dead-letter the job at once, keeping ``error`` as its reason."""
        self._update(job, "failed", job.attempts + 1 if attempts is None else attempts, error, 0)

    def release(self, job: Job, delay_s: float = 0.0, error: str | None = None) -> None:
        """Put a claimed job back without counting an attempt (the server was
        unreachable, busy or missing the model: not the job's fault)."""
        self._update(job, "pending", job.attempts, error, self.clock.time() + delay_s)

    def _update(self, job: Job, state: str, attempts: int, error: str | None, next_at: float) -> None:
        with self.store.write() as tx:
            tx.execute(
                """UPDATE jobs SET state = ?, attempts = ?, last_error = ?, next_attempt_at = ?,
                   claimed_by = NULL, updated_at = ? WHERE id = ?""",
                (state, attempts, error, next_at, self.clock.time(), job.id),
            )

    def counts(self) -> dict[str, int]:
        """Live job counts for this model: ``pending`` (incl. waiting for
        backoff), ``ready`` (due now), ``running``, ``failed``, ``done``.

        Every count but ``ready`` comes from the running tallies (``job_tallies``,
        kept by triggers; no pending job outlives its span: migration 9), and
        ``ready`` is ``pending`` less the jobs not yet due, found through the
        ``jobs_ready`` index one priority at a time. So the cost grows with the
        jobs waiting out a backoff or a teammate, never with the backlog."""
        tallies = self.tallies()
        pending = tallies.get("pending", 0)
        waiting = self.store.conn.execute(_NOT_DUE_SQL, self._params(now=self.clock.time())).fetchone()[0]
        return {"pending": pending, "ready": pending - waiting, "running": tallies.get("running", 0),
                "failed": tallies.get("failed", 0), "done": tallies.get("done", 0)}

    def tallies(self) -> dict[str, int]:
        """Jobs of this key per state, from the running tallies (every job,
        whether its span exists or not; states without a job may be absent or 0)."""
        return dict(self.store.conn.execute(
            "SELECT state, n FROM job_tallies WHERE kind = ? AND model = ? AND prompt_version = ?", self._key()))

    def recount(self) -> dict[str, int]:
        """Jobs of this key per state, counted row by row: what :meth:`tallies`
        must equal (a check for tests and ``doctor``; costs a pass over the jobs)."""
        return dict(self.store.conn.execute(
            "SELECT state, COUNT(*) FROM jobs WHERE kind = ? AND model = ? AND prompt_version = ? GROUP BY state",
            self._key()))

    def next_due_s(self) -> float | None:
        """Seconds until the earliest pending job is due (0 if one is due), None if none."""
        row = self.store.conn.execute(
            f"SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'pending' AND kind = ? AND model = ?"
            f" AND prompt_version = ? AND {_HAS_SPAN}",
            self._key(),
        ).fetchone()
        return None if row[0] is None else max(0.0, row[0] - self.clock.time())

    # -- team mode (service/teamgate.py): which jobs a teammate may have done --
    def pending_after(self, job_id: int, limit: int) -> list[tuple[int, str]]:
        """``(id, span_hash)`` of up to ``limit`` pending jobs with an id above
        ``job_id``, by id: the jobs queued since the team cache was last asked."""
        return [tuple(r) for r in self.store.conn.execute(
            "SELECT id, span_hash FROM jobs WHERE id > ? AND state = 'pending' AND kind = ? AND model = ? AND prompt_version = ? "
            "ORDER BY id LIMIT ?", (job_id, *self._key(), limit))]

    def upcoming(self, limit: int) -> list[str]:
        """Span hashes of the next ``limit`` ready jobs, in the order :meth:`claim` takes them."""
        return [r[0] for r in self.store.conn.execute(
            f"""SELECT span_hash FROM jobs WHERE state = 'pending' AND kind = ? AND model = ? AND prompt_version = ?
                AND next_attempt_at <= ? AND {_HAS_SPAN} ORDER BY priority, id LIMIT ?""",
            (*self._key(), self.clock.time(), limit))]

    def states(self, span_hashes: Iterable[str]) -> dict[str, str]:
        """The job state of each of ``span_hashes`` that has a job (absent: no job)."""
        hashes = list(dict.fromkeys(span_hashes))
        out: dict[str, str] = {}
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            out.update(self.store.conn.execute(
                f"SELECT span_hash, state FROM jobs WHERE kind = ? AND model = ? AND prompt_version = ? "
                f"AND span_hash IN ({','.join('?' * len(chunk))})", (*self._key(), *chunk)).fetchall())
        return out

    def defer(self, span_hashes: Iterable[str], delay_s: float) -> int:
        """Make the pending jobs of ``span_hashes`` due in ``delay_s`` seconds
        (a teammate is enriching them; 0: due now, the team is gone), without
        counting an attempt. Returns how many."""
        at = self.clock.time() + delay_s
        with self.store.write() as tx:
            return sum(tx.execute(
                "UPDATE jobs SET next_attempt_at = ?, updated_at = ? WHERE span_hash = ? "
                "AND kind = ? AND model = ? AND prompt_version = ? AND state = 'pending'",
                (at, self.clock.time(), h, *self._key())).rowcount for h in dict.fromkeys(span_hashes))

    def complete_pending(self, results: dict[str, Enrichment]) -> list[tuple[int, str]]:
        """Store enrichments that came from elsewhere (the team cache) and mark
        their *pending* jobs done, in one transaction; a job a worker is running
        is left to it. Returns ``(job id, span_hash)`` of the jobs completed."""
        done: list[tuple[int, str]] = []
        now = self.clock.time()
        with self.store.write() as tx:
            for span_hash, enrichment in results.items():
                row = tx.execute(
                    "UPDATE jobs SET state = 'done', last_error = NULL, updated_at = ? WHERE span_hash = ? "
                    "AND kind = ? AND model = ? AND prompt_version = ? AND state = 'pending' RETURNING id",
                    (now, span_hash, *self._key())).fetchone()
                if row:
                    self._put_enrichment(tx, span_hash, enrichment, None)
                    self._result_stored(tx, span_hash)  # e.g. its re-embedding, as for a local result
                    done.append((row[0], span_hash))
        return done

class QueueSet:
    """Several queues fed from the same scans: every span needs each kind of
    work (an enrichment, an embedding). Offers the scanner's side of
    :class:`JobQueue` (``enqueue``, ``cancel_orphans``, ``enqueue_missing``);
    counts are summed over the queues."""

    def __init__(self, *queues: JobQueue | None):
        self.queues = [q for q in queues if q is not None]

    def enqueue(self, tx: sqlite3.Connection, span_hashes: Iterable[str], priority: int) -> int:
        """Queue the hashes in every queue (see :meth:`JobQueue.enqueue`); the
        catch-up marks of other keys than these queues' are dropped."""
        hashes = list(span_hashes)
        created = sum(q.add_jobs(tx, hashes, priority) for q in self.queues)
        if hashes:
            forget_complete(tx, [q.complete_mark for q in self.queues])
        return created

    def cancel_orphans(self, tx: sqlite3.Connection, span_hashes: Iterable[str] | None = None) -> int:
        hashes = None if span_hashes is None else list(span_hashes)
        return sum(q.cancel_orphans(tx, hashes) for q in self.queues)

    def enqueue_missing(self, tx: sqlite3.Connection, priority: int = PRIORITY_BACKFILL) -> int:
        return sum(q.enqueue_missing(tx, priority) for q in self.queues)
