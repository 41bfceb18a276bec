"""The policy contract, the registry of policies, and one scheduling round.

A policy is an object with ``order(queue, snapshot)``, ``place(request, snapshot)`` and
``preempt(snapshot, pending)``. All inputs are frozen; outputs are decisions. The master and
the simulator both call :func:`schedule_round`, so a policy measured on a trace is exactly
the policy that runs the cluster.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Protocol

from ..model import Launch, Placement, Request, Snapshot

ENTRY_POINT_GROUP = "jupyter_aigrid.policies"


class Policy(Protocol):
    name: str
    #: When True, a job that cannot be placed blocks the jobs behind it (strict order).
    blocking: bool

    def order(self, queue: list[Request], snapshot: Snapshot) -> list[Request]: ...

    def place(self, request: Request, snapshot: Snapshot) -> Placement | None: ...

    def preempt(self, snapshot: Snapshot, pending: list[Request]) -> list: ...


def schedule_round(policy: Policy, queue: list[Request], snapshot: Snapshot) -> list[Launch]:
    """Order the queue and place gangs until the policy stops; resources are taken as we go."""
    launches: list[Launch] = []
    for req in policy.order(queue, snapshot):
        placement = policy.place(req, snapshot)
        if placement is None:
            if policy.blocking:
                break
            continue
        launches.append(Launch(req.job_id, placement))
        snapshot = snapshot.allocate(req, placement)
    return launches


def available_policies() -> dict[str, object]:
    """Name -> entry point of every installed policy (built-in ones come in the same way)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_policy(name: str) -> Policy:
    """Instantiate the policy registered as ``name``."""
    found = available_policies()
    if name not in found:
        # A source checkout that was never installed has no entry points: keep built-ins usable.
        from .fifo import FifoPolicy

        builtin = {"fifo": FifoPolicy}
        if name in builtin:
            return builtin[name]()
        msg = f"unknown policy {name!r}; installed policies: {', '.join(sorted(found)) or 'none'}"
        raise ValueError(msg)
    return found[name].load()()  # type: ignore[attr-defined]
