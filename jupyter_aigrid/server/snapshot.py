"""The frozen input of every policy: nodes and what is free, running gangs, time, history,
and which datasets each node holds.

A snapshot never changes. :meth:`Snapshot.allocate` and :meth:`Snapshot.release` return new
ones that share everything they did not touch, and keep an index of nodes by free GPU count,
so a policy finds a best-fit node without scanning the cluster. That is what lets the
simulator replay 100k jobs on 10k GPUs through the same code the master runs.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from .frozen import EMPTY as _EMPTY
from .frozen import FrozenMap
from .history import History
from .model import Node, NodeView, Placement, Request


@dataclass(frozen=True)
class Running:
    """A gang that holds resources now; ``started_at`` is when this run began."""

    request: Request
    placement: Placement
    started_at: float

    def attained_gpu_s(self, now: float) -> float:
        """GPU-seconds of service so far, earlier runs included."""
        return self.request.attained_gpu_s + max(0.0, now - self.started_at) * self.request.slots


def _service_key(gang: Running, job_id: str) -> tuple[float, str]:
    # attained(now) = now x slots - key: for one slot count, the order never changes.
    req = gang.request
    return (gang.started_at * req.slots - req.attained_gpu_s, job_id)


@dataclass(frozen=True)
class Snapshot:
    """A frozen view of the cluster at one instant: the input of every policy."""

    nodes: tuple[NodeView, ...]
    now: float = 0.0
    #: job id -> its running gang.
    running: FrozenMap = field(default_factory=FrozenMap)
    history: History = field(default_factory=History)
    #: node name -> {dataset key -> bytes of it verified on that node}: what placement reads
    #: to prefer nodes that already hold a job's data. Empty: placement is data-blind.
    data_on: Mapping[str, Mapping[str, int]] = field(default_factory=lambda: _EMPTY)
    #: dataset key -> its full size in bytes (what a node lacking it copies); only
    #: :meth:`missing_bytes` reads it.
    dataset_bytes: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    # Derived indexes, shared between snapshots that do not change them.
    _position: Mapping[str, int] = field(default_factory=lambda: _EMPTY, compare=False, repr=False)
    _by_free: tuple[tuple[int, ...], ...] = field(default=(), compare=False, repr=False)
    #: Slots per gang -> (start x slots - earlier service, job id), ascending: most served first.
    _by_service: Mapping[int, tuple[tuple[float, str], ...]] = field(
        default_factory=lambda: _EMPTY, compare=False, repr=False
    )
    _max_gpus: int = field(default=-1, compare=False, repr=False)
    _total_gpus: int = field(default=-1, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self._max_gpus < 0:
            object.__setattr__(self, "_max_gpus", max((len(n.gpus) for n in self.nodes), default=0))
            object.__setattr__(self, "_total_gpus", sum(len(n.gpus) for n in self.nodes))
        if not self._position and self.nodes:
            object.__setattr__(
                self, "_position", MappingProxyType({n.name: i for i, n in enumerate(self.nodes)})
            )
        if not self._by_service and self.running:
            groups: dict[int, list[tuple[float, str]]] = {}
            for job_id, gang in self.running.items():
                groups.setdefault(gang.request.slots, []).append(_service_key(gang, job_id))
            object.__setattr__(
                self,
                "_by_service",
                MappingProxyType({g: tuple(sorted(v)) for g, v in groups.items()}),
            )
        if not self._by_free and self.nodes:
            buckets: list[list[int]] = [[] for _ in range(self.max_gpus_per_node + 1)]
            for i, n in enumerate(self.nodes):
                buckets[len(n.free_gpus)].append(i)
            object.__setattr__(self, "_by_free", tuple(tuple(b) for b in buckets))

    # -- reading ---------------------------------------------------------------------------

    @property
    def max_gpus_per_node(self) -> int:
        return self._max_gpus

    @property
    def free_gpus(self) -> int:
        return sum(k * len(b) for k, b in enumerate(self._by_free))

    @property
    def total_gpus(self) -> int:
        return self._total_gpus

    def node(self, name: str) -> NodeView:
        return self.nodes[self._position[name]]

    def positions_with_free(self, count: int) -> tuple[int, ...]:
        return self._by_free[count] if count < len(self._by_free) else ()

    def estimate_s(self, request: Request) -> float | None:
        return self.history.estimate_s(request)

    def locality(self, req: Request, node_name: str) -> int:
        """The locality score of ``node_name`` for ``req``: bytes of ``req.datasets`` already
        verified there (each dataset counted once). A node given as a bare set of keys (no
        sizes) scores 1 per dataset it holds."""
        held = self.data_on.get(node_name)
        if not held or not req.datasets:
            return 0
        keys = dict.fromkeys(req.datasets)
        if not isinstance(held, Mapping):
            return sum(1 for key in keys if key in held)
        return sum(held.get(key, 0) for key in keys)

    def missing_bytes(self, req: Request, node_names: Iterable[str]) -> int:
        """Bytes a gang of ``req`` on ``node_names`` still has to stage: for each node, what
        it lacks of each dataset's full size (:attr:`dataset_bytes`; a dataset of unknown
        size counts as nothing to copy)."""
        keys = dict.fromkeys(req.datasets)
        total = 0
        for name in dict.fromkeys(node_names):
            held = self.data_on.get(name) or _EMPTY
            for key in keys:
                size = self.dataset_bytes.get(key, 0)
                if isinstance(held, Mapping):
                    total += max(0, size - held.get(key, 0))
                elif key not in held:
                    total += size
        return total

    def most_served(self) -> Iterator[Running]:
        """Running gangs, the most attained service (GPU-seconds) first, lazily."""
        now = self.now

        def stream(slots: int, group: tuple[tuple[float, str], ...]):
            return ((key - now * slots, job_id) for key, job_id in group)

        streams = [stream(slots, group) for slots, group in self._by_service.items()]
        for _, job_id in heapq.merge(*streams):
            yield self.running[job_id]

    # -- new snapshots -----------------------------------------------------------------------

    def at(self, now: float) -> Snapshot:
        return replace(self, now=now)

    def with_history(self, history: History) -> Snapshot:
        return replace(self, history=history)

    def with_data(
        self,
        data_on: Mapping[str, Mapping[str, int]],
        dataset_bytes: Mapping[str, int] | None = None,
    ) -> Snapshot:
        """This snapshot with other datasets on its nodes (and, if given, other sizes)."""
        sizes = self.dataset_bytes if dataset_bytes is None else dataset_bytes
        return replace(self, data_on=data_on, dataset_bytes=sizes)

    def allocate(
        self, req: Request, placement: Placement, started_at: float | None = None
    ) -> Snapshot:
        """The snapshot after ``placement`` took its resources for ``req``."""
        started = self.now if started_at is None else started_at
        running = self.running.set(req.job_id, Running(req, placement, started))
        return self._change(req, placement, -1, running)

    def release(self, job_id: str) -> Snapshot:
        """The snapshot after the running gang ``job_id`` gave its resources back."""
        gang = self.running[job_id]
        return self._change(gang.request, gang.placement, +1, self.running.delete(job_id))

    def _change(
        self, req: Request, placement: Placement, sign: int, running: FrozenMap
    ) -> Snapshot:
        gang = running.get(req.job_id) if sign < 0 else self.running[req.job_id]
        service = dict(self._by_service)
        group = service.get(req.slots, ())
        key = _service_key(gang, req.job_id)
        j = bisect.bisect_left(group, key)
        if sign < 0:
            service[req.slots] = (*group[:j], key, *group[j:])
        else:
            service[req.slots] = group[:j] + group[j + 1 :]
        per_node: dict[str, list[int]] = {}
        for s in placement.slots:
            per_node.setdefault(s.node, []).extend(s.gpus)
        nodes = list(self.nodes)
        buckets = list(self._by_free)
        for name, gpus in per_node.items():
            i = self._position[name]
            n = nodes[i]
            count = sum(1 for s in placement.slots if s.node == name)
            free = n.free_gpus | frozenset(gpus) if sign > 0 else n.free_gpus - frozenset(gpus)
            nodes[i] = replace(
                n,
                free_gpus=free,
                free_cpus=n.free_cpus + sign * req.cpus_per_replica * count,
                free_memory_mb=n.free_memory_mb + sign * req.memory_mb_per_replica * count,
            )
            before, after = len(n.free_gpus), len(free)
            if before != after:
                old = buckets[before]
                j = bisect.bisect_left(old, i)
                buckets[before] = old[:j] + old[j + 1 :]
                new = buckets[after]
                j = bisect.bisect_left(new, i)
                buckets[after] = (*new[:j], i, *new[j:])
        return replace(
            self,
            nodes=tuple(nodes),
            running=running,
            _by_free=tuple(buckets),
            _by_service=MappingProxyType(service),
        )

    @classmethod
    def empty(cls, nodes: list[Node], now: float = 0.0, history: History | None = None) -> Snapshot:
        """Every resource of ``nodes`` free."""
        return cls(
            nodes=tuple(
                NodeView(
                    name=n.name,
                    gpus=n.gpus,
                    free_gpus=frozenset(g.index for g in n.gpus),
                    cpus=n.cpus,
                    free_cpus=float(n.cpus),
                    memory_mb=n.memory_mb,
                    free_memory_mb=n.memory_mb,
                )
                for n in nodes
            ),
            now=now,
            history=history or History(),
        )
