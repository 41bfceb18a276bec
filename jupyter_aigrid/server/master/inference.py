"""Inference jobs: a resource type chosen from learnt profiles, and profiles learnt from results.

An inference job names a ``model``, an ``slo`` and a QoS class. While it waits, every round
(:mod:`~jupyter_aigrid.server.policies.qos`, a step of ``decide()``) chooses the resource
type it runs on from the profiles kept here. When the job ends, the
latencies it reported (``runtime.report(latency_ms=..., items=...)``) and its run time go
into the profile of (model, resource type), which is stored, and into the job's record:
predicted against observed p95, and whether the SLO was met.

:class:`Inference` is the master's component for it (the master thread runs all of it).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from ..accuracy import prediction_errors
from ..history import Prediction
from ..model import SUCCEEDED, Placement
from ..policies.qos import CPU, cost_of, resource_of, resource_of_placement, resource_types
from ..profiles import Choice, ProfileBook
from ..records import Job
from ..snapshot import Snapshot
from .core import Core, Part

log = logging.getLogger(__name__)


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


class Inference(Part):
    """The profiles inference jobs are placed by, and learning them from what jobs report."""

    def __init__(
        self,
        core: Core,
        snapshot: Callable[[], Snapshot],
        gpu_cost_per_hour: dict[str, float] | None = None,
        profile_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(core)
        self.snapshot = snapshot
        #: Cost per GPU-hour of each resource type; performance profiles, learnt and stored.
        self.gpu_cost_per_hour = dict(gpu_cost_per_hour or {})
        self.book = ProfileBook.from_rows(self.store.profiles(), **(profile_options or {}))
        #: Queued job -> the resource type the last round chose for it, and why.
        self.choices: dict[str, Choice] = {}

    def cost_of(self, resource: str) -> float:
        return cost_of(resource, self.gpu_cost_per_hour)

    def record_for(self, row: Job, placement: Placement) -> dict[str, Any]:
        """What the job's record says about its choice when a placement starts it."""
        spec = row.spec
        resource = resource_of_placement(placement, self.nodes.by_name)
        choice = self.choices.get(row.id)
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

    def learn(self, row: Job, succeeded: bool, ran_s: float) -> None:
        """Feed what an attempt of an inference job reported into its profile, store the
        profile, and record observed against predicted on the job."""
        record = row.inference
        if not record:
            return
        measured = results(
            [
                r
                for rank in range(row.replicas)
                for r in self.files.reports(row.id, row.attempt, rank)
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
            on_time = now - row.submitted_at <= slo["deadline_s"]
            met = on_time if met is None else met and on_time
        self.store.update_job(row.id, inference={**record, "observed": observed, "slo_met": met})

    # -- the REST view ----------------------------------------------------------------------

    def prediction_accuracy(self) -> dict[str, Any]:
        """How close the run time predictions of succeeded training jobs came (the estimates
        backfill and the other policies plan with): overall and per basis."""
        pairs = []
        for row in self.store.jobs((SUCCEEDED,)):
            guess = row.prediction
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

    def view(self, model: str | None) -> dict[str, Any]:
        snapshot = self.snapshot()
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
            "runtime_predictions": self.prediction_accuracy(),
            "resources": [
                {
                    "resource": r,
                    "cost_per_hour": self.cost_of(r),
                    "gpus": 0 if r == CPU else total,
                    "free": free.get(r, 0),
                    "simulated": r == "simulated" or r.startswith("simulated:"),
                }
                for r, total in sorted(resource_types(snapshot).items())
            ],
        }
