"""The policy contract, and the common shape of a policy.

A policy orders the queue, places gangs and may preempt running ones. Inputs are frozen
(:class:`~jupyter_aigrid.server.snapshot.Snapshot`, :class:`Request`); outputs are decisions
(:class:`Launch`, :class:`Preempt`). The policy's round is one step of
:func:`~jupyter_aigrid.server.policies.decide.decide`, which the master and the simulator
both call, so a policy measured on a trace is exactly the policy that runs the cluster. No
policy ever sees a job's true duration: only declared limits and history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..model import Launch, Placement, Preempt, Request
from ..snapshot import Snapshot
from .placement import place_gang


@dataclass(frozen=True)
class Round:
    """What one round decided, and the snapshot after its launches (preempted gangs still
    hold their resources until they have stopped)."""

    launches: tuple[Launch, ...]
    preemptions: tuple[Preempt, ...]
    snapshot: Snapshot


@runtime_checkable
class Policy(Protocol):
    """Every method the scheduler calls. :class:`QueuePolicy` implements all of them; a
    plug-in usually subclasses it and changes ``order`` and ``preempt``."""

    #: The name it is registered under.
    name: str
    #: Seconds between extra rounds while gangs run (for policies whose order changes with
    #: service received, such as LAS); None: rounds only on arrivals and exits.
    tick_s: float | None

    def order(self, queue: list[Request], snapshot: Snapshot) -> list[Request]:
        """The queue, most urgent first (queue positions and defragmentation use it)."""
        ...

    def place(self, request: Request, snapshot: Snapshot) -> Placement | None:
        """Where the gang would run now; None if it does not fit."""
        ...

    def preempt(self, snapshot: Snapshot, pending: list[Request]) -> list[Preempt]:
        """Running gangs to checkpoint and requeue so that ``pending`` can run."""
        ...

    def schedule(self, queue: list[Request], snapshot: Snapshot) -> Round:
        """The policy's round: launches (taking resources as it goes) and preemptions."""
        ...


class QueuePolicy:
    """The common shape: ``order`` the queue, ``place`` each job in turn, then ``preempt``.

    ``blocking`` policies stop at the first job that does not fit (strict order); the others
    skip it and try the next. Subclasses change ``order`` and ``preempt``; ``options`` come
    from ``c.AIGridApp.policy_options`` or the simulator's command line.
    """

    name = "queue"
    blocking = False
    tick_s: float | None = None

    def __init__(self, **options: Any) -> None:
        if options:
            msg = f"policy {self.name!r} takes no options, got: {', '.join(sorted(options))}"
            raise ValueError(msg)

    def order(self, queue: list[Request], snapshot: Snapshot) -> list[Request]:
        return sorted(queue, key=lambda r: (r.submitted_at, r.seq))

    def place(self, request: Request, snapshot: Snapshot) -> Placement | None:
        return place_gang(request, snapshot)

    def preempt(self, snapshot: Snapshot, pending: list[Request]) -> list[Preempt]:
        """Gangs to checkpoint and requeue so that ``pending`` (in order) can run."""
        return []

    def schedule(self, queue: list[Request], snapshot: Snapshot) -> Round:
        launches: list[Launch] = []
        pending: list[Request] = []
        ordered = self.order(queue, snapshot)
        for i, req in enumerate(ordered):
            if snapshot.free_gpus == 0 and req.gpus > 0:
                pending.extend(ordered[i:])
                break
            placement = self.place(req, snapshot)
            if placement is None:
                pending.append(req)
                if self.blocking:
                    pending.extend(ordered[i + 1 :])
                    break
                continue
            launches.append(Launch(req.job_id, placement))
            snapshot = snapshot.allocate(req, placement)
        preemptions = self.preempt(snapshot, pending) if pending else []
        return Round(tuple(launches), tuple(preemptions), snapshot)


def schedule_round(policy: Policy, queue: list[Request], snapshot: Snapshot) -> Round:
    """The policy's step of a round alone (what policy tests check); the scheduler itself
    runs :func:`~jupyter_aigrid.server.policies.decide.decide`."""
    return policy.schedule(queue, snapshot)
