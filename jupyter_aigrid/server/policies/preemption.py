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
    chosen: list[Running] = []
    freed = snapshot
    need = waiting.gpus - snapshot.free_gpus
    for gang in candidates:
        freed = freed.release(gang.request.job_id)
        chosen.append(gang)
        need -= gang.request.gpus
        if need <= 0 and place_gang(waiting, freed) is not None:
            return [Preempt(g.request.job_id, reason) for g in _fewest(waiting, snapshot, chosen)]
    return []


def _fewest(waiting: Request, snapshot: Snapshot, chosen: list[Running]) -> list[Running]:
    """Drop the victims (the most important first) that the waiting gang does not need."""
    kept = list(chosen)
    for gang in reversed(chosen[:-1]):
        trial = [g for g in kept if g is not gang]
        freed = snapshot
        for g in trial:
            freed = freed.release(g.request.job_id)
        if place_gang(waiting, freed) is not None:
            kept = trial
    return kept


def preemptible(snapshot: Snapshot, min_run_s: float) -> list[Running]:
    """Running gangs that may be preempted: marked preemptible, not launched this very
    instant, and in this run long enough to have paid for their last restore."""
    now = snapshot.now
    return [
        g
        for g in snapshot.running.values()
        if g.request.preemptible and g.started_at < now and now - g.started_at >= min_run_s
    ]
