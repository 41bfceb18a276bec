"""Choosing gangs to preempt (checkpoint and requeue) so that a waiting gang can start."""

from __future__ import annotations

from collections.abc import Iterable

from ..model import Preempt, Request
from ..snapshot import Running, Snapshot
from .placement import place_gang


def victims_for(
    waiting: Request, snapshot: Snapshot, candidates: Iterable[Running], reason: str
) -> list[Preempt]:
    """The fewest ``candidates`` (taken in the order given, least important first) whose
    release lets ``waiting`` be placed; none at all when even all of them would not do."""
    chosen: list[Preempt] = []
    freed = snapshot
    need = waiting.gpus - snapshot.free_gpus
    for gang in candidates:
        freed = freed.release(gang.request.job_id)
        chosen.append(Preempt(gang.request.job_id, reason))
        need -= gang.request.gpus
        if need <= 0 and place_gang(waiting, freed) is not None:
            return chosen
    return []


def preemptible(snapshot: Snapshot, min_run_s: float) -> list[Running]:
    """Running gangs that may be preempted: marked preemptible, and in this run long enough
    to have paid for their last restore."""
    now = snapshot.now
    return [
        g
        for g in snapshot.running.values()
        if g.request.preemptible and now - g.started_at >= min_run_s
    ]
