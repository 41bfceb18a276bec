"""Typed records of what the store keeps, for the code past it: a job, a replica, a migration.

The store writes and reads rows; the master's components work with these records, whose
fields say what a row holds (and an unknown field is an error, not a ``None``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ..vocabulary import JobState
from .model import ReplicaHandle
from .states import MigrationState, PrestartState, ReplicaState, Stop


@dataclass(frozen=True)
class Job:
    """One job (a row of ``jobs``); its JSON columns decoded. Change it in the store with
    ``Store.update_job``; :func:`dataclasses.replace` gives a changed copy in memory."""

    id: str
    seq: int
    owner: str
    state: JobState
    spec: dict[str, Any]
    submitted_at: float
    name: str | None = None
    kind: str | None = None
    reason: str | None = None
    priority: str | None = None
    gpus: int | None = None
    replicas: int | None = None
    #: The gang's slots (a placement's JSON), once it is placed.
    placement: list[dict[str, Any]] | None = None
    #: Each rank's exit code (None: never started, or lost), by rank, once the gang ended.
    exit_codes: dict[str, int | None] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    restarts: int = 0
    attempt: int = 0
    #: What the gang becomes once it has stopped (a :class:`~.states.Stop`), while stopping.
    pending_state: str | None = None
    attained_gpu_s: float | None = None
    description: dict[str, Any] | None = None
    #: The latest migration or resume, as stored (read it with :meth:`Migration.of`).
    migration: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    retry_at: float | None = None
    staging: dict[str, Any] | None = None
    inference: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        """The job of a decoded row; a column this record does not know is an error."""
        unknown = set(row) - _JOB_FIELDS
        if unknown:
            msg = f"job row has unknown columns {sorted(unknown)}; Job knows {sorted(_JOB_FIELDS)}"
            raise ValueError(msg)
        values = dict(row)
        values["restarts"] = values.get("restarts") or 0
        values["attempt"] = values.get("attempt") or 0
        return cls(**values)

    def __post_init__(self) -> None:
        # A state given as its text (a row, a test) is the enum all the same.
        object.__setattr__(self, "state", JobState(self.state))

    @property
    def settled(self) -> bool:
        """Running, and not being stopped."""
        return self.state is JobState.RUNNING and not self.pending_state

    @property
    def stopping(self) -> Stop | None:
        """What its gang becomes once stopped, while it is being stopped."""
        return Stop(self.pending_state) if self.pending_state else None


@dataclass(frozen=True)
class Replica:
    """One rank of one attempt of a gang (a row of ``replicas``)."""

    id: str
    job_id: str
    attempt: int
    rank: int
    local_rank: int
    node: str
    gpu_indices: tuple[int, ...]
    state: ReplicaState
    exit_path: str
    pid: int | None = None
    pid_start: float | None = None
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Replica:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in row.items() if k in known}
        values["gpu_indices"] = tuple(values.get("gpu_indices") or ())
        values["state"] = ReplicaState(values["state"])
        return cls(**values)

    @property
    def handle(self) -> ReplicaHandle:
        """How the executor knows this replica."""
        return ReplicaHandle(self.id, self.pid, self.pid_start, self.exit_path)

    @property
    def live(self) -> bool:
        """May its process still be running (launching, running or stopping)?"""
        return self.state is not ReplicaState.EXITED


_JOB_FIELDS = frozenset(f.name for f in fields(Job))


@dataclass(frozen=True)
class Phase:
    """One step of a migration or resume, as the job's view shows it."""

    phase: str
    started_at: float
    finished_at: float | None = None
    duration_s: float | None = None
    bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": self.duration_s,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class Prestart:
    """Replicas started at a migration's destination ahead of its checkpoint."""

    attempt: int
    state: PrestartState
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "state": str(self.state), "reason": self.reason}


#: Keys of a migration's JSON written only once they have a value.
_OPTIONAL = ("target", "prestart", "bytes", "deadline")


@dataclass(frozen=True)
class Migration:
    """A job's latest move (kind ``migrate``) or resume from a checkpoint (kind ``resume``):
    the job's ``migration`` field. Its phases run ``checkpointing -> stopping ->
    transferring -> restoring`` (a resume starts at ``transferring``), to ``done`` or
    ``failed``; :meth:`next` is the only way from one to the next."""

    id: int
    kind: str
    state: MigrationState
    started_at: float
    reason: str | None = None
    from_nodes: tuple[str, ...] = ()
    to: tuple[str, ...] = ()
    #: Where the gang goes (a placement's JSON); a resume has none (it is placed already).
    target: list[dict[str, Any]] | None = None
    checkpoint: str | None = None
    phases: tuple[Phase, ...] = ()
    error: str | None = None
    finished_at: float | None = None
    prestart: Prestart | None = None
    #: The checkpoint's bytes and the restore's deadline, once it is restoring.
    bytes: int | None = None
    deadline: float | None = None

    @classmethod
    def of(cls, job: Job | dict[str, Any] | None) -> Migration | None:
        """The migration of a job (or of its stored row), if it has one."""
        if job is None:
            return None
        raw = job.migration if isinstance(job, Job) else job.get("migration")
        return None if not raw else cls.from_json(raw)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Migration:
        pre = raw.get("prestart")
        return cls(
            id=int(raw.get("id") or 0),
            kind=raw["kind"],
            state=MigrationState(raw["state"]),
            started_at=raw["started_at"],
            reason=raw.get("reason"),
            from_nodes=tuple(raw.get("from") or ()),
            to=tuple(raw.get("to") or ()),
            target=raw.get("target"),
            checkpoint=raw.get("checkpoint"),
            phases=tuple(Phase(**p) for p in raw.get("phases") or ()),
            error=raw.get("error"),
            finished_at=raw.get("finished_at"),
            prestart=None
            if not pre
            else Prestart(pre["attempt"], PrestartState(pre["state"]), pre.get("reason")),
            bytes=raw.get("bytes"),
            deadline=raw.get("deadline"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "reason": self.reason,
            "state": str(self.state),
            "from": list(self.from_nodes),
            "to": list(self.to),
            "checkpoint": self.checkpoint,
            "phases": [p.to_json() for p in self.phases],
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
        optional = {
            "target": self.target,
            "prestart": self.prestart.to_json() if self.prestart else None,
            "bytes": self.bytes,
            "deadline": self.deadline,
        }
        out.update((k, v) for k, v in optional.items() if v is not None)
        return out

    @property
    def active(self) -> bool:
        return self.state not in (MigrationState.DONE, MigrationState.FAILED)

    @property
    def waiting(self) -> Prestart | None:
        """Its prestarted replicas, while they wait for the go."""
        pre = self.prestart
        return pre if pre is not None and pre.state == PrestartState.WAITING else None

    def next(self, state: str, now: float, nbytes: int | None = None, **fields: Any) -> Migration:
        """This migration with its open phase closed (with ``nbytes`` moved, if known) and
        ``state`` begun: a new phase, or the end (``done``/``failed``); ``fields`` change too."""
        phases = list(self.phases)
        if phases and phases[-1].finished_at is None:
            last = phases[-1]
            phases[-1] = replace(
                last,
                finished_at=now,
                duration_s=round(now - last.started_at, 6),
                bytes=nbytes if nbytes is not None else last.bytes,
            )
        new = MigrationState(state)
        ended = new in (MigrationState.DONE, MigrationState.FAILED)
        if not ended:
            phases.append(Phase(str(new), now))
        out = replace(self, **fields, state=new, phases=tuple(phases))
        return replace(out, finished_at=now) if ended else out
