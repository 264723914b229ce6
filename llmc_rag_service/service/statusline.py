"""The systemd STATUS line: one sentence saying what the daemon does or waits for.

DESIGN.md "Contract: systemd": ``STATUS=`` on every change of state. Examples::

    enriching: 812 pending, 4 in flight, 9120 done, 0 failed; ollama ok
    waiting: 30 pending, 0 in flight, 0 done, 0 failed; ollama unreachable at http://127.0.0.1:11434: connection refused; retry in 20 s
    idle: 0 pending, 0 in flight, 9120 done, 0 failed; ollama 1/2 ok: a:11434 ok, b:11434 unreachable (connection refused), retry in 20 s
    embedding: 0 pending, 0 in flight, 9120 done, 0 failed; ollama ok; embedding 310 pending
    idle: 0 pending, 0 in flight, 40 done, 0 failed; ollama ok; embed model nomic-embed-text missing, run: ollama pull nomic-embed-text (40 spans wait; lexical search works)
    enriching: 310 pending, 2 in flight, 80 done, 0 failed; ollama ok; team: 512 hits, 24 waiting for teammates
    enriching: 310 pending, 2 in flight, 80 done, 0 failed; ollama ok; team cache unreachable at postgresql://llmc@db/llmc: connection refused — working alone; results wait in the outbox; 12 to publish

With team mode on, the last part counts the jobs taken from the team cache
(``hits``) and those waiting for a teammate's result, or says why the team
cache is unreachable (the error names the fix) and how many results wait to
be published.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from llmc_rag_service.enrich.workers import Host


def render(counts: Mapping[str, int], hosts: Sequence[Host], model: str, down: str | None,
           activity: str | None = None, embed_pending: int = 0, embed_note: str | None = None,
           team: Mapping[str, Any] | None = None) -> str:
    """The STATUS text.

    Args:
        counts: Queue counts ``pending``, ``running``, ``done``, ``failed`` and
            ``in_flight`` (requests being answered).
        hosts: The worker pool's hosts (one line part each when several).
        model: The configured chat model (named in "run: ollama pull").
        down: Why no host can take work (``unreachable``, ``busy``…), or None.
        activity: Prepended when given (``scanning repo``, a git hold).
        embed_pending: Embedding jobs that can be done now (0 while the embed
            model is missing): with no enrichment work left, the daemon is
            ``embedding`` rather than ``idle``.
        embed_note: The embedding lane's part (``embedding 12 pending``, a
            missing embed model and its ``ollama pull``), appended when given.
        team: Team mode's status (``Pipeline.team_status``), or None when off.
    """
    waiting = counts["pending"] + counts["running"]
    # "pending" counts jobs waiting; those being answered are "in flight".
    work = (f"{counts['pending']} pending, {counts['in_flight']} in flight, {counts['done']} done, "
            f"{counts['failed']} failed")
    head = "waiting" if down else "enriching" if waiting else "embedding" if embed_pending else "idle"
    if len(hosts) == 1:
        tail = _host_status(hosts[0], model)
    else:
        ok = sum(h.state == "ok" for h in hosts)
        tail = f"ollama {ok}/{len(hosts)} ok: " + ", ".join(_host_brief(h) for h in hosts)
    if activity:
        head = f"{activity}, {head}"
    parts = [f"{head}: {work}; {tail}"] + ([embed_note] if embed_note else []) + ([_team_status(team)] if team else [])
    return "; ".join(parts)


def _team_status(team: Mapping[str, Any]) -> str:
    if team["reachable"] is False:
        waiting = f"; {team['outbox']} to publish" if team["outbox"] else ""
        error = team["last_error"] or f"team cache unreachable at {team['url']}"
        return (error if error.startswith("team cache") else f"team cache unreachable: {error}") + waiting
    return f"team: {team['hits']} hits, {team['deferred']} waiting for teammates"


def _host_status(host: Host, model: str) -> str:
    if host.state == "ok" and host.busy:
        return f"ollama busy at {host.url} (503, its queue is full); {host.busy} in a row"
    if host.state == "ok":
        return "ollama ok"
    if host.state == "model_missing":
        return f"model {model} missing, run: ollama pull {model}"
    return f"ollama {host.state} at {host.url}: {host.error}; retry in {host.retry_in_s():.0f} s"


def _host_brief(host: Host) -> str:
    name = host.url.split("://", 1)[-1]
    if host.state == "ok":
        return f"{name} ok"
    return f"{name} {host.state} ({(host.error or '')[:60]}), retry in {host.retry_in_s():.0f} s"
