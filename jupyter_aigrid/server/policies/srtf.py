"""Shortest remaining time first, preemptive, by *estimated* remaining time.

Estimates come from declared time limits and history (see :class:`History`). Run in the
simulator with ``--oracle`` (which declares every job's true duration as its limit), it is
the classic SRTF oracle baseline; it is never anyone's default. ``gpu_weight`` orders by
remaining time x GPUs^weight instead: 1 is shortest remaining *area* (GPU-seconds) first.
``preempt_factor`` is how many times more work a running gang must have left than a waiting
job before it is preempted for it (1: classic SRTF; more: fewer, surer preemptions, as each
costs a checkpoint and a restore and estimates are rough).
"""

from __future__ import annotations

from itertools import islice

from ..model import Preempt, Request
from ..snapshot import Snapshot
from .backfill import remaining_s
from .base import QueuePolicy
from .las import MAX_TRIES
from .preemption import victims_for


class SrtfPolicy(QueuePolicy):
    name = "srtf"

    def __init__(
        self,
        min_run_s: float = 60.0,
        gpu_weight: float = 0.0,
        candidates: int | None = None,
        preempt_factor: float = 1.0,
    ) -> None:
        if preempt_factor < 1:
            msg = f"preempt_factor must be at least 1, got {preempt_factor}"
            raise ValueError(msg)
        self.min_run_s = min_run_s
        self.gpu_weight = gpu_weight
        self.preempt_factor = preempt_factor
        #: How many of the most served running gangs a round considers as victims (None:
        #: all; a bound keeps rounds cheap on clusters with thousands of gangs).
        self.candidates = candidates

    def key(self, request: Request, snapshot: Snapshot, ran_s: float = 0.0) -> float:
        """How much the job still has to do (seconds, or GPU-seconds with gpu_weight 1)."""
        left = remaining_s(request, snapshot, ran_s)
        return left * max(request.gpus, 1) ** self.gpu_weight if self.gpu_weight else left

    def order(self, queue: list[Request], snapshot: Snapshot) -> list[Request]:
        return sorted(queue, key=lambda r: (self.key(r, snapshot), r.submitted_at, r.seq))

    def preempt(self, snapshot: Snapshot, pending: list[Request]) -> list[Preempt]:
        now = snapshot.now
        # The most served gangs are the likely long ones (run times are heavy-tailed); looking
        # at a bounded number of them keeps a round cheap on a cluster of thousands of gangs.
        eligible = (
            g
            for g in snapshot.most_served()
            if g.request.preemptible and g.started_at < now and now - g.started_at >= self.min_run_s
        )
        running = sorted(
            (
                (self.key(g.request, snapshot, now - g.started_at), g)
                for g in islice(eligible, self.candidates)
            ),
            key=lambda lg: -lg[0],
        )
        for waiting in pending[:MAX_TRIES]:
            mine = self.key(waiting, snapshot) * self.preempt_factor
            longer = [g for left, g in running if left > mine]
            chosen = victims_for(
                waiting, snapshot, longer, f"preempted for shorter job {waiting.job_id}"
            )
            if chosen:
                return chosen
        return []
