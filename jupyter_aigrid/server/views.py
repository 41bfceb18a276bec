"""What the REST API, the events and the CLI show of jobs and of the cluster."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from ..vocabulary import FINAL_STATES, Action
from .model import Node
from .records import Job
from .templating import describe


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).isoformat(timespec="milliseconds")


def job_view(
    row: Job,
    nodes: dict[str, Node],
    queue_position: int | None = None,
    listening: bool = False,
) -> dict[str, Any]:
    """A job as the API shows it: the stored row, with placement spelled out per GPU.
    ``listening``: its ranks answer checkpoint requests."""
    spec = row.spec
    placement = None
    if row.placement:
        placement = []
        for slot in row.placement:
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
    now = time.time()
    end = row.finished_at or now
    started = row.started_at
    return {
        "id": row.id,
        "name": row.name,
        "owner": row.owner,
        "kind": row.kind,
        "state": str(row.state),
        "reason": row.reason,
        "priority": row.priority,
        "preemptible": spec.get("preemptible", False),
        "gpus": row.gpus,
        "replicas": row.replicas,
        "gpus_per_replica": spec["gpus_per_replica"],
        "queue_position": queue_position,
        "placement": placement,
        "stopping": row.pending_state is not None and row.state not in FINAL_STATES,
        "restarts": row.restarts or 0,
        "attempt": row.attempt or 0,
        "exit_codes": row.exit_codes,
        "submitted_at": iso(row.submitted_at),
        "started_at": iso(started),
        "finished_at": iso(row.finished_at),
        "elapsed_s": round(end - started, 3) if started else None,
        "qos": qos_class(row.kind, row.priority, spec.get("preemptible", False), spec.get("qos")),
        "inference": row.inference,
        "prediction": row.prediction,
        "migration": migration_view(row.migration, now),
        "checkpoint": checkpoint_view(row.checkpoint, listening),
        "datasets": spec.get("datasets") or [],
        "staging": staging_view(row.staging),
        "phase": job_phase(row),
        "actions": job_actions(row, listening),
        "description": row.description or describe(spec),
        "spec": spec,
    }


def move_blocker(row: Job, what: str, listening: bool) -> str | None:
    """Why the job cannot be checkpointed or migrated now (``what``: the verb), or None.
    The one rule: the master refuses with it, and clients show it on their buttons."""
    if not row.settled:
        return f"job {row.id} is {row.state}; only a running job can {what}"
    migration = row.migration
    if migration and migration["state"] not in ("done", "failed"):
        return f"job {row.id} is migrating ({migration['state']}); wait for it to end"
    request = (row.checkpoint or {}).get("request")
    if request and request["state"] == "pending":
        return f"job {row.id} is already writing a checkpoint ({request['reason']})"
    if not listening:
        return (
            f"job {row.id} does not answer checkpoint requests: its code never calls "
            "jupyter_aigrid.runtime.should_checkpoint()"
        )
    return None


def cancel_blocker(row: Job) -> str | None:
    """Why the job cannot be cancelled (it has ended), or None."""
    if row.state in FINAL_STATES:
        return f"job {row.id} has already {row.state}; there is nothing to cancel"
    return None


def job_actions(row: Job, listening: bool) -> dict[str, dict[str, Any]]:
    """What its owner may do with the job now: for each action, ``allowed`` and, when it is
    not, the ``reason`` (the message the request would be refused with)."""
    blockers = {
        Action.CANCEL: cancel_blocker(row),
        Action.CHECKPOINT: move_blocker(row, "checkpoint", listening),
        Action.MIGRATE: move_blocker(row, "migrate", listening),
    }
    return {
        str(action): {"allowed": why is None, "reason": why} for action, why in blockers.items()
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


def job_phase(row: Job) -> str | None:
    """What a starting job is doing: ``staging`` its data, ``restoring`` its checkpoint."""
    if row.state != "starting":
        return None
    staging = row.staging or {}
    if staging.get("state") == "staging" and staging.get("attempt") == row.attempt:
        return "staging"
    migration = row.migration or {}
    if migration.get("state") in ("transferring", "restoring"):
        return migration["state"]
    return None


def migration_view(
    migration: dict[str, Any] | None, now: float | None = None
) -> dict[str, Any] | None:
    """A job's latest migration (or resume from a checkpoint), its phases timed, and its
    timeline as clients draw it (``steps``, see :func:`migration_steps`; ``now``: the time
    the running phase is timed to, default the current time)."""
    if not migration:
        return None
    now = time.time() if now is None else now
    keep = ("id", "kind", "reason", "state", "from", "to", "checkpoint", "error", "prestart")
    started, finished = migration.get("started_at"), migration.get("finished_at")
    return {k: migration.get(k) for k in keep} | {
        "bytes": migration.get("bytes"),
        "phases": [
            {**p, "started_at": iso(p["started_at"]), "finished_at": iso(p["finished_at"])}
            for p in migration["phases"]
        ],
        "steps": migration_steps(migration, now),
        "started_at": iso(started),
        "finished_at": iso(finished),
        "duration_s": _seconds(started, finished),
    }


#: The phases of a migration, in the order the master runs them; a resume runs the last two.
MIGRATION_PHASES = ("checkpointing", "stopping", "transferring", "restoring")


def _seconds(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, end - start), 3)


def migration_steps(migration: dict[str, Any], now: float) -> list[dict[str, Any]]:
    """The migration's timeline: one step per phase of :data:`MIGRATION_PHASES`, in that
    order, each ``{"phase", "status", "duration_s", "bytes"}``. The sidebar and the
    notebook widget draw exactly these, so the rules live here only:

    - ``done``: the phase ran and finished; its duration, and the bytes it wrote
      (checkpointing), copied (transferring) or restored (restoring).
    - ``active``: the phase under way now (the migration's ``state``); its duration is the
      time so far, at ``now`` (null until the master has recorded the phase's start).
    - ``failed``: the phase the migration failed in: the last one it reached.
    - ``pending``: a phase still to come while the migration is under way.
    - ``skipped``: a phase it did not run and will not: a resume's checkpointing and
      stopping (it starts from a checkpoint already written), the phases after a failure,
      and any earlier phase the record lacks.

    ``migration`` is the stored record (Unix times).
    """
    state = migration["state"]
    recorded = {p["phase"]: p for p in migration.get("phases") or []}
    if state in MIGRATION_PHASES:
        at, here = MIGRATION_PHASES.index(state), "active"
    elif state == "failed":
        reached = [i for i, name in enumerate(MIGRATION_PHASES) if name in recorded]
        at, here = (reached[-1], "failed") if reached else (len(MIGRATION_PHASES), "failed")
    else:  # done
        at, here = len(MIGRATION_PHASES), "done"
    steps = []
    for i, name in enumerate(MIGRATION_PHASES):
        phase = recorded.get(name)
        if i < at:
            status = "done" if phase else "skipped"
        elif i == at:
            status = here
        else:
            status = "pending" if here == "active" else "skipped"
        duration = None
        if phase is not None and status != "pending":
            duration = phase.get("duration_s")
            if duration is None:
                # Unfinished: the time so far (running), or until the migration ended.
                end = phase.get("finished_at") or (
                    now if status == "active" else migration.get("finished_at")
                )
                duration = _seconds(phase.get("started_at"), end)
        steps.append(
            {
                "phase": name,
                "status": status,
                "duration_s": duration,
                "bytes": phase.get("bytes") if phase and status != "pending" else None,
            }
        )
    return steps


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


def location_view(loc: dict[str, Any]) -> dict[str, Any]:
    """One copy of a dataset version, as ``GET /datasets/{name}`` shows it."""
    return {
        "node": loc["node"],
        "path": loc["path"],
        "state": loc["state"],
        "managed": bool(loc["managed"]),
        "verified_at": iso(loc.get("verified_at")),
        "error": loc.get("error"),
    }
