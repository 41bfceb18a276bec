"""Strict priority classes: high before normal before low, first come first served within a
class. The head blocks the rest; it may preempt preemptible gangs of lower classes."""

from __future__ import annotations

from ..model import PRIORITIES, Preempt, Request
from ..snapshot import Snapshot
from .base import QueuePolicy
from .preemption import preemptible, victims_for

RANK = {p: i for i, p in enumerate(PRIORITIES)}


class PriorityPolicy(QueuePolicy):
    name = "priority"
    blocking = True

    def __init__(self, preempt: bool = True, min_run_s: float = 0.0) -> None:
        self.preempting = preempt
        self.min_run_s = min_run_s

    def order(self, queue: list[Request], snapshot: Snapshot) -> list[Request]:
        return sorted(queue, key=lambda r: (RANK[r.priority], r.submitted_at, r.seq))

    def preempt(self, snapshot: Snapshot, pending: list[Request]) -> list[Preempt]:
        if not self.preempting:
            return []
        head = pending[0]
        lower = [
            g
            for g in preemptible(snapshot, self.min_run_s)
            if RANK[g.request.priority] > RANK[head.priority]
        ]
        # The lowest class first, and within it the gang that started last (least lost).
        lower.sort(key=lambda g: (-RANK[g.request.priority], -g.started_at))
        return victims_for(
            head, snapshot, lower, f"preempted for {head.priority} job {head.job_id}"
        )
