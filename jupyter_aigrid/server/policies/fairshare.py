"""Fair share between users: dominant resource fairness on GPUs, with weights.

Each round gives the next launch to the user with the smallest weighted share (GPUs held /
cluster GPUs / weight), first come first served among that user's jobs, so over time each
busy user's share of the GPUs approaches their weight's share of the busy users' weights.
"""

from __future__ import annotations

import heapq
from collections import defaultdict

from ..model import Launch, Request
from ..snapshot import Snapshot
from .base import QueuePolicy, Round


class FairSharePolicy(QueuePolicy):
    name = "fairshare"

    def __init__(self, weights: dict[str, float] | None = None, default_weight: float = 1.0):
        self.weights = dict(weights or {})
        for user, weight in self.weights.items():
            if not weight > 0:
                msg = f"fair-share weight of {user!r} must be > 0, got {weight!r}"
                raise ValueError(msg)
        self.default_weight = default_weight

    def weight(self, user: str) -> float:
        return self.weights.get(user, self.default_weight)

    def shares(self, snapshot: Snapshot) -> dict[str, float]:
        """Weighted dominant share of each user with running gangs."""
        held: dict[str, int] = defaultdict(int)
        for gang in snapshot.running.values():
            held[gang.request.owner] += gang.request.gpus
        total = snapshot.total_gpus or 1
        return {u: g / total / self.weight(u) for u, g in held.items()}

    def order(self, queue: list[Request], snapshot: Snapshot) -> list[Request]:
        shares = self.shares(snapshot)
        return sorted(queue, key=lambda r: (shares.get(r.owner, 0.0), r.submitted_at, r.seq))

    def schedule(self, queue: list[Request], snapshot: Snapshot) -> Round:
        by_user: dict[str, list[Request]] = defaultdict(list)
        for req in sorted(queue, key=lambda r: (r.submitted_at, r.seq)):
            by_user[req.owner].append(req)
        shares = self.shares(snapshot)
        total = snapshot.total_gpus or 1
        heap = [(shares.get(u, 0.0), u) for u in by_user]
        heapq.heapify(heap)
        launches: list[Launch] = []
        while heap and snapshot.free_gpus:
            share, user = heapq.heappop(heap)
            jobs = by_user[user]
            for i, req in enumerate(jobs):
                placement = self.place(req, snapshot)
                if placement is not None:
                    launches.append(Launch(req.job_id, placement))
                    snapshot = snapshot.allocate(req, placement)
                    del jobs[i]
                    if jobs:
                        heapq.heappush(heap, (share + req.gpus / total / self.weight(user), user))
                    break
        return Round(tuple(launches), (), snapshot)
