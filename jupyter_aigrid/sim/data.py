"""Datasets in the simulator: which node holds what, and how long a gang waits for its data.

Traces name no datasets, so :class:`Staging` makes them up: every job type reads one dataset
(named after the type's model, :func:`dataset_of`) of a configured size. When a gang is
placed on nodes that lack some of its data, the nodes copy it (stage it) while the gang holds
its GPUs, as the master does; its work starts when the last copy is complete. From then on
those nodes hold the dataset (:class:`NodeCaches`), and placement sees it through
:attr:`Snapshot.data_on`.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..server.frozen import FrozenMap
from ..server.model import Request

#: Bytes in a GB, as sizes and bandwidths are given.
GB = 10**9


def dataset_of(job_type: str) -> str:
    """The dataset key a job of ``job_type`` reads: its model (the type less a suffix such as
    " (batch size 128)": batch sizes share data), version 1. Untyped jobs share ``data@1``."""
    model = job_type.split(" (", 1)[0].strip()
    return f"{model or 'data'}@1"


@dataclass(frozen=True)
class Staging:
    """How the simulator models datasets; none of it is in a trace.

    Parameters
    ----------
    bandwidth_gbps
        GB/s that one node copies. A node copies one dataset at a time; the nodes of a gang
        copy in parallel, so a gang waits for its slowest node.
    dataset_gb
        The size of every dataset, or ``(low, high)``: a size per dataset drawn
        log-uniformly from that range, seeded by ``seed`` and the dataset's key.
    cache_gb
        What a node keeps: the least recently used datasets that no running gang reads are
        dropped to make room. None keeps everything ever copied.
    preload
        Job type (``"*"``: every type) -> names of the nodes that hold its dataset at time 0.
    blind
        Stage data, but hide where it is from the policy: the data-blind baseline.
    seed
        Seed of the dataset sizes.
    """

    bandwidth_gbps: float
    dataset_gb: float | tuple[float, float] = 100.0
    cache_gb: float | None = None
    preload: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    blind: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        sizes = self.dataset_gb if isinstance(self.dataset_gb, tuple) else (self.dataset_gb,)
        checks = [
            ("bandwidth_gbps", self.bandwidth_gbps),
            *(("dataset_gb", s) for s in sizes),
            *([("cache_gb", self.cache_gb)] if self.cache_gb is not None else []),
        ]
        for name, value in checks:
            if not (math.isfinite(value) and value > 0):
                msg = f"{name} must be a finite number > 0, got {value!r}"
                raise ValueError(msg)
        if len(sizes) != 1 and (len(sizes) != 2 or sizes[0] > sizes[1]):
            msg = f"dataset_gb must be a size or (low, high) with low <= high, got {sizes!r}"
            raise ValueError(msg)

    def size_of(self, key: str) -> int:
        """Bytes of the dataset ``key``."""
        if not isinstance(self.dataset_gb, tuple):
            return round(self.dataset_gb * GB)
        low, high = self.dataset_gb
        draw = random.Random(f"{self.seed}/{key}").random()  # noqa: S311 (a workload)
        return round(low * (high / low) ** draw * GB)


@dataclass
class _Copy:
    size: int
    #: When the copy is complete (verified); a gang reading it starts no earlier.
    ready_at: float
    #: Running gangs that read it: it is never dropped while any does.
    readers: int = 0


class NodeCaches:
    """The datasets on each node during one run, and the staging figures of the run."""

    def __init__(
        self, staging: Staging, node_names: Iterable[str], datasets: Iterable[str]
    ) -> None:
        self.staging = staging
        self.sizes = MappingProxyType({key: staging.size_of(key) for key in datasets})
        self.capacity = None if staging.cache_gb is None else staging.cache_gb * GB
        self.held: dict[str, OrderedDict[str, _Copy]] = {n: OrderedDict() for n in node_names}
        self.busy_until = dict.fromkeys(self.held, 0.0)
        #: node -> {dataset key -> bytes}: what the policy sees (a copy under way included:
        #: a gang placed there waits for it and copies nothing).
        self.data_on: FrozenMap = FrozenMap()
        self.staging_s = self.staging_gpu_s = 0.0
        self.staged_bytes = self.placements = self.no_staging = 0
        for job_type, names in staging.preload.items():
            keys = self.sizes if job_type == "*" else [dataset_of(job_type)]
            for name in names:
                if name not in self.held:
                    msg = f"preload names node {name!r}, which the cluster does not have"
                    raise ValueError(msg)
                for key in keys:
                    self._add(name, key, _Copy(self._size(key), 0.0))
                self._publish(name)

    def _size(self, key: str) -> int:
        return self.sizes[key] if key in self.sizes else self.staging.size_of(key)

    def stage(self, req: Request, nodes: Iterable[str], now: float) -> float:
        """Start copying what a gang of ``req`` on ``nodes`` lacks; the seconds until all
        its data is on all its nodes."""
        ready = now
        per_s = self.staging.bandwidth_gbps * GB
        for name in nodes:
            held, changed = self.held[name], False
            for key in dict.fromkeys(req.datasets):
                copy = held.get(key)
                if copy is None:
                    size = self._size(key)
                    start = max(now, self.busy_until[name])
                    copy = _Copy(size, start + size / per_s)
                    self.busy_until[name] = copy.ready_at
                    self._add(name, key, copy)
                    self.staged_bytes += size
                    changed = True
                else:
                    held.move_to_end(key)
                copy.readers += 1
                ready = max(ready, copy.ready_at)
            if changed:
                self._publish(name)
        wait = ready - now
        self.placements += 1
        self.no_staging += wait == 0
        self.staging_s += wait
        self.staging_gpu_s += wait * req.gpus
        return wait

    def release(self, req: Request, nodes: Iterable[str]) -> None:
        """A gang of ``req`` on ``nodes`` stopped: its data may be dropped again."""
        for name in nodes:
            for key in dict.fromkeys(req.datasets):
                copy = self.held[name].get(key)
                if copy is not None and copy.readers:
                    copy.readers -= 1

    def metrics(self) -> dict[str, float | int]:
        return {
            "staging_s": round(self.staging_s, 1),
            "staging_gpu_s": round(self.staging_gpu_s, 1),
            "staged_bytes": self.staged_bytes,
            "no_staging_fraction": (
                round(self.no_staging / self.placements, 4) if self.placements else 1.0
            ),
        }

    def _add(self, name: str, key: str, copy: _Copy) -> None:
        held = self.held[name]
        if self.capacity is not None:
            # Least recently used first; data a running gang reads stays (the node then holds
            # more than its capacity until that gang stops).
            used = sum(c.size for c in held.values())
            for old in [k for k, c in held.items() if not c.readers]:
                if used + copy.size <= self.capacity:
                    break
                used -= held.pop(old).size
        held[key] = copy

    def _publish(self, name: str) -> None:
        held = self.held[name]
        self.data_on = self.data_on.set(
            name, MappingProxyType({key: c.size for key, c in held.items()})
        )
