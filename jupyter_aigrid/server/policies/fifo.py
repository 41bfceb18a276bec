"""First in, first out, with gang placement. The head of the queue blocks the rest."""

from __future__ import annotations

from ..model import Placement, Request, Snapshot
from .placement import place_gang


class FifoPolicy:
    name = "fifo"
    blocking = True

    def order(self, queue: list[Request], snapshot: Snapshot) -> list[Request]:
        return sorted(queue, key=lambda r: (r.submitted_at, r.seq))

    def place(self, request: Request, snapshot: Snapshot) -> Placement | None:
        return place_gang(request, snapshot)

    def preempt(self, snapshot: Snapshot, pending: list[Request]) -> list:
        return []
