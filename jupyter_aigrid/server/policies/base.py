"""The policy contract, the registry of policies, and one scheduling round.

A policy orders the queue, places gangs and may preempt running ones. Inputs are frozen
(:class:`~jupyter_aigrid.server.snapshot.Snapshot`, :class:`Request`); outputs are decisions
(:class:`Launch`, :class:`Preempt`). The master and the simulator both call
:func:`schedule_round`, so a policy measured on a trace is exactly the policy that runs the
cluster. No policy ever sees a job's true duration: only declared limits and history.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol

from ..model import Launch, Placement, Preempt, Request
from ..snapshot import Snapshot
from .placement import place_gang

ENTRY_POINT_GROUP = "jupyter_aigrid.policies"


@dataclass(frozen=True)
class Round:
    """What one round decided, and the snapshot after its launches (preempted gangs still
    hold their resources until they have stopped)."""

    launches: tuple[Launch, ...]
    preemptions: tuple[Preempt, ...]
    snapshot: Snapshot


class Policy(Protocol):
    name: str

    def schedule(self, queue: list[Request], snapshot: Snapshot) -> Round: ...


class QueuePolicy:
    """The common shape: ``order`` the queue, ``place`` each job in turn, then ``preempt``.

    ``blocking`` policies stop at the first job that does not fit (strict order); the others
    skip it and try the next. Subclasses change ``order`` and ``preempt``; ``options`` come
    from ``c.AIGridApp.policy_options`` or the simulator's command line.
    """

    name = "queue"
    blocking = False

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
    """One round of ``policy`` over ``queue``; resources are taken as launches are decided."""
    return policy.schedule(queue, snapshot)


def available_policies() -> dict[str, object]:
    """Name -> entry point of every installed policy (built-in ones come in the same way)."""
    found: dict[str, object] = dict(_builtin())
    found.update({ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)})
    return found


def load_policy(name: str, **options: Any) -> Policy:
    """Instantiate the policy registered as ``name`` with ``options``."""
    found = available_policies()
    if name not in found:
        msg = f"unknown policy {name!r}; installed policies: {', '.join(sorted(found))}"
        raise ValueError(msg)
    entry = found[name]
    cls = entry.load() if hasattr(entry, "load") else entry  # type: ignore[attr-defined]
    return cls(**options)


def _builtin() -> dict[str, type]:
    from .aigrid import AIGridPolicy
    from .backfill import BackfillPolicy
    from .fairshare import FairSharePolicy
    from .fifo import FifoPolicy
    from .las import LasPolicy
    from .priority import PriorityPolicy
    from .srtf import SrtfPolicy

    return {
        cls.name: cls
        for cls in (
            FifoPolicy,
            PriorityPolicy,
            FairSharePolicy,
            LasPolicy,
            BackfillPolicy,
            SrtfPolicy,
            AIGridPolicy,
        )
    }
