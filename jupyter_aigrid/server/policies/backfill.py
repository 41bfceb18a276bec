"""EASY backfill: first come first served, and when the head cannot start, it gets a
reservation; later jobs may start now only if, by their estimates, they do not delay it.

The reservation is the estimated time at which enough running gangs will have ended for the
head to fit. A later job may jump ahead if it is estimated to end by then, or if it uses only
GPUs the head will not need at that time. Estimates are the declared time limit or history,
never the true duration; a job with no estimate is assumed to run forever.
"""

from __future__ import annotations

import math

from ..model import Launch, Request
from ..snapshot import Running, Snapshot
from .base import QueuePolicy, Round


def remaining_s(request: Request, snapshot: Snapshot, ran_s: float = 0.0) -> float:
    """Estimated seconds ``request`` still needs after running ``ran_s`` in this run."""
    est = snapshot.estimate_s(request)
    done = request.attained_gpu_s / request.slots + ran_s
    if est is None:
        return math.inf
    # Past its estimate, a job is expected to need about its estimate again: a fixed figure,
    # so that two overrunning jobs do not keep trading places.
    return est - done if est > done else max(est, 60.0)


def end_of(gang: Running, snapshot: Snapshot) -> float:
    ran = snapshot.now - gang.started_at
    return snapshot.now + remaining_s(gang.request, snapshot, ran)


def reservation(head: Request, snapshot: Snapshot) -> tuple[float, int]:
    """(When the head can start, GPUs free then beyond what it needs), by GPU counts."""
    free = snapshot.free_gpus
    if free >= head.gpus:
        return snapshot.now, free - head.gpus
    for end, gpus in sorted(
        (end_of(g, snapshot), g.request.gpus) for g in snapshot.running.values()
    ):
        free += gpus
        if free >= head.gpus:
            return end, free - head.gpus
    return math.inf, 0


class BackfillPolicy(QueuePolicy):
    name = "backfill"

    def schedule(self, queue: list[Request], snapshot: Snapshot) -> Round:
        ordered = self.order(queue, snapshot)
        launches: list[Launch] = []
        for i, req in enumerate(ordered):
            placement = self.place(req, snapshot)
            if placement is None:
                more, snapshot = backfill(self, req, ordered[i + 1 :], snapshot)
                launches.extend(more)
                break
            launches.append(Launch(req.job_id, placement))
            snapshot = snapshot.allocate(req, placement)
        return Round(tuple(launches), (), snapshot)


def backfill(
    policy: QueuePolicy, head: Request, rest: list[Request], snapshot: Snapshot
) -> tuple[list[Launch], Snapshot]:
    """Start what of ``rest`` does not delay ``head``'s reservation, by estimates."""
    shadow, extra = reservation(head, snapshot)
    out: list[Launch] = []
    for req in rest:
        free = snapshot.free_gpus
        if free == 0:
            break
        if req.gpus > free:
            continue
        ends = snapshot.now + remaining_s(req, snapshot)
        if ends > shadow and req.gpus > extra:
            continue
        placement = policy.place(req, snapshot)
        if placement is None:
            continue
        out.append(Launch(req.job_id, placement))
        snapshot = snapshot.allocate(req, placement)
        if ends > shadow:
            extra -= req.gpus
    return out, snapshot
