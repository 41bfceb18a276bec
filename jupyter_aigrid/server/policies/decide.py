"""One scheduling round, whole: the only place the cluster's decisions are made.

:func:`decide` takes the frozen state of the cluster (a
:class:`~jupyter_aigrid.server.snapshot.Snapshot`), the waiting :class:`Request` objects and
the facts about running gangs that a snapshot does not hold (a :class:`Context`), and
returns :class:`Decisions`. The master applies them to the real cluster; the simulator
applies them to its model of one. A rule added here is measured by the simulator the next
time it runs. The steps, in order:

1. **Inference resource choice** (:mod:`.qos`): every inference job is pinned to the resource
   type its learnt profiles choose now; batch-class jobs keep off types a realtime job wants.
2. **The policy's round** (``policy.schedule``): order the queue, place what fits, and the
   policy's own preemptions.
3. **QoS preemption**: batch-class inference gangs make way for a realtime job still waiting.
4. **Defragmentation** (:mod:`.defrag`), only in a round that launched and preempted nothing
   and while no migration is under way: move small movable gangs so that the first waiting
   gang in the policy's order fits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..model import Launch, Migrate, Preempt, Request
from ..profiles import Choice, ProfileBook
from ..snapshot import Snapshot
from . import qos
from .base import Policy
from .defrag import defragment

_NONE: Mapping = MappingProxyType({})


@dataclass(frozen=True)
class Context:
    """What a round needs to know beyond the snapshot and the queue.

    ``movable`` and ``settled`` name running gangs; None means "work it out from the
    snapshot" (the simulator's case: every running gang is settled, and every preemptible
    one answers checkpoint requests).
    """

    #: The learnt inference profiles; None: inference jobs are placed as they ask.
    book: ProfileBook | None = None
    #: Cost per GPU-hour (replica-hour on the CPU) by resource type.
    costs: Mapping[str, float] = field(default_factory=lambda: _NONE)
    #: Running gangs that may be moved to defragment: preemptible, not on their way out, and
    #: answering checkpoint requests.
    movable: frozenset[str] | None = None
    #: Running gangs not on their way out (stopping, checkpointing or moving already).
    settled: frozenset[str] | None = None
    #: A migration is under way: no defragmentation this round (one move at a time).
    moving: bool = False

    def movable_in(self, snapshot: Snapshot) -> frozenset[str]:
        if self.movable is not None:
            return self.movable
        return frozenset(
            job_id
            for job_id, g in snapshot.running.items()
            if g.request.preemptible and (self.settled is None or job_id in self.settled)
        )


@dataclass(frozen=True)
class Decisions:
    """What one round decided, and the snapshot after its launches (preempted and migrating
    gangs still hold their resources until the caller has moved them)."""

    launches: tuple[Launch, ...] = ()
    preemptions: tuple[Preempt, ...] = ()
    migrations: tuple[Migrate, ...] = ()
    #: The resource type chosen for each waiting inference job, by job id.
    choices: Mapping[str, Choice] = field(default_factory=lambda: _NONE)
    snapshot: Snapshot | None = None


def decide(
    snapshot: Snapshot, queue: list[Request], policy: Policy, context: Context = Context()
) -> Decisions:
    """Everything the scheduler does this round (the steps are in the module docstring)."""
    if not queue:
        return Decisions(snapshot=snapshot)
    choices: dict[str, Choice] = {}
    if context.book is not None and any(r.inference is not None for r in queue):
        queue, choices = qos.pin(queue, snapshot, context.book, context.costs)
    decided = policy.schedule(queue, snapshot)
    launched = {launch.job_id for launch in decided.launches}
    going = {p.job_id for p in decided.preemptions}
    preemptions = (
        *decided.preemptions,
        *qos.make_way(queue, choices, launched, going, decided.snapshot, context.settled),
    )
    migrations: list[Migrate] = []
    if queue and not decided.launches and not decided.preemptions and not context.moving:
        movable = context.movable_in(snapshot)
        if movable:
            first = policy.order(queue, snapshot)[0]
            migrations = defragment(first, snapshot, movable, policy.place)
    return Decisions(
        decided.launches,
        tuple(preemptions),
        tuple(migrations),
        MappingProxyType(choices),
        decided.snapshot,
    )
