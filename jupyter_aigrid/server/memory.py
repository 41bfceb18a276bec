"""What the master keeps about a job in memory only, in one record per job.

Everything here can be rebuilt from the store after a restart (or is work in flight that a
restart starts again), so it is never persisted. A job's record is made on first use and
dropped when the job ends (:meth:`Memory.end`); a record with work still in flight (a
staging or a copy running on a pool thread) is dropped once that work has been collected
(:meth:`Memory.settle`). Nothing grows with every job.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

#: Fields that hold work running on a pool thread (a future): a record keeps until they clear.
IN_FLIGHT = ("checkpoint_staging", "copying", "data_staging")


@dataclass
class JobMemory:
    #: Restart backoff: the job is not scheduled before this time (epoch s).
    not_before: float = 0.0
    #: A checkpoint request, a migration or a restore is outstanding: follow it every tick.
    watching: bool = False
    #: The attempt whose every rank answers checkpoint requests (None: not known to).
    listening: int | None = None
    #: Its checkpoint being verified and copied where it resumes: (attempt, future).
    checkpoint_staging: tuple[int, Any] | None = None
    #: Its newest checkpoint being copied to a second node (a future), and what was copied
    #: last: (checkpoint name or None, the (rank, node) pairs it was copied for).
    copying: Any = None
    copied: tuple[str | None, tuple] | None = None
    #: Its datasets being staged: (attempt, future, location keys), and the progress:
    #: [bytes done, bytes in all, time of the last progress event].
    data_staging: tuple[int, Any, set] | None = None
    data_progress: list | None = None
    #: The job has ended: drop the record once nothing is in flight.
    ended: bool = False

    def idle(self) -> bool:
        return all(getattr(self, name) is None for name in IN_FLIGHT)


_NAMES = frozenset(f.name for f in fields(JobMemory))


class Memory:
    """Job id -> :class:`JobMemory`."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobMemory] = {}

    def __call__(self, job_id: str) -> JobMemory:
        """The job's record, made if it has none."""
        record = self._jobs.get(job_id)
        if record is None:
            record = self._jobs[job_id] = JobMemory()
        return record

    def get(self, job_id: str) -> JobMemory | None:
        return self._jobs.get(job_id)

    def __len__(self) -> int:
        return len(self._jobs)

    def having(self, name: str) -> Iterator[tuple[str, JobMemory]]:
        """(job id, record) of every job whose ``name`` is set (truthy), safe to change."""
        assert name in _NAMES, name
        return iter([(job_id, m) for job_id, m in self._jobs.items() if getattr(m, name)])

    def count(self, name: str) -> int:
        return sum(1 for m in self._jobs.values() if getattr(m, name))

    def clear(self, name: str) -> None:
        """Unset ``name`` on every record (work a restart starts again)."""
        default = JobMemory.__dataclass_fields__[name].default
        for job_id in list(self._jobs):
            setattr(self._jobs[job_id], name, default)
            self.settle(job_id)

    def end(self, job_id: str) -> None:
        """The job has ended: forget it now, or once its work in flight is collected."""
        record = self._jobs.get(job_id)
        if record is not None:
            record.ended = True
            self.settle(job_id)

    def settle(self, job_id: str) -> None:
        """Drop the record of an ended job that has nothing in flight any more."""
        record = self._jobs.get(job_id)
        if record is not None and record.ended and record.idle():
            del self._jobs[job_id]
