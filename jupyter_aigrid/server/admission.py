"""Admission: refuse at submit time, naming the field, a job that could never run here."""

from __future__ import annotations

from typing import Any

from .model import Node
from .policies import describe_capacity, place_gang
from .snapshot import Snapshot
from .spec import SpecError, to_request


def check_admissible(spec: dict[str, Any], nodes: list[Node], executor: str) -> None:
    """Raise :class:`SpecError` when ``spec`` cannot run on an idle cluster of ``nodes``."""
    if spec.get("image") and executor == "local":
        msg = (
            "the local executor runs jobs on the host, not in an image; "
            "remove 'image' or run the master with the docker or ray executor"
        )
        raise SpecError(msg, field="image")
    if spec.get("workdir") and executor == "docker":
        msg = (
            "the docker executor runs every replica in its own scratch directory, mounted into "
            "its container; a host 'workdir' is never mounted: remove it"
        )
        raise SpecError(msg, field="workdir")
    req = to_request("new", "", spec, 0.0, 0)
    empty = Snapshot.empty(nodes)
    if place_gang(req, empty) is not None:
        return
    types = {g.model for n in nodes for g in n.gpus}
    if req.gpu_type and req.gpu_type not in types:
        field = "gpu_type"
    elif req.gpus > sum(len(n.gpus) for n in nodes):
        field = "gpus"
    elif req.nodes and req.nodes > len(nodes):
        field = "nodes"
    elif req.gpus_per_replica > max((len(n.gpus) for n in nodes), default=0):
        field = "gpus_per_replica"
    elif any(req.cpus_per_replica > n.cpus for n in nodes):
        field = "cpus_per_replica"
    elif any(req.memory_mb_per_replica > n.memory_mb for n in nodes):
        field = "memory_mb_per_replica"
    else:
        field = "gpus"
    spread = f" over exactly {req.nodes} node(s)" if req.nodes else ""
    of_type = f", of type {req.gpu_type}" if req.gpu_type else ""
    msg = (
        f"unschedulable: the job needs {req.replicas} replica(s) x {req.gpus_per_replica} "
        f"GPU(s) x {req.cpus_per_replica:g} CPU(s){spread} ({req.gpus} GPUs in all{of_type}), "
        f"but even an idle cluster cannot hold it. Available: {describe_capacity(empty)}"
    )
    raise SpecError(msg, field=field)
