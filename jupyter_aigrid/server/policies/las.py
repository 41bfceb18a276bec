"""Tiresias-style discretised two-dimensional least attained service (2D-LAS).

A job's attained service is GPUs x seconds run. Queue 0 holds jobs below the first
threshold, queue 1 those below the second, and so on; lower queues go first, first come
first served within a queue. A job waiting in a lower queue preempts running gangs of higher
queues.
"""

from __future__ import annotations

from itertools import islice, takewhile

from ..model import Preempt, Request
from ..snapshot import Snapshot
from .base import QueuePolicy
from .preemption import victims_for

#: Waiting jobs (in order) for which a round looks for gangs to preempt.
MAX_TRIES = 8
#: Most-served gangs considered as victims for one waiting job.
MAX_CANDIDATES = 256


class LasPolicy(QueuePolicy):
    name = "las"

    def __init__(
        self,
        thresholds_gpu_s: tuple[float, ...] | list[float] = (3600.0,),
        min_run_s: float = 0.0,
        tick_s: float | None = None,
    ) -> None:
        self.thresholds = tuple(sorted(float(t) for t in thresholds_gpu_s))
        #: How often the simulator (and the master's timer) re-runs the policy while jobs wait.
        self.tick_s = tick_s
        self.min_run_s = min_run_s

    def queue_of(self, attained_gpu_s: float) -> int:
        for i, limit in enumerate(self.thresholds):
            if attained_gpu_s < limit:
                return i
        return len(self.thresholds)

    def _queue_of_waiting(self, r: Request, now: float) -> int:
        return self.queue_of(r.attained_gpu_s)

    def order(self, queue: list[Request], snapshot: Snapshot) -> list[Request]:
        now = snapshot.now
        return sorted(queue, key=lambda r: (self._queue_of_waiting(r, now), r.submitted_at, r.seq))

    def preempt(self, snapshot: Snapshot, pending: list[Request]) -> list[Preempt]:
        now = snapshot.now
        for waiting in pending[:MAX_TRIES]:
            q = self._queue_of_waiting(waiting, now)
            if q >= len(self.thresholds):
                continue  # in the last queue: nobody runs at a lower priority
            floor = self.thresholds[q]  # gangs with this much service sit in a later queue
            served = takewhile(
                lambda g, floor=floor: g.attained_gpu_s(now) >= floor, snapshot.most_served()
            )
            eligible = (
                g
                for g in served
                if g.request.preemptible
                and g.started_at < now
                and now - g.started_at >= self.min_run_s
            )
            lower = [
                (self.queue_of(g.attained_gpu_s(now)), g) for g in islice(eligible, MAX_CANDIDATES)
            ]
            # The lowest-priority queue first; within it, the gang that started last.
            lower.sort(key=lambda qg: (-qg[0], -qg[1].started_at))
            chosen = victims_for(
                waiting, snapshot, [g for _, g in lower], f"preempted for job {waiting.job_id}"
            )
            if chosen:
                return chosen
        return []
