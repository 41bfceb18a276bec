"""A job's life as explicit state machines: the states, and from each the states it may move to.

Five machines, each an enum and a table: the job's :class:`JobState`; what its gang becomes once
it has stopped (:class:`Stop`, stored as ``pending_state``); its latest migration or resume
(:class:`MigrationState`); its latest checkpoint request (:class:`RequestState`); the staging of
its datasets (:class:`StagingState`); the replicas started ahead of a migration
(:class:`PrestartState`). Replicas have one of their own (:class:`ReplicaState`).

:class:`~jupyter_aigrid.server.store.Store` is the only writer of job and replica rows, and
checks every change of any of these states against its table (:func:`job_change_allowed`,
:func:`replica_change_allowed`) before it writes. An illegal change raises
:class:`IllegalTransition` where ``AIGRID_STRICT_TRANSITIONS=1`` (the test suite sets it); in
production it is logged and refused: the row keeps what it had.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from enum import Enum

from ..vocabulary import JobState, Name

log = logging.getLogger(__name__)


class Stop(Name):
    """What a job whose gang is being stopped becomes once every replica has exited."""

    #: Back to the queue after a failure, counted as a restart (with backoff).
    RESTART = "queued"
    #: Back to the queue through no fault of its own (the master's doing): a new attempt.
    REQUEUE = "requeue"
    #: Preempted: ``preempted``, then queued again.
    PREEMPT = "preempted"
    FAIL = "failed"
    CANCEL = "cancelled"
    #: Stopped to move: started again at its migration's target.
    MIGRATE = "migrate"


class MigrationState(Name):
    CHECKPOINTING = "checkpointing"
    STOPPING = "stopping"
    TRANSFERRING = "transferring"
    RESTORING = "restoring"
    DONE = "done"
    FAILED = "failed"


class RequestState(Name):
    """A checkpoint the master asked a running gang for."""

    PENDING = "pending"
    WRITTEN = "written"
    TIMEOUT = "timeout"


class StagingState(Name):
    STAGING = "staging"
    DONE = "done"
    FAILED = "failed"


class PrestartState(Name):
    """Replicas started at a migration's destination before its checkpoint is there."""

    WAITING = "waiting"
    GO = "go"
    DROPPED = "dropped"


class ReplicaState(Name):
    LAUNCHING = "launching"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"


#: Replica states in which a process may exist.
LIVE_REPLICA = (ReplicaState.LAUNCHING, ReplicaState.RUNNING, ReplicaState.STOPPING)

J = JobState
#: None is "no such record yet" (a job being submitted, a first migration, ...).
JOB: Mapping[JobState | None, frozenset] = {
    None: frozenset({J.QUEUED}),
    J.QUEUED: frozenset({J.STARTING, J.CANCELLED}),
    J.STARTING: frozenset({J.RUNNING, J.QUEUED, J.PREEMPTED, J.SUCCEEDED, J.FAILED, J.CANCELLED}),
    # STARTING again: a gang stopped to migrate is placed at its target.
    J.RUNNING: frozenset({J.STARTING, J.QUEUED, J.PREEMPTED, J.SUCCEEDED, J.FAILED, J.CANCELLED}),
    J.PREEMPTED: frozenset({J.QUEUED, J.CANCELLED}),
    J.SUCCEEDED: frozenset(),
    J.FAILED: frozenset(),
    J.CANCELLED: frozenset(),
}
S = Stop
#: A stop already decided is only ever overridden by a cancel; a failure or a cancel never.
#: Clearing it (``None``: the gang has stopped and the job moved on) is always allowed.
STOP: Mapping[Stop | None, frozenset] = {
    None: frozenset(Stop) | {None},
    S.RESTART: frozenset({S.CANCEL, None}),
    S.REQUEUE: frozenset({S.CANCEL, None}),
    S.PREEMPT: frozenset({S.CANCEL, None}),
    S.MIGRATE: frozenset({S.CANCEL, None}),
    S.FAIL: frozenset({None}),
    S.CANCEL: frozenset({None}),
}
M = MigrationState
_NEW_MOVE = frozenset({M.CHECKPOINTING, M.TRANSFERRING})
#: A gang that ends (or goes back to the queue) mid-move ends its migration: DONE or FAILED
#: from any active state. TRANSFERRING again: the copy is redone after a master restart.
MIGRATION: Mapping[MigrationState | None, frozenset] = {
    None: _NEW_MOVE,
    M.CHECKPOINTING: frozenset({M.STOPPING, M.DONE, M.FAILED}),
    M.STOPPING: frozenset({M.TRANSFERRING, M.DONE, M.FAILED}),
    M.TRANSFERRING: frozenset({M.TRANSFERRING, M.RESTORING, M.DONE, M.FAILED}),
    M.RESTORING: frozenset({M.DONE, M.FAILED}),
    M.DONE: _NEW_MOVE,
    M.FAILED: _NEW_MOVE,
}
R = RequestState
REQUEST: Mapping[RequestState | None, frozenset] = {
    None: frozenset({R.PENDING}),
    R.PENDING: frozenset({R.WRITTEN, R.TIMEOUT}),
    R.WRITTEN: frozenset({R.PENDING}),
    R.TIMEOUT: frozenset({R.PENDING}),
}
D = StagingState
#: STAGING again: staging cut short by a master restart starts over.
STAGING: Mapping[StagingState | None, frozenset] = {
    None: frozenset({D.STAGING}),
    D.STAGING: frozenset({D.STAGING, D.DONE, D.FAILED}),
    D.DONE: frozenset({D.STAGING}),
    D.FAILED: frozenset({D.STAGING}),
}
P = PrestartState
PRESTART: Mapping[PrestartState | None, frozenset] = {
    None: frozenset({P.WAITING}),
    P.WAITING: frozenset({P.GO, P.DROPPED}),
    P.GO: frozenset(),
    P.DROPPED: frozenset(),
}
Q = ReplicaState
#: STOPPING again: a restarted master asks once more (the executor forgot the first time).
REPLICA: Mapping[ReplicaState | None, frozenset] = {
    None: frozenset({Q.LAUNCHING}),
    Q.LAUNCHING: frozenset({Q.RUNNING, Q.STOPPING, Q.EXITED}),
    Q.RUNNING: frozenset({Q.STOPPING, Q.EXITED}),
    Q.STOPPING: frozenset({Q.STOPPING, Q.EXITED}),
    Q.EXITED: frozenset(),
}
TABLES: Mapping[str, Mapping] = {
    "state": JOB,
    "stopping": STOP,
    "migration": MIGRATION,
    "request": REQUEST,
    "staging": STAGING,
    "prestart": PRESTART,
    "replica": REPLICA,
}


