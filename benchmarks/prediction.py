"""How well history predicts training run times on the Philly traces, next to baselines.

    python benchmarks/prediction.py [--traces ../shared/traces]

For each Philly VC (``philly-b436b2``, ``philly-0e4a51``, ``philly-7f04ca``), jobs are taken in
arrival order and each one's run time is predicted from the jobs that had *finished* before it
arrived, as if every job had started on arrival (its end = arrival + run time; queueing would
only make fewer runs known). The traces have no users or code, so history is per job type
(model and batch size): :class:`History`'s chain of a recent sibling (same type and GPUs
within a week), then the type's median, then the means of the VC, the GPU count, all jobs.

Baselines measured in the same run, from the same finished jobs: the mean of all of them (a
predictor that knows nothing of types), and the median of the job type alone (no siblings).
The traces declare no time limits, so there is no user-declared figure to compare with.

Last, each VC goes through the simulator with the ``backfill`` policy (16 x 8 GPUs, or more
for the VC's biggest gang), which reports the error of the estimates backfill saw at each
job's first start: history there also holds the runs that finished while a job queued.

Error figures: MAPE (mean of |predicted - real| / real), median APE, the share predicted
within 2x (half to twice the real run time), and coverage (the share with any prediction).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from jupyter_aigrid.server.history import History, Prediction
from jupyter_aigrid.server.model import Request
from jupyter_aigrid.server.policies import load_policy
from jupyter_aigrid.sim import Simulator, TraceJob, load_trace, make_nodes
from jupyter_aigrid.sim.engine import PredictionError, prediction_errors

ROOT = Path(__file__).resolve().parent.parent
VCS = ("philly-b436b2", "philly-0e4a51", "philly-7f04ca")


def request_of(job: TraceJob) -> Request:
    return Request(
        job_id=job.job_id,
        owner=job.user,
        replicas=job.gpus,
        gpus_per_replica=1,
        cpus_per_replica=0.0,
        memory_mb_per_replica=0,
        submitted_at=job.submit_s,
        job_type=job.job_type,
    )


def replay(jobs: list[TraceJob]) -> dict[str, list[tuple[Prediction, float]]]:
    """(prediction, real run time) per job for each predictor, in arrival order."""
    arrivals = sorted(jobs, key=lambda j: (j.submit_s, j.row))
    ends = sorted(jobs, key=lambda j: (j.submit_s + j.duration_s, j.row))
    history = History()
    count, total = 0, 0.0
    by_type: dict[str, list[float]] = {}
    out: dict[str, list[tuple[Prediction, float]]] = {"history": [], "mean": [], "type": []}
    done = 0
    for job in arrivals:
        while done < len(ends) and ends[done].submit_s + ends[done].duration_s <= job.submit_s:
            finished = ends[done]
            history = history.add(request_of(finished), finished.duration_s)
            count, total = count + 1, total + finished.duration_s
            by_type.setdefault(finished.job_type, []).append(finished.duration_s)
            done += 1
        real = job.duration_s
        out["history"].append((history.predict(request_of(job)), real))
        mean = Prediction(total / count, "global") if count else Prediction(None, "none")
        out["mean"].append((mean, real))
        runs = by_type.get(job.job_type)
        median = Prediction(statistics.median(runs), "type") if runs else Prediction(None, "none")
        out["type"].append((median, real))
    return out


def in_simulator(jobs: list[TraceJob]) -> PredictionError:
    """What backfill saw in a simulated run of the VC, against the real run times."""
    nodes = max(16, -(-max(j.gpus for j in jobs) // 8))
    result = Simulator(jobs, make_nodes(nodes, 8), load_policy("backfill"), 40.0).run()
    return result.prediction["all"]


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:,.1f}%"


def line(label: str, e: PredictionError) -> str:
    return (
        f"{label:44}{e.jobs:>7,}{pct(e.coverage):>10}{pct(e.mape):>11}"
        f"{pct(e.median_ape):>12}{pct(e.within_2x):>11}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=Path, default=ROOT.parent / "shared" / "traces")
    args = ap.parse_args()
    files = [args.traces / f"{vc}.csv" for vc in VCS]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        print(f"skipped: {', '.join(missing)} not found under {args.traces} (give --traces DIR)")
        return 0
    header = (
        f"{'predictor':44}{'jobs':>7}{'coverage':>10}{'MAPE':>11}{'median APE':>12}"
        f"{'within 2x':>11}"
    )
    started = time.perf_counter()
    for path in files:
        jobs = load_trace(path)
        types = len({j.job_type for j in jobs})
        print(f"\n== {path.name}: {len(jobs):,} jobs, {types} job types ==")
        print(header)
        got = replay(jobs)
        chain = prediction_errors(got["history"])
        print(line("history per job type (sibling > type > ...)", chain.pop("all")))
        for basis, e in chain.items():
            print(line(f"  of which basis {basis}", e))
        print(line("baseline: mean of all finished jobs", prediction_errors(got["mean"])["all"]))
        print(line("baseline: median of the job type", prediction_errors(got["type"])["all"]))
        print(line("in the simulator: what backfill saw", in_simulator(jobs)))
    print(f"\n({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
