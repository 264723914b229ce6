"""What a worker asks before it sends a job, so work done elsewhere is not done twice.

The worker pool knows nothing of teammates: it calls a :class:`JobGate` (team
mode's is ``service/teamgate.py``) around each request. Without one, every
job is sent.

::

    admit(job) -> Admission("send")            claimed (or no team): send it
               -> Admission("hit", enrichment)  a teammate's validated result: store it, send nothing
               -> Admission("defer", delay_s)   a teammate is on it: put the job back for delay_s
    succeeded(job, enrichment)                  share the result (never raises)
    abandoned(job)                              the job was put back or failed: let others take it

The embedding workers ask an :class:`EmbedGate` instead, by the exact texts
they are about to send::

    admit(texts, dim) -> ({text: vector}, {text})   teammates' vectors (store them), and the texts to
                                                    send now; any other text a teammate embeds right now
    publish([(text, vector)])                       share what Ollama answered (never raises)
    abandon(texts)                                  texts admitted but not embedded: let teammates take them
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from llmc_rag_service.models import Enrichment, Job

if TYPE_CHECKING:  # only a type here: serve starts without importing numpy for it
    import numpy as np


class Admission(NamedTuple):
    """A gate's answer for one job.

    Attributes:
        action: ``send``, ``hit`` or ``defer``.
        enrichment: the result to store (``hit`` only).
        delay_s: seconds before the job may be claimed again (``defer`` only).
    """

    action: str
    enrichment: Enrichment | None = None
    delay_s: float = 0.0


SEND = Admission("send")


class JobGate(Protocol):
    """Consulted by the workers; every method is called from worker threads
    and must return within a bounded time (a few seconds at most)."""

    def admit(self, job: Job) -> Admission:
        """Whether to send ``job`` now (see the module docstring)."""

    def succeeded(self, job: Job, enrichment: Enrichment) -> None:
        """``job``'s answer was stored locally."""

    def abandoned(self, job: Job) -> None:
        """``job`` was released, retried later or dead-lettered without a result."""


class EmbedGate(Protocol):
    """Consulted by the embedding workers before and after a request; every
    method is called from worker threads, returns within a bounded time and
    never raises (an unreachable team database finds nothing).

    Attributes:
        wait_s: seconds a text that is neither found nor to be sent (a teammate
            embeds it right now) waits before it is looked up again.
    """

    wait_s: float

    def admit(self, texts: Sequence[str], dim: int | None) -> tuple[dict[str, np.ndarray], set[str]]:
        """``(found, send)``: validated vectors (1-D float32) teammates
        published for some ``texts``, by text, and the texts this daemon
        should embed now (all the others while the team is unreachable); a
        text in neither is being embedded by a teammate right now. ``dim`` is
        the model's dimension if known (its stored vectors)."""

    def publish(self, results: Sequence[tuple[str, Sequence[float]]]) -> None:
        """Share ``(text, vector)`` pairs just stored (or keep them for later)."""

    def abandon(self, texts: Sequence[str]) -> None:
        """``texts`` admitted to be sent got no vector (an error): teammates may embed them now."""
