"""Shortest remaining time first, preemptive, by *estimated* remaining time.

Estimates come from declared time limits and history. Run in the simulator with
``--oracle`` (which declares every job's true duration as its limit), it is the classic
SRTF oracle baseline; it is never anyone's default.
"""

from __future__ import annotations

from ..model import Preempt, Request
from ..snapshot import Snapshot
from .backfill import remaining_s
from .base import QueuePolicy
from .las import MAX_TRIES
from .preemption import preemptible, victims_for


class SrtfPolicy(QueuePolicy):
    name = "srtf"

    def __init__(self, min_run_s: float = 0.0) -> None:
        self.min_run_s = min_run_s

    def order(self, queue: list[Request], snapshot: Snapshot) -> list[Request]:
        return sorted(queue, key=lambda r: (remaining_s(r, snapshot), r.submitted_at, r.seq))

    def preempt(self, snapshot: Snapshot, pending: list[Request]) -> list[Preempt]:
        now = snapshot.now
        running = sorted(
            (
                (remaining_s(g.request, snapshot, now - g.started_at), g)
                for g in preemptible(snapshot, self.min_run_s)
            ),
            key=lambda lg: -lg[0],
        )
        for waiting in pending[:MAX_TRIES]:
            mine = remaining_s(waiting, snapshot)
            longer = [g for left, g in running if left > mine]
            chosen = victims_for(
                waiting, snapshot, longer, f"preempted for shorter job {waiting.job_id}"
            )
            if chosen:
                return chosen
        return []
