"""Inference jobs in a round: the resource type each one is pinned to, and the batch-class
gangs that make way for a realtime one.

While an inference job waits, every round asks the
:class:`~jupyter_aigrid.server.profiles.ProfileBook` which resource type (a GPU model, a
simulated GPU, or the CPU) it should run on, given what is free now and what the profiles
predict; the policy then places it on that type only. Pure functions of the snapshot.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Mapping
from dataclasses import replace

from ..model import InferenceAsk, Node, NodeView, Placement, Preempt, Request
from ..profiles import Choice, Offer, ProfileBook
from ..snapshot import Snapshot
from .preemption import victims_for

CPU = "cpu"
#: What a resource type costs per GPU-hour (per replica-hour on the CPU) unless configured.
DEFAULT_GPU_COST = 1.0
DEFAULT_CPU_COST = 0.1
#: The wait assumed for a busy type whose running jobs have no estimate yet.
UNKNOWN_WAIT_S = 600.0


def resource_of(gpu_model: str | None) -> str:
    """A GPU's model string is its resource type; no GPU at all is the CPU."""
    return gpu_model or CPU


def cost_of(resource: str, costs: Mapping[str, float]) -> float:
    default = DEFAULT_CPU_COST if resource == CPU else DEFAULT_GPU_COST
    return float(costs.get(resource, default))


def resource_types(snapshot: Snapshot) -> dict[str, int]:
    """Resource type -> GPUs of that type in the cluster (``cpu``: nodes)."""
    out: dict[str, int] = {}
    for node in snapshot.nodes:
        for g in node.gpus:
            out[resource_of(g.model)] = out.get(resource_of(g.model), 0) + 1
    out[CPU] = len(snapshot.nodes)
    return out


def resource_of_placement(placement: Placement, nodes: Mapping[str, Node | NodeView]) -> str:
    """The resource type a placement runs on (its first rank's GPU model; the CPU without)."""
    slot = placement.slots[0]
    node = nodes[slot.node]
    models = {g.model for g in node.gpus if g.index in slot.gpus}
    return resource_of(min(models)) if models else CPU


def offers(
    request: Request, ask: InferenceAsk, snapshot: Snapshot, costs: Mapping[str, float]
) -> list[Offer]:
    """What the job could run on: the GPU types with enough GPUs (a job with ``gpus``),
    or the CPU (a job without), only the type it names in ``gpu_type`` if it does; each
    with its free units now, or the wait for the soonest gang on it to end."""
    out = []
    if ask.gpus:
        per = max(1, ask.gpus // max(request.replicas, 1))
        for resource, total in sorted(resource_types(snapshot).items()):
            if resource == CPU or total < ask.gpus:
                continue
            trial = replace(request, gpus_per_replica=per, gpu_type=resource)
            free = sum(len(n.free_gpu_indices(resource)) for n in snapshot.nodes)
            fits = any(n.replicas_that_fit(trial) for n in snapshot.nodes)
            wait = 0.0 if fits else wait_for(resource, snapshot)
            out.append(Offer(resource, free if fits else 0, wait, cost_of(resource, costs)))
    else:
        trial = replace(request, gpus_per_replica=0, gpu_type=None)
        nodes = sum(1 for n in snapshot.nodes if n.replicas_that_fit(trial))
        wait = 0.0 if nodes else wait_for(CPU, snapshot)
        out.append(Offer(CPU, nodes, wait, cost_of(CPU, costs)))
    return [o for o in out if o.resource == ask.gpu_type] if ask.gpu_type else out


def wait_for(resource: str, snapshot: Snapshot) -> float:
    """Seconds until the first running gang on ``resource`` is expected to end."""
    waits = []
    for gang in snapshot.running.values():
        req = gang.request
        on = resource == CPU if not req.gpus else req.gpu_type in (None, resource)
        if not on:
            continue
        estimate = snapshot.history.estimate_s(req)
        waits.append(
            UNKNOWN_WAIT_S
            if estimate is None
            else max(0.0, estimate - (snapshot.now - gang.started_at))
        )
    return min(waits) if waits else math.inf


def choose(
    request: Request, snapshot: Snapshot, book: ProfileBook, costs: Mapping[str, float]
) -> Choice | None:
    """Where the inference job ``request`` should run now; None: nowhere yet."""
    ask = request.inference
    assert ask is not None
    seen = sum(p.count for p in book.all() if p.model == ask.model)
    # One draw per job and state of knowledge: a waiting job does not re-roll each round.
    rng = random.Random(f"{request.job_id}/{seen}")  # noqa: S311 (not security)
    return book.choose(ask.model, ask.slo, ask.qos, offers(request, ask, snapshot, costs), rng)


def pin(
    queue: list[Request], snapshot: Snapshot, book: ProfileBook, costs: Mapping[str, float]
) -> tuple[list[Request], dict[str, Choice]]:
    """The queue with every inference job pinned to the resource type chosen for it now,
    and those choices by job id. The batch class fills capacity no realtime job is waiting
    for: it does not start this round on a type a realtime job waits for (it would be
    preempted at once)."""
    out = []
    choices: dict[str, Choice] = {}
    for request in queue:
        if request.inference is None:
            out.append(request)
            continue
        choice = choose(request, snapshot, book, costs)
        if choice is None:
            out.append(request)  # nothing can take it: the policy sees it as asked
            continue
        choices[request.job_id] = choice
        pinned = choice.resource if choice.resource != CPU else None
        out.append(replace(request, gpu_type=pinned) if pinned else request)
    wanted = {
        choices[r.job_id].resource for r in out if r.job_id in choices and _qos(r) == "realtime"
    }
    kept = [
        r
        for r in out
        if not (r.job_id in choices and _qos(r) == "batch" and choices[r.job_id].resource in wanted)
    ]
    return kept, choices


def make_way(
    queue: list[Request],
    choices: Mapping[str, Choice],
    launched: Collection[str],
    going: Collection[str],
    snapshot: Snapshot,
    settled: Collection[str] | None,
) -> list[Preempt]:
    """Batch-class inference gangs that make way for a realtime job that waits for its
    resource type: the fewest, those that started last (least work lost) first. Whatever
    the policy, the batch class only fills capacity nobody realtime needs. Only gangs in
    ``settled`` (running, not on their way out; None: every running gang) are candidates."""
    waiting = [
        r
        for r in queue
        if r.job_id in choices and r.job_id not in launched and _qos(r) == "realtime"
    ]
    if not waiting:
        return []
    candidates = sorted(
        (
            g
            for job_id, g in snapshot.running.items()
            if g.request.inference is not None
            and g.request.inference.qos == "batch"
            and job_id not in going
            and (settled is None or job_id in settled)
        ),
        key=lambda g: -g.started_at,
    )
    out: list[Preempt] = []
    for request in waiting:
        reason = f"preempted for realtime job {request.job_id}"
        victims = victims_for(request, snapshot, candidates, reason)
        if victims:
            out.extend(victims)
            gone = {v.job_id for v in victims}
            candidates = [g for g in candidates if g.request.job_id not in gone]
            for job_id in gone:
                snapshot = snapshot.release(job_id)
    return out


def _qos(request: Request) -> str | None:
    return request.inference.qos if request.inference else None
