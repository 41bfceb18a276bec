"""Plain data shared by the master, the policies, the executors and the simulator.

Everything here is a frozen dataclass or a string constant: no I/O, no framework imports, so
``server.policies`` and ``sim`` can use it at full speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..vocabulary import (  # noqa: F401 - the states, as the server's modules name them
    ACTIVE_STATES,
    FINAL_STATES,
    JOB_STATES,
    PRIORITIES,
    JobState,
)
from .profiles import Slo

QUEUED = JobState.QUEUED.value
STARTING = JobState.STARTING.value
RUNNING = JobState.RUNNING.value
SUCCEEDED = JobState.SUCCEEDED.value
FAILED = JobState.FAILED.value
CANCELLED = JobState.CANCELLED.value
PREEMPTED = JobState.PREEMPTED.value


@dataclass(frozen=True)
class Gpu:
    """One GPU of a node. ``simulated`` GPUs are CPU slots that stand in for a real device."""

    index: int
    uuid: str
    model: str
    memory_mb: int
    simulated: bool


@dataclass(frozen=True)
class Node:
    """A machine, or a logical node that an executor declares on one machine."""

    name: str
    gpus: tuple[Gpu, ...]
    cpus: int
    memory_mb: int
    scratch: str = ""
    labels: tuple[tuple[str, str], ...] = ()


#: How far below a whole replica a float count of fractional-CPU replicas may fall and still
#: count as one (rounding error, not a real shortfall).
CPU_FIT_SLACK = 1e-9


@dataclass(frozen=True)
class NodeView:
    """A node as a policy sees it: what it has, and what is free right now."""

    name: str
    gpus: tuple[Gpu, ...]
    free_gpus: frozenset[int]
    cpus: int
    free_cpus: float
    memory_mb: int
    free_memory_mb: int

    def free_gpu_indices(self, gpu_type: str | None) -> list[int]:
        return sorted(
            g.index
            for g in self.gpus
            if g.index in self.free_gpus and (gpu_type is None or g.model == gpu_type)
        )

    def replicas_that_fit(self, req: Request) -> int:
        """How many of ``req``'s replicas this node could take now."""
        limits = []
        if req.gpus_per_replica:
            limits.append(len(self.free_gpu_indices(req.gpu_type)) // req.gpus_per_replica)
        if req.cpus_per_replica:
            # Float division of CPU fractions is a hair short (0.3 / 0.1 = 2.999...; and
            # 2 // 0.01 = 199): count with a slack far below any CPU share a job asks for.
            limits.append(math.floor(self.free_cpus / req.cpus_per_replica + CPU_FIT_SLACK))
        if req.memory_mb_per_replica:
            limits.append(self.free_memory_mb // req.memory_mb_per_replica)
        return min(limits) if limits else req.replicas


@dataclass(frozen=True)
class InferenceAsk:
    """What an inference job asks of a round: a resource type chosen for its ``model`` from
    the learnt profiles, under its ``slo`` and QoS class (``gpu_type`` if the user named one)."""

    model: str
    qos: str = "interactive"
    slo: Slo = field(default_factory=Slo)
    gpu_type: str | None = None
    gpus: int = 0


@dataclass(frozen=True)
class Request:
    """The resource side of a job: what the scheduler needs to know to queue and place it."""

    job_id: str
    owner: str
    replicas: int
    gpus_per_replica: int
    cpus_per_replica: float
    memory_mb_per_replica: int
    nodes: int | None = None
    gpu_type: str | None = None
    priority: str = "normal"
    submitted_at: float = 0.0
    seq: int = 0
    preemptible: bool = False
    #: What the user declared (an upper bound); never the job's true duration.
    time_limit_s: float | None = None
    #: What history groups it with: the job's name (live) or model (traces).
    job_type: str = ""
    #: Service in earlier runs, in GPU-seconds: a preempted or restarted job keeps it. A job
    #: without GPUs counts as one (see ``slots``), so its run time is kept too.
    attained_gpu_s: float = 0.0
    datasets: tuple[str, ...] = ()
    #: The template the job was rendered with, and a SHA-256 of what it runs (its code, or
    #: its argv): with the owner and GPU count, what recognises the same job run again.
    template: str = ""
    code_hash: str = ""
    #: Set for inference jobs: the round pins them to the resource type it chooses.
    inference: InferenceAsk | None = None

    @property
    def gpus(self) -> int:
        return self.replicas * self.gpus_per_replica

    @property
    def slots(self) -> int:
        """What a second of this job's run adds to its service: its GPUs, or 1 without any."""
        return max(self.gpus, 1)


@dataclass(frozen=True)
class Slot:
    """Where one rank of a gang runs."""

    rank: int
    node: str
    local_rank: int
    gpus: tuple[int, ...]


@dataclass(frozen=True)
class Placement:
    """A whole gang: one slot per rank, ranks 0..n-1 in order."""

    slots: tuple[Slot, ...]

    @property
    def nodes(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for s in self.slots:
            seen.setdefault(s.node)
        return tuple(seen)

    def to_json(self) -> list[dict]:
        return [
            {"rank": s.rank, "node": s.node, "local_rank": s.local_rank, "gpus": list(s.gpus)}
            for s in self.slots
        ]

    @classmethod
    def from_json(cls, data: list[dict]) -> Placement:
        return cls(
            tuple(Slot(d["rank"], d["node"], d["local_rank"], tuple(d["gpus"])) for d in data)
        )


@dataclass(frozen=True)
class Launch:
    """A policy decision: start ``job_id``'s gang at ``placement``."""

    job_id: str
    placement: Placement


@dataclass(frozen=True)
class Preempt:
    """A policy decision: checkpoint ``job_id``'s gang, free its GPUs, and requeue it."""

    job_id: str
    reason: str


@dataclass(frozen=True)
class Migrate:
    """A policy decision: checkpoint ``job_id`` and restore it at ``placement``."""

    job_id: str
    placement: Placement
    reason: str


@dataclass(frozen=True)
class LaunchRequest:
    """What an executor needs to start one replica."""

    replica_id: str
    job_id: str
    attempt: int
    rank: int
    node: str
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    stdout_path: str = ""
    stderr_path: str = ""
    exit_path: str = ""
    #: The job's unique name on disk (ids restart with a new database; keys do not).
    job_key: str = ""
    #: For container executors: the image reference, the network the template needs
    #: (``host``, or ``bridge``: the executor's default network), the real GPUs' UUIDs (none for
    #: simulated GPUs), the limits, and the host paths the replica reads and writes (mounted
    #: at the same paths, so the environment's paths hold inside the container too).
    image: str = ""
    network: str = "bridge"
    gpu_uuids: tuple[str, ...] = ()
    cpus: float = 0.0
    memory_mb: int = 0
    read_write: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReplicaHandle:
    """How to find a launched replica again, also after a master restart."""

    replica_id: str
    pid: int | None
    pid_start: float | None
    exit_path: str


@dataclass(frozen=True)
class ReplicaExit:
    """A replica ended. ``exit_code`` is None when it vanished without a recorded status;
    ``never_started`` when a restarted master finds it was never started at all (the previous
    master died while launching it): not the job's failure."""

    replica_id: str
    exit_code: int | None
    never_started: bool = False
