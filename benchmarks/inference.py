"""Inference with QoS: the profile policy next to speed-blind placement, on the same requests.

    python benchmarks/inference.py [--seed 0] [--duration 120] [--loads 0.5,0.7,0.9]

The workload is :func:`jupyter_aigrid.sim.inference.reference_workload`: 4 fast GPUs
(``simulated:a100``, 2.50/h), 12 GPUs 4x slower (``simulated:t4``, 0.35/h) and 32 CPU slots
20x slower (``cpu``, 0.10/h); realtime requests (p95 <= 20 ms; 15% of the work) that only
the fast GPUs serve in time, interactive ones (p95 <= 200 ms; 35%) that the slow GPUs serve
too, and batch ones (done within 30 s; 50%) that anything serves and that realtime requests
preempt. Load is offered work over capacity in fast-GPU-seconds per second (see the
simulator's docstring). Every policy serves the very same requests (same seed), cold start
included: the profile policy starts knowing nothing.

1. ``profile``, ``least_loaded`` and ``round_robin`` at each load: SLO attainment per class,
   realtime p95, what busy units cost per hour, and preemptions.
2. At 70% load, the slow GPUs turn 2x slower halfway through: the same figures for the
   requests that arrive after that, and the share of interactive requests each policy
   still sends to the slowed GPUs.

Target: at 70% load, ``profile`` attains >= 99% of realtime requests within their SLO while
``least_loaded`` attains less (printed as MET or NOT MET).
"""

from __future__ import annotations

import argparse
import sys
import time

from jupyter_aigrid.sim.inference import (
    POLICIES,
    Degradation,
    InferenceResult,
    Workload,
    reference_workload,
    simulate,
)

TARGET_LOAD = 0.7
TARGET_ATTAINMENT = 0.99


def describe(workload: Workload) -> None:
    print(f"reference: {workload.reference}; capacity {workload.capacity:.2f} reference units")
    for r in workload.resources:
        print(f"  {r.name}: {r.units} units, {r.slowdown:g}x slower, {r.cost_per_hour:.2f}/h")
    for c in workload.classes:
        slo = ", ".join(
            f"{k} <= {v:g}" for k, v in vars(c.slo).items() if v is not None
        )  # p95 latency and/or completion
        print(
            f"  {c.qos} ({c.model}): {c.rate:.1f} req/s at {workload.load:.0%} load, "
            f"median {c.median_ms:g} ms on the reference (sigma {c.sigma:g}), SLO {slo}"
        )


def header() -> None:
    print(
        "| load | policy | realtime SLO | interactive SLO | batch SLO | realtime p95 (ms) "
        "| cost ($/h busy) | preemptions | wall (s) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")


def row(label: str, result: InferenceResult, wall: float) -> None:
    c = result.classes
    print(
        f"| {label} | {result.policy} | {c['realtime'].slo_attainment:.2%} "
        f"| {c['interactive'].slo_attainment:.2%} | {c['batch'].slo_attainment:.2%} "
        f"| {c['realtime'].p95_ms:,.1f} | {result.cost_per_hour:,.2f} "
        f"| {result.preemptions:,} | {wall:.2f} |"
    )


def run(workload: Workload, policy: str, seed: int, **kw) -> tuple[InferenceResult, float]:
    started = time.perf_counter()
    result = simulate(workload, policy, seed, **kw)
    return result, time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of arrivals")
    ap.add_argument("--loads", default="0.5,0.7,0.9")
    args = ap.parse_args()
    loads = sorted({float(x) for x in args.loads.split(",")} | {TARGET_LOAD})

    describe(reference_workload(TARGET_LOAD, args.duration))
    print()
    header()
    at_target: dict[str, InferenceResult] = {}
    for load in loads:
        workload = reference_workload(load, args.duration)
        for policy in POLICIES:
            result, wall = run(workload, policy, args.seed)
            row(f"{load:.0%}", result, wall)
            if load == TARGET_LOAD:
                at_target[policy] = result

    half = args.duration / 2
    degradation = Degradation("simulated:t4", 2.0, half)
    print(
        f"\n{degradation.resource} {degradation.factor:g}x slower from {half:g} s, "
        f"{TARGET_LOAD:.0%} load (SLO and p95: requests arriving from then on; cost and "
        "preemptions: the whole run):\n"
    )
    header()
    workload = reference_workload(TARGET_LOAD, args.duration)
    moved = {}
    for policy in POLICIES:
        result, wall = run(workload, policy, args.seed, degradation=degradation, since_s=half)
        row(f"{TARGET_LOAD:.0%}", result, wall)
        moved[policy] = result.classes["interactive"].placed.get(degradation.resource, 0.0)
    shares = ", ".join(f"{p} {s:.1%}" for p, s in moved.items())
    print(f"\ninteractive requests sent to {degradation.resource} after it slowed: {shares}")

    ours = at_target["profile"].classes["realtime"].slo_attainment
    blind = at_target["least_loaded"].classes["realtime"].slo_attainment
    verdict = "MET" if ours >= TARGET_ATTAINMENT and blind < ours else "NOT MET"
    print(
        f"\ntarget at {TARGET_LOAD:.0%} load: profile realtime SLO attainment >= "
        f"{TARGET_ATTAINMENT:.0%} and least_loaded below it: profile {ours:.2%}, "
        f"least_loaded {blind:.2%}: {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
