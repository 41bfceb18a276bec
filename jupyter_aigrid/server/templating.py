"""Job templates: a request, through a template, becomes a full job description.

Templates are declarative YAML files in ``server/templates/`` (single, pytorch-ddp, mpi,
tf-parameter-server, inference). Each names its framework, how many replicas it takes, its
roles (``count``: ``all``, a number, or ``rest``), the environment every rank gets (with
``{placeholders}`` filled in at launch), extra files (the MPI hostfile), network and ports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any

import yaml

from .model import Placement

_TORCH = re.compile(r"^\s*(?:import\s+torch\b|from\s+torch[\s.])", re.MULTILINE)


class TemplateError(ValueError):
    """A request does not fit its template (``field`` says which field to change)."""

    def __init__(self, message: str, field: str = "template") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    framework: str
    min_replicas: int
    max_replicas: int | None
    roles: tuple[tuple[str, str | int], ...]
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    network: str = "bridge"
    ports: tuple[str, ...] = ()

    def view(self) -> dict[str, Any]:
        """What ``GET /templates`` shows."""
        return {
            "name": self.name,
            "description": self.description,
            "framework": self.framework,
            "replicas": {"min": self.min_replicas, "max": self.max_replicas},
            "roles": [{"name": n, "count": c} for n, c in self.roles],
            "env": sorted(self.env),
            "files": sorted(self.files),
            "network": self.network,
            "ports": list(self.ports),
        }


@cache
def templates() -> dict[str, Template]:
    """Every shipped template, by name."""
    found = {}
    folder = files("jupyter_aigrid.server").joinpath("templates")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        data = yaml.safe_load(entry.read_text(encoding="utf-8"))
        found[data["name"]] = Template(
            name=data["name"],
            description=" ".join(data["description"].split()),
            framework=data["framework"],
            min_replicas=data["replicas"].get("min", 1),
            max_replicas=data["replicas"].get("max"),
            roles=tuple((r["name"], r["count"]) for r in data["roles"]),
            env=dict(data.get("env") or {}),
            files=dict(data.get("files") or {}),
            network=data.get("network", "bridge"),
            ports=tuple(data.get("ports") or ()),
        )
    return found


def uses_torch(spec: dict[str, Any]) -> bool:
    """Does the job run PyTorch (its code imports torch, or its command is torchrun)?"""
    if spec.get("code") and _TORCH.search(spec["code"]):
        return True
    command = spec.get("command") or []
    return bool(command) and (command[0].endswith("torchrun") or "torch.distributed.run" in command)


def choose(spec: dict[str, Any]) -> str:
    """The template a request names, or the one the master picks for it: ``inference`` for
    inference jobs, ``pytorch-ddp`` for torch on more than one GPU or replica (and for any
    gang of several replicas: its rendezvous environment serves other frameworks too),
    otherwise ``single``."""
    if spec.get("template"):
        return spec["template"]
    if spec.get("kind") == "inference":
        return "inference"
    if spec["replicas"] > 1 or (uses_torch(spec) and spec["gpus"] > 1):
        return "pytorch-ddp"
    return "single"


def check(spec: dict[str, Any]) -> Template:
    """The request's template, once it is sure the request fits it."""
    name = spec["template"]
    found = templates().get(name)
    if found is None:
        msg = f"unknown template {name!r}; available: {', '.join(templates())}"
        raise TemplateError(msg)
    n = spec["replicas"]
    if n < found.min_replicas or (found.max_replicas is not None and n > found.max_replicas):
        most = f" and at most {found.max_replicas}" if found.max_replicas else ""
        msg = (
            f"template {name!r} takes at least {found.min_replicas}{most} replica(s), "
            f"but the job asks for {n}"
        )
        raise TemplateError(msg, field="template")
    return found


def roles_of(template: Template, replicas: int) -> list[tuple[str, list[int]]]:
    """(role, its ranks) in order: ``all`` ranks, a number of them, or the ``rest``."""
    out, next_rank = [], 0
    for name, count in template.roles:
        if count == "all":
            ranks = list(range(replicas))
        elif count == "rest":
            ranks = list(range(next_rank, replicas))
        else:
            ranks = list(range(next_rank, min(replicas, next_rank + int(count))))
        next_rank = max(next_rank, ranks[-1] + 1 if ranks else next_rank)
        out.append((name, ranks))
    return out


def describe(spec: dict[str, Any], image: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full job description a request renders to (stored with the job): its template's
    replicas, roles, command, env, files, network and ports, and the image it runs in (none
    on the local executor, which runs jobs in the server's own environment)."""
    template = templates()[spec.get("template") or choose(spec)]
    return {
        "template": template.name,
        "framework": template.framework,
        "replicas": spec["replicas"],
        "roles": [{"name": n, "ranks": r} for n, r in roles_of(template, spec["replicas"])],
        "command": spec.get("command") or ["python", "-m", "jupyter_aigrid.runner", "<code>"],
        "env": {**template.env, **spec.get("env", {})},
        "files": sorted(template.files),
        "network": template.network,
        "ports": list(template.ports),
        "image": image,
    }


def hostfile_text(placement: Placement) -> str:
    """An MPI hostfile: every node of the gang, with as many slots as ranks on it."""
    slots: dict[str, int] = {}
    for s in placement.slots:
        slots[s.node] = slots.get(s.node, 0) + 1
    return "".join(f"{node} slots={n}\n" for node, n in slots.items())


def rank_env(
    spec: dict[str, Any],
    placement: Placement,
    rank: int,
    rendezvous: tuple[str, int],
    hosts: dict[str, str],
    job_key: str,
    hostfile: str = "",
) -> dict[str, str]:
    """The template's environment for one rank, placeholders filled in.

    ``hosts`` maps node names to addresses; ports after the rendezvous port go to ranks
    (``task_port`` = rendezvous port + 1 + rank).
    """
    template = templates()[spec["template"]]
    slot = placement.slots[rank]
    addr, port = rendezvous
    roles = roles_of(template, len(placement.slots))
    role, index = next(((n, r.index(rank)) for n, r in roles if rank in r), ("main", rank))
    values = {
        "rank": rank,
        "local_rank": slot.local_rank,
        "world_size": len(placement.slots),
        "local_world_size": sum(1 for s in placement.slots if s.node == slot.node),
        "group_rank": placement.nodes.index(slot.node),
        "master_addr": addr,
        "master_port": port,
        "task_port": port + 1 + rank,
        "job_key": job_key,
        "role": role,
        "role_index": index,
        "model": spec.get("model", ""),
        "hostfile": hostfile,
    }
    if "{tf_config}" in "".join(template.env.values()):
        cluster = {
            name: [f"{hosts.get(placement.slots[r].node, addr)}:{port + 1 + r}" for r in ranks]
            for name, ranks in roles
            if ranks
        }
        values["tf_config"] = json.dumps(
            {"cluster": cluster, "task": {"type": role, "index": index}}, sort_keys=True
        )
    return {key: str(value).format(**values) for key, value in template.env.items()}
