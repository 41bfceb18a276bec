"""The words the notebook, the job and the master share: job states, priorities, QoS classes
and the actions a user may take on a job.

Only the standard library: the kernel (client, CLI, magics, widgets) and the job side import
this module, never the master's code.
"""

from __future__ import annotations

from enum import Enum


class Name(str, Enum):
    """An enum whose members are their values wherever a string goes (JSON, SQLite, text)."""

    def __str__(self) -> str:
        return self.value


class JobState(Name):
    """Where a job is in its life (see ``docs/architecture.md`` for the transitions)."""

    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: Checkpointed and stopped to make room; back in the queue at once.
    PREEMPTED = "preempted"


JOB_STATES: tuple[str, ...] = tuple(s.value for s in JobState)
#: States in which a job holds resources (its gang is placed).
ACTIVE_STATES: tuple[str, ...] = (JobState.STARTING.value, JobState.RUNNING.value)
#: States a job never leaves.
FINAL_STATES: tuple[str, ...] = (
    JobState.SUCCEEDED.value,
    JobState.FAILED.value,
    JobState.CANCELLED.value,
)

PRIORITIES: tuple[str, ...] = ("high", "normal", "low")
#: QoS classes of inference jobs: realtime preempts batch; batch fills idle capacity only.
QOS_CLASSES: tuple[str, ...] = ("realtime", "interactive", "batch")


class Action(Name):
    """What a user may ask of a job. A job's view carries, for each, whether it is allowed
    now and, if not, why (``actions``); clients draw their buttons from that."""

    CANCEL = "cancel"
    CHECKPOINT = "checkpoint"
    MIGRATE = "migrate"


ACTIONS: tuple[str, ...] = tuple(a.value for a in Action)

#: (key, label) of the figures of a scheduling run (a simulation, or the live cluster's), as
#: tables show them.
RUN_METRICS: tuple[tuple[str, str], ...] = (
    ("avg_jct_s", "avg JCT (s)"),
    ("median_jct_s", "median JCT (s)"),
    ("p99_jct_s", "p99 JCT (s)"),
    ("avg_queue_s", "avg queue (s)"),
    ("p99_queue_s", "p99 queue (s)"),
    ("makespan_s", "makespan (s)"),
    ("gpu_utilization", "GPU util"),
    ("preemptions", "preemptions"),
    ("jobs", "jobs"),
)