#: Every illegal transition raised in strict mode in this process (the test suite fails a
#: test that caused one, even where the master's loop caught the error).
REFUSED: list[str] = []


class IllegalTransition(RuntimeError):
    """A change that the machine's table does not allow."""


def strict() -> bool:
    """Are illegal transitions errors (tests), or logged and refused (production)?"""
    return os.environ.get("AIGRID_STRICT_TRANSITIONS", "") == "1"


def allowed(machine: str, old: Enum | None, new: Enum | None) -> bool:
    return new in TABLES[machine][old]


def check(machine: str, what: str, old: Enum | None, new: Enum | None) -> bool:
    """Is moving ``what`` (a job, a replica) from ``old`` to ``new`` allowed? If not: raise
    (strict) or log and return False (the caller refuses the change)."""
    if allowed(machine, old, new):
        return True
    msg = f"{what}: {machine} cannot go from {old} to {new}"
    if strict():
        REFUSED.append(msg)
        raise IllegalTransition(msg)
    log.error("AI Grid: refused an illegal transition: %s", msg)
    return False


def _enum(kind: type[Enum], value: str | None) -> Enum | None:
    return None if value is None else kind(value)


def _migration(value: dict | None) -> tuple[object, Enum | None, Enum | None]:
    """(id, state, prestart state) of a stored migration record."""
    if not value:
        return None, None, None
    prestart = value.get("prestart") or {}
    return (
        value.get("id"),
        _enum(MigrationState, value.get("state")),
        _enum(PrestartState, prestart.get("state")),
    )


def _request(value: dict | None) -> tuple[object, Enum | None]:
    request = (value or {}).get("request") or {}
    return request.get("id"), _enum(RequestState, request.get("state"))


def _changes(old: Mapping, fields: Mapping):
    """(machine, old state, new state) of every state machine that ``fields`` change."""
    if "state" in fields:
        yield "state", _enum(JobState, old.get("state")), _enum(JobState, fields["state"])
    if "pending_state" in fields:
        yield (
            "stopping",
            _enum(Stop, old.get("pending_state")),
            _enum(Stop, fields["pending_state"]),
        )
    if "migration" in fields and fields["migration"] is not None:
        was_id, was, was_prestart = _migration(old.get("migration"))
        new_id, new, new_prestart = _migration(fields["migration"])
        yield "migration", was, new
        if new_prestart is not None:
            yield "prestart", was_prestart if was_id == new_id else None, new_prestart
    if "checkpoint" in fields:
        was_id, was = _request(old.get("checkpoint"))
        new_id, new = _request(fields["checkpoint"])
        if new is not None and (new_id != was_id or new != was):
            yield "request", was, new
    if "staging" in fields and fields["staging"] is not None:
        was = (old.get("staging") or {}).get("state")
        yield "staging", _enum(StagingState, was), _enum(StagingState, fields["staging"]["state"])


def job_change_allowed(job_id: str, old: Mapping, fields: Mapping) -> bool:
    """May job ``job_id``, stored as ``old``, take ``fields``? Unchanged states always may;
    a cleared stop (``pending_state`` None) always may."""
    for machine, was, new in _changes(old, fields):
        if was == new and machine != "request":
            continue
        if not check(machine, f"job {job_id}", was, new):
            return False
    return True


def replica_change_allowed(replica_id: str, old: Mapping, fields: Mapping) -> bool:
    if "state" not in fields:
        return True
    was, new = _enum(ReplicaState, old.get("state")), _enum(ReplicaState, fields["state"])
    return was == new or check("replica", f"replica {replica_id}", was, new)
