"""The queue in memory: the queued jobs as requests, their order, and the run-time history.

It mirrors the store's queued jobs. The master thread is the only writer, and it changes
both together: :meth:`JobQueue.track` is called by every change of a job's state
(:meth:`.lifecycle.Lifecycle.set_state`). The policy's order of the queue is computed once
per change, for the queue positions jobs show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..history import History
from ..model import QUEUED, SUCCEEDED, Request
from ..records import Job
from ..snapshot import Snapshot
from ..spec import to_request
from .core import Core, Part


def run_time_s(row: Job) -> float:
    """How long a finished job ran in all: its earlier runs' service, then its last run."""
    earlier = (row.attained_gpu_s or 0.0) / max(row.gpus, 1)
    return earlier + row.finished_at - row.started_at


def request_of(row: Job) -> Request:
    """What the policies see of a job row."""
    return to_request(
        row.id,
        row.owner,
        row.spec,
        row.submitted_at,
        row.seq,
        row.attained_gpu_s or 0.0,
    )


class JobQueue(Part):
    def __init__(self, core: Core, policy: Any) -> None:
        super().__init__(core)
        self.policy = policy
        self.waiting: dict[str, Request] = {}
        self._positions: dict[str, int] | None = None
        #: Run times of the jobs that succeeded, the policies' only source of estimates.
        self.history = History()

    def load(self) -> None:
        """Read the queued jobs (and their restart backoff) from the store."""
        rows = self.store.jobs((QUEUED,))
        self.waiting = {r.id: request_of(r) for r in rows}
        for r in rows:
            if r.retry_at:
                self.memory(r.id).not_before = r.retry_at
        self._positions = None

    def load_history(self) -> None:
        history = History()
        for row in self.store.jobs((SUCCEEDED,)):
            if row.started_at and row.finished_at:
                history = history.add(request_of(row), run_time_s(row))
        self.history = history

    def succeeded(self, row: Job, run_s: float) -> None:
        self.history = self.history.add(request_of(row), run_s)

    def track(self, row: Job) -> None:
        """``row`` has just changed state: queue it if it is queued, else drop it."""
        if row.state == QUEUED:
            self.waiting[row.id] = request_of(row)
        else:
            self.waiting.pop(row.id, None)
        self._positions = None

    def not_before(self, job_id: str) -> float:
        """The restart backoff: when the job may be scheduled again."""
        memory = self.memory.get(job_id)
        return memory.not_before if memory else 0.0

    def ready(self, now: float) -> list[Request]:
        """The queued jobs whose backoff has passed, for a round to consider."""
        return [r for r in self.waiting.values() if self.not_before(r.job_id) <= now]

    def positions(self, snapshot: Callable[[], Snapshot]) -> dict[str, int]:
        """Each queued job's place in the policy's order (1 = next), computed once per change."""
        if self._positions is None:
            ordered = self.policy.order(list(self.waiting.values()), snapshot())
            self._positions = {r.job_id: i + 1 for i, r in enumerate(ordered)}
        return self._positions
