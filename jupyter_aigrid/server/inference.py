"""Inference jobs: a resource type chosen from learnt profiles, and profiles learnt from results.

An inference job names a ``model``, an ``slo`` and a QoS class. While it waits, every round
asks the :class:`~jupyter_aigrid.server.profiles.ProfileBook` which resource type (a GPU
model, a simulated GPU, or the CPU) it should run on, given what is free now and what the
profiles predict; the policy then places it on that type only. When the job ends, the
latencies it reported (``runtime.report(latency_ms=..., items=...)``) and its run time go
into the profile of (model, resource type), which is stored, and into the job's record:
predicted against observed p95, and whether the SLO was met.

Mixed into :class:`~jupyter_aigrid.server.master.Master` (the master thread runs all of it).
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from dataclasses import replace
from typing import Any

from .accuracy import prediction_errors
from .model import RUNNING, SUCCEEDED, Placement, Preempt, Request
from .policies.base import Round
from .policies.preemption import victims_for
from .profiles import Choice, Offer, ProfileBook, Slo
from .snapshot import Prediction, Snapshot

log = logging.getLogger(__name__)

CPU = "cpu"
#: What a resource type costs per GPU-hour (per replica-hour on the CPU) unless configured.
DEFAULT_GPU_COST = 1.0
DEFAULT_CPU_COST = 0.1
#: The wait assumed for a busy type whose running jobs have no estimate yet.
UNKNOWN_WAIT_S = 600.0


def resource_of(gpu_model: str | None) -> str:
    """A GPU's model string is its resource type; no GPU at all is the CPU."""
    return gpu_model or CPU


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def results(reports: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(latency_ms, items) of the reports that carry a latency (items 1 unless a positive
    number is given); other reports (metrics of another kind) are not results."""
    return [
        (
            float(r["latency_ms"]),
            float(r["items"]) if _number(r.get("items")) and r["items"] else 1.0,
        )
        for r in reports
        if _number(r.get("latency_ms"))
    ]


def latency_summary(measured: list[tuple[float, float]]) -> dict[str, Any] | None:
    """count, p50, p95, mean, items and throughput of (latency_ms, items) results."""
    if not measured:
        return None
    latencies = [ms for ms, _ in measured]
    items = sum(n for _, n in measured)
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    busy_s = sum(latencies) / 1000
    return {
        "count": len(latencies),
        "p50_ms": round(at(0.5), 6),
        "p95_ms": round(at(0.95), 6),
        "mean_ms": round(statistics.fmean(latencies), 6),
        "items": items,
        "throughput": round(items / busy_s, 6) if busy_s > 0 else None,
    }


class Inference:
    """Choosing where inference jobs run, and learning from what they report."""

    book: ProfileBook
    gpu_cost_per_hour: dict[str, float]
    _inference_specs: dict[str, Any]
    _choices: dict[str, Choice]

    # -- resource types ---------------------------------------------------------------------

    def cost_of(self, resource: str) -> float:
        default = DEFAULT_CPU_COST if resource == CPU else DEFAULT_GPU_COST
        return float(self.gpu_cost_per_hour.get(resource, default))

    def _resource_types(self) -> dict[str, int]:
        """Resource type -> GPUs of that type in the cluster (``cpu``: nodes)."""
        out: dict[str, int] = {}
        for node in self.nodes:
            for g in node.gpus:
                out[resource_of(g.model)] = out.get(resource_of(g.model), 0) + 1
        out[CPU] = len(self.nodes)
        return out

    def _resource_of_placement(self, placement: Placement) -> str:
        slot = placement.slots[0]
        node = self._nodes_by_name[slot.node]
        models = {g.model for g in node.gpus if g.index in slot.gpus}
        return resource_of(min(models)) if models else CPU

    def _offers(self, request: Request, spec: dict[str, Any], snapshot: Snapshot) -> list[Offer]:
        """What the job could run on: the GPU types with enough GPUs (a job with ``gpus``),
        or the CPU (a job without), only the type it names in ``gpu_type`` if it does; each
        with its free units now, or the wait for the soonest gang on it to end."""
        want = int(spec.get("gpus") or 0)
        offers = []
        if want:
            per = max(1, want // max(request.replicas, 1))
            for resource, total in sorted(self._resource_types().items()):
                if resource == CPU or total < want:
                    continue
                trial = replace(request, gpus_per_replica=per, gpu_type=resource)
                free = sum(len(n.free_gpu_indices(resource)) for n in snapshot.nodes)
                fits = any(n.replicas_that_fit(trial) for n in snapshot.nodes)
                wait = 0.0 if fits else self._wait_for(resource, snapshot)
                offers.append(Offer(resource, free if fits else 0, wait, self.cost_of(resource)))
        else:
            trial = replace(request, gpus_per_replica=0, gpu_type=None)
            nodes = sum(1 for n in snapshot.nodes if n.replicas_that_fit(trial))
            wait = 0.0 if nodes else self._wait_for(CPU, snapshot)
            offers.append(Offer(CPU, nodes, wait, self.cost_of(CPU)))
        pinned = spec.get("gpu_type")
        return [o for o in offers if o.resource == pinned] if pinned else offers

    def _wait_for(self, resource: str, snapshot: Snapshot) -> float:
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

    # -- choosing ---------------------------------------------------------------------------

    def _choose_resources(self, queue: list[Request], snapshot: Snapshot) -> list[Request]:
        """The queue with every inference job pinned to the resource type chosen for it now
        (kept in ``_choices`` for the record made when it starts)."""
        out = []
        self._choices = {}
        known = self._inference_specs
        self._inference_specs = {r.job_id: known.get(r.job_id, False) for r in queue}
        for request in queue:
            spec = self._inference_specs[request.job_id]
            if spec is False:  # not looked at yet
                row = self.store.job(request.job_id)
                spec = row["spec"] if row and row["kind"] == "inference" else None
                self._inference_specs[request.job_id] = spec
            if spec is None:
                out.append(request)
                continue
            choice = self._choose(request, spec, snapshot)
            if choice is None:
                out.append(request)  # nothing can take it: the policy sees it as asked
                continue
            self._choices[request.job_id] = choice
            pinned = choice.resource if choice.resource != CPU else None
            out.append(replace(request, gpu_type=pinned) if pinned else request)
        # The batch class fills capacity no realtime job is waiting for: it does not start
        # this round on a type a realtime job waits for (it would be preempted at once).
        wanted = {
            self._choices[r.job_id].resource
            for r in out
            if r.job_id in self._choices and self._qos_of(r.job_id) == "realtime"
        }
        return [
            r
            for r in out
            if not (
                r.job_id in self._choices
                and self._qos_of(r.job_id) == "batch"
                and self._choices[r.job_id].resource in wanted
            )
        ]

    def _qos_of(self, job_id: str) -> str | None:
        spec = self._inference_specs.get(job_id)
        return spec.get("qos") if spec else None

    def _choose(self, request: Request, spec: dict[str, Any], snapshot: Snapshot) -> Choice | None:
        model = spec["model"]
        seen = sum(p.count for p in self.book.all() if p.model == model)
        # One draw per job and state of knowledge: a waiting job does not re-roll each tick.
        rng = random.Random(f"{request.job_id}/{seen}")  # noqa: S311 (not security)
        return self.book.choose(
            model,
            Slo.from_dict(spec.get("slo")),
            spec.get("qos") or "interactive",
            self._offers(request, spec, snapshot),
            rng,
        )

    def _qos_preemptions(self, queue: list[Request], decided: Round) -> list[Preempt]:
        """Batch-class inference gangs that make way for a realtime job that waits for its
        resource type: the fewest, those that started last (least work lost) first. Whatever
        the policy, the batch class only fills capacity nobody realtime needs."""
        launched = {launch.job_id for launch in decided.launches}
        waiting = [
            r
            for r in queue
            if r.job_id in self._choices
            and r.job_id not in launched
            and self._qos_of(r.job_id) == "realtime"
        ]
        if not waiting:
            return []
        going = {p.job_id for p in decided.preemptions}
        batch = {
            row["id"]
            for row in self.store.jobs((RUNNING,))
            if row["kind"] == "inference"
            and row["spec"].get("qos") == "batch"
            and not row.get("pending_state")
            and row["id"] not in going
        }
        snapshot = decided.snapshot
        candidates = sorted(
            (g for job_id, g in snapshot.running.items() if job_id in batch),
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

    def _inference_record(self, row: dict[str, Any], placement: Placement) -> dict[str, Any]:
        """What the job's record says about its choice when a placement starts it."""
        spec = row["spec"]
        resource = self._resource_of_placement(placement)
        choice = self._choices.get(row["id"])
        profile = self.book.get(spec["model"], resource)
        return {
            "model": spec["model"],
            "qos": spec.get("qos") or "interactive",
            "slo": spec.get("slo") or {},
            "resource": resource,
            "cost_per_hour": self.cost_of(resource),
            "predicted_p95_ms": profile.p95_ms if profile else None,
            "reason": choice.reason if choice and choice.resource == resource else "placed",
            "observed": None,
            "slo_met": None,
        }

    # -- learning -------------------------------------------------------------------------

    def _learn(self, row: dict[str, Any], succeeded: bool, ran_s: float) -> None:
        """Feed what an attempt of an inference job reported into its profile, store the
        profile, and record observed against predicted on the job."""
        record = row.get("inference")
        if not record:
            return
        measured = results(
            [
                r
                for rank in range(row["replicas"])
                for r in self.files.reports(row["id"], row["attempt"], rank)
            ]
        )
        model, resource, now = record["model"], record["resource"], time.time()
        for latency_ms, items in measured:
            self.book.observe(model, resource, latency_ms, items, now)
        if succeeded:
            self.book.observe_run(model, resource, ran_s, now)
        profile = self.book.get(model, resource)
        if profile is not None:
            self.store.put_profile(profile.to_row())
        observed = latency_summary(measured)
        slo = record.get("slo") or {}
        met: bool | None = None
        if observed is not None and slo.get("latency_ms") is not None:
            met = observed["p95_ms"] <= slo["latency_ms"]
        if slo.get("deadline_s") is not None and succeeded:
            on_time = now - row["submitted_at"] <= slo["deadline_s"]
            met = on_time if met is None else met and on_time
        self.store.update_job(row["id"], inference={**record, "observed": observed, "slo_met": met})

    # -- the REST view ----------------------------------------------------------------------

    def _prediction_accuracy(self) -> dict[str, Any]:
        """How close the run time predictions of succeeded training jobs came (the estimates
        backfill and the other policies plan with): overall and per basis."""
        pairs = []
        for row in self.store.jobs((SUCCEEDED,)):
            guess = row.get("prediction")
            if guess and guess.get("actual_s") is not None:
                pairs.append((Prediction(guess["run_s"], guess["basis"]), guess["actual_s"]))
        return (
            {
                basis: {
                    "jobs": e.jobs,
                    "predicted": e.predicted,
                    "coverage": round(e.coverage, 6),
                    "mape": e.mape,
                    "median_ape": e.median_ape,
                    "within_2x": e.within_2x,
                }
                for basis, e in prediction_errors(pairs).items()
            }
            if pairs
            else {}
        )

    def _profiles_view(self, model: str | None) -> dict[str, Any]:
        snapshot = self._snapshot()
        free: dict[str, int] = {}
        for node in snapshot.nodes:
            for g in node.gpus:
                if g.index in node.free_gpus:
                    free[resource_of(g.model)] = free.get(resource_of(g.model), 0) + 1
        free[CPU] = sum(1 for n in snapshot.nodes if n.free_cpus >= 1)
        rows = []
        for p in self.book.all():
            if model is not None and p.model != model:
                continue
            rows.append(
                {
                    "model": p.model,
                    "resource": p.resource,
                    "count": p.count,
                    "ewma_ms": p.ewma_ms,
                    "p50_ms": p.p50_ms,
                    "p95_ms": p.p95_ms,
                    "throughput": p.throughput,
                    "run_s": p.run_s,
                    "updated_at": p.updated_at,
                    "cost_per_hour": self.cost_of(p.resource),
                }
            )
        return {
            "profiles": rows,
            "runtime_predictions": self._prediction_accuracy(),
            "resources": [
                {
                    "resource": r,
                    "cost_per_hour": self.cost_of(r),
                    "gpus": 0 if r == CPU else total,
                    "free": free.get(r, 0),
                    "simulated": r == "simulated" or r.startswith("simulated:"),
                }
                for r, total in sorted(self._resource_types().items())
            ],
        }
