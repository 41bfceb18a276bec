"""What the REST API, the events and the CLI show of jobs and of the cluster."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from .model import FINAL_STATES, Node
from .templating import describe


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).isoformat(timespec="milliseconds")


def job_view(
    row: dict[str, Any],
    nodes: dict[str, Node],
    queue_position: int | None = None,
    listening: bool = False,
) -> dict[str, Any]:
    """A job as the API shows it: the stored row, with placement spelled out per GPU.
    ``listening``: its ranks answer checkpoint requests."""
    spec = row["spec"]
    placement = None
    if row.get("placement"):
        placement = []
        for slot in row["placement"]:
            node = nodes.get(slot["node"])
            by_index = {g.index: g for g in node.gpus} if node else {}
            gpus = []
            for i in slot["gpus"]:
                g = by_index.get(i)
                gpus.append(
                    {
                        "index": i,
                        "uuid": g.uuid if g else None,
                        "model": g.model if g else None,
                        "simulated": g.simulated if g else None,
                    }
                )
            placement.append({**slot, "gpus": gpus})
    end = row.get("finished_at") or time.time()
    started = row.get("started_at")
    return {
        "id": row["id"],
        "name": row["name"],
        "owner": row["owner"],
        "kind": row["kind"],
        "state": row["state"],
        "reason": row.get("reason"),
        "priority": row["priority"],
        "preemptible": spec.get("preemptible", False),
        "gpus": row["gpus"],
        "replicas": row["replicas"],
        "gpus_per_replica": spec["gpus_per_replica"],
        "queue_position": queue_position,
        "placement": placement,
        "stopping": row.get("pending_state") is not None and row["state"] not in FINAL_STATES,
        "restarts": row.get("restarts") or 0,
        "attempt": row.get("attempt") or 0,
        "exit_codes": row.get("exit_codes"),
        "submitted_at": iso(row["submitted_at"]),
        "started_at": iso(started),
        "finished_at": iso(row.get("finished_at")),
        "elapsed_s": round(end - started, 3) if started else None,
        "qos": qos_class(
            row["kind"], row["priority"], spec.get("preemptible", False), spec.get("qos")
        ),
        "inference": row.get("inference"),
        "prediction": row.get("prediction"),
        "migration": migration_view(row.get("migration")),
        "checkpoint": checkpoint_view(row.get("checkpoint"), listening),
        "datasets": spec.get("datasets") or [],
        "staging": staging_view(row.get("staging")),
        "phase": job_phase(row),
        "description": row.get("description") or describe(spec),
        "spec": spec,
    }


def staging_view(staging: dict[str, Any] | None) -> dict[str, Any] | None:
    """The datasets of the job's latest start, verified or copied onto its nodes."""
    if not staging:
        return None
    return {
        **staging,
        "started_at": iso(staging.get("started_at")),
        "finished_at": iso(staging.get("finished_at")),
    }


def job_phase(row: dict[str, Any]) -> str | None:
    """What a starting job is doing: ``staging`` its data, ``restoring`` its checkpoint."""
    if row["state"] != "starting":
        return None
    staging = row.get("staging") or {}
    if staging.get("state") == "staging" and staging.get("attempt") == row.get("attempt"):
        return "staging"
    migration = row.get("migration") or {}
    if migration.get("state") in ("transferring", "restoring"):
        return migration["state"]
    return None


def migration_view(migration: dict[str, Any] | None) -> dict[str, Any] | None:
    """A job's latest migration (or resume from a checkpoint), its phases timed."""
    if not migration:
        return None
    keep = ("id", "kind", "reason", "state", "from", "to", "checkpoint", "error", "prestart")
    return {k: migration.get(k) for k in keep} | {
        "bytes": migration.get("bytes"),
        "phases": [
            {**p, "started_at": iso(p["started_at"]), "finished_at": iso(p["finished_at"])}
            for p in migration["phases"]
        ],
        "started_at": iso(migration.get("started_at")),
        "finished_at": iso(migration.get("finished_at")),
    }


def checkpoint_view(info: dict[str, Any] | None, listening: bool) -> dict[str, Any]:
    """What the master knows of a job's checkpoints: the latest it asked for, the newest
    kept on a second node too, and whether the job can be asked at all."""
    info = info or {}
    latest, request, copied = info.get("latest"), info.get("request"), info.get("copied")
    return {
        "listening": listening,
        "copied": copied and {"name": copied["name"], "at": iso(copied["at"])},
        "latest": latest
        and {k: latest.get(k) for k in ("name", "step", "bytes", "seconds")}
        | {"at": iso(latest.get("at"))},
        "request": request
        and {
            "id": request["id"],
            "state": request["state"],
            "reason": request.get("reason"),
            "requested_at": iso(request.get("requested_at")),
        },
    }


def qos_class(kind: str, priority: str, preemptible: bool, qos: str | None = None) -> str:
    """The class a job is served in, as people read it: an inference job's QoS class; else
    its priority, and if it can be evicted."""
    if kind == "inference" and qos:
        return qos
    return f"{priority}, preemptible" if preemptible else priority


#: Fields of other users' events that anyone may see (the cluster view shows as much), and
#: all that the server's event bus, every user's, carries.
PUBLIC_EVENT_FIELDS = (
    "job_id",
    "state",
    "previous_state",
    "attempt",
    "gpus",
    "migration",
    "kind",
    "phase",
    "dataset",
    "version",
    "node",
    "bytes",
    "done",
)


def public_event(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in PUBLIC_EVENT_FIELDS if k in data}


def event_view(row: dict[str, Any], full: bool) -> dict[str, Any]:
    """A stored event as ``GET /events`` sends it; ``full`` for the job's owner and admins."""
    data = row["data"]
    if not full:
        data = public_event(data)
    return {
        "seq": row["seq"],
        "time": iso(row["time"]),
        "type": row["schema_id"].rsplit("/", 2)[-2],
        "schema_id": row["schema_id"],
        "job_id": row["job_id"],
        "data": data,
    }


def cluster_view(
    executor: str,
    nodes: list[Node],
    holders: dict[tuple[str, int], dict],
    utilisation: dict[str, dict[str, int]],
    recovering: str | None = None,
) -> dict[str, Any]:
    """Nodes with their GPUs, who holds each GPU, and live utilisation where NVML has it."""
    out_nodes = []
    total = free = 0
    for n in nodes:
        gpus = []
        for g in n.gpus:
            holder = holders.get((n.name, g.index))
            total += 1
            free += holder is None
            gpus.append(
                {
                    "index": g.index,
                    "uuid": g.uuid,
                    "model": g.model,
                    "memory_mb": g.memory_mb,
                    "simulated": g.simulated,
                    "job_id": holder["job_id"] if holder else None,
                    "rank": holder["rank"] if holder else None,
                    **utilisation.get(g.uuid, {}),
                }
            )
        out_nodes.append(
            {
                "name": n.name,
                "cpus": n.cpus,
                "memory_mb": n.memory_mb,
                "labels": dict(n.labels),
                "gpus": gpus,
            }
        )
    return {
        "executor": executor,
        "simulated": any(g.simulated for n in nodes for g in n.gpus),
        "gpus_total": total,
        "gpus_free": free,
        "nodes": out_nodes,
        "recovering": recovering,
    }


def image_view(row: dict[str, Any]) -> dict[str, Any]:
    """A catalog entry as ``/images`` shows it."""
    return {
        k: row[k]
        for k in ("id", "ref", "framework", "framework_version", "cuda", "python", "description")
    } | {"updated_at": iso(row.get("updated_at"))}
