"""``python -m jupyter_aigrid.sim``: replay a trace through one or more policies.

    python -m jupyter_aigrid.sim --trace traces/slice-a.csv --nodes 16 --gpus-per-node 8 \\
        --policy aigrid [--policy fifo ...] [--preempt-overhead-s 40] [--json] [--plots DIR]

``--policy all`` runs every installed policy. ``--oracle`` declares each job's true duration as
its time limit (an oracle baseline, named ``<policy>+oracle``). ``--synthetic N`` replays N
generated jobs instead of a file. Without ``--json`` it prints a table and writes two PNG
plots: a JCT CDF per policy, and GPU utilisation over time.

``--staging-gbps`` models datasets (traces have none): each job type reads one dataset of
``--dataset-gb`` (a size, or LOW:HIGH drawn per dataset); a gang on nodes that lack it holds
its GPUs while they copy it, and they keep it (``--node-cache-gb``: LRU per node).
``--preload TYPE=NODES`` puts a dataset on nodes at the start; ``--data-blind`` hides where
data is from the policy (a baseline). Runs with staging report staging seconds, staging
GPU-seconds, bytes staged and the fraction of placements that staged nothing.

The table is followed by the error of the run time predictions each policy saw (from history
or declared limits, at each job's first start) against the jobs' real run times: overall and
per basis (which match of the history gave the estimate).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..options import policy_option
from ..server.policies import available_policies, load_policy
from .data import Staging
from .engine import METRICS, STAGING_METRICS, PredictionError, SimResult, Simulator, make_nodes
from .trace import TraceError, load_trace, synthetic_trace

COLUMNS = (*METRICS, ("wall_s", "wall (s)"), ("decisions_per_s", "decisions/s"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jupyter_aigrid.sim",
        description="Replay a job trace through the master's scheduling policies.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", type=Path, help="a CSV trace (job_id, submit_time_s, ...)")
    src.add_argument("--synthetic", type=int, metavar="N", help="N generated Philly-like jobs")
    p.add_argument("--load", type=float, default=0.9, help="offered load of --synthetic")
    p.add_argument("--seed", type=int, default=0, help="seed of --synthetic")
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument(
        "--policy", action="append", default=[], help="a policy name (repeatable), or all"
    )
    p.add_argument(
        "--policy-option",
        type=policy_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the policy, e.g. thresholds_gpu_s=[3600]",
    )
    p.add_argument("--preempt-overhead-s", type=float, default=40.0)
    p.add_argument("--oracle", action="store_true", help="declare true durations (a baseline)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plots", type=Path, default=Path(), metavar="DIR", help="where PNGs go")
    data = p.add_argument_group(
        "datasets", "model data staging (off unless --staging-gbps is given)"
    )
    data.add_argument(
        "--staging-gbps",
        type=float,
        metavar="GBPS",
        help="GB/s one node copies a dataset at; a gang holds its GPUs while its nodes copy "
        "what they lack (nodes copy in parallel, one dataset at a time each)",
    )
    data.add_argument(
        "--dataset-gb",
        type=_sizes,
        default=100.0,
        metavar="GB|LOW:HIGH",
        help="size of the one dataset each job type (model) reads, or a range that sizes are "
        "drawn from log-uniformly per dataset with --seed (default 100)",
    )
    data.add_argument(
        "--node-cache-gb",
        type=float,
        metavar="GB",
        help="what a node keeps; least recently used data no running gang reads goes first "
        "(default: unbounded)",
    )
    data.add_argument(
        "--preload",
        type=_preload,
        action="append",
        default=[],
        metavar="TYPE=NODES",
        help="nodes holding a job type's dataset at the start (repeatable), e.g. "
        "'ResNet-50=0-3,7' (node indices); TYPE * means every dataset",
    )
    data.add_argument(
        "--data-blind",
        action="store_true",
        help="stage data but hide where it is from the policy (a baseline; '+data-blind')",
    )
    return p


def _sizes(text: str) -> float | tuple[float, float]:
    try:
        parts = tuple(float(x) for x in text.split(":"))
    except ValueError:
        parts = ()
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts  # type: ignore[return-value]
    msg = f"must be GB or LOW:HIGH, such as 100 or 10:1000, got {text!r}"
    raise argparse.ArgumentTypeError(msg)


def _preload(text: str) -> tuple[str, tuple[int, ...]]:
    job_type, _, spec = text.rpartition("=")
    indices: list[int] = []
    try:
        for part in spec.split(","):
            low, _, high = part.partition("-")
            indices.extend(range(int(low), int(high or low) + 1))
    except ValueError:
        indices = []
    if not job_type or not indices:
        msg = f"must be TYPE=NODES, with node indices such as 0-3,7, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return job_type, tuple(indices)


def staging_of(args: argparse.Namespace, node_names: list[str]) -> Staging | None:
    """The --staging-gbps group as a :class:`Staging`; None when staging is off."""
    if args.staging_gbps is None:
        given = [
            flag
            for flag, on in (
                ("--node-cache-gb", args.node_cache_gb is not None),
                ("--preload", bool(args.preload)),
                ("--data-blind", args.data_blind),
            )
            if on
        ]
        if given:
            msg = f"{', '.join(given)} need(s) --staging-gbps (data staging is off without it)"
            raise TraceError(msg)
        return None
    preload: dict[str, tuple[str, ...]] = {}
    for job_type, indices in args.preload:
        bad = [i for i in indices if i >= len(node_names)]
        if bad:
            msg = f"--preload {job_type}: node {bad[0]} does not exist (--nodes {len(node_names)})"
            raise TraceError(msg)
        preload[job_type] = (*preload.get(job_type, ()), *(node_names[i] for i in indices))
    return Staging(
        args.staging_gbps,
        args.dataset_gb,
        cache_gb=args.node_cache_gb,
        preload=preload,
        blind=args.data_blind,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> list[SimResult]:
    if args.nodes < 1 or args.gpus_per_node < 1:
        msg = "--nodes and --gpus-per-node must be at least 1"
        raise TraceError(msg)
    total = args.nodes * args.gpus_per_node
    if args.trace is not None:
        jobs, source = load_trace(args.trace), str(args.trace)
    else:
        if args.synthetic < 1:
            msg = f"--synthetic must be at least 1, got {args.synthetic}"
            raise TraceError(msg)
        jobs = synthetic_trace(args.synthetic, total, load=args.load, seed=args.seed)
        source = f"synthetic-{args.synthetic}"
    names = args.policy or ["aigrid"]
    if "all" in names:
        names = sorted(available_policies())
    options = dict(args.policy_option)
    if options and len(names) > 1:
        msg = "--policy-option goes with one --policy: each policy takes its own options"
        raise TraceError(msg)
    nodes = make_nodes(args.nodes, args.gpus_per_node)
    staging = staging_of(args, [n.name for n in nodes])
    results = []
    for name in names:
        policy = load_policy(name, **options)
        sim = Simulator(
            jobs,
            nodes,
            policy,
            preempt_overhead_s=args.preempt_overhead_s,
            oracle=args.oracle,
            source=source,
            staging=staging,
        )
        results.append(sim.run())
        if not args.json:
            print(f"  {results[-1].policy}: {results[-1].metrics['wall_s']:.2f} s", file=sys.stderr)
    return results


def table(results: list[SimResult]) -> str:
    columns = COLUMNS
    if any("staged_bytes" in r.metrics for r in results):
        columns = (*METRICS, *STAGING_METRICS, *COLUMNS[len(METRICS) :])
    header = ["policy", *(label for _, label in columns)]
    rows = [[r.policy, *(f"{r.metrics[k]:,}" for k, _ in columns)] for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    )


def prediction_table(results: list[SimResult]) -> str:
    """Run time prediction errors per policy: overall, then per basis."""
    header = ["policy", "basis", "jobs", "MAPE", "median APE", "within 2x", "coverage"]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:,.1f}%"

    def row(policy: str, basis: str, e: PredictionError) -> list[str]:
        figures = (e.mape, e.median_ape, e.within_2x, e.coverage)
        return [policy, basis, f"{e.jobs:,}", *(pct(x) for x in figures)]

    rows = [row(r.policy, basis, e) for r in results for basis, e in r.prediction.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.rjust(w) if i > 1 else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    )


def plot(results: list[SimResult], folder: Path, stem: str) -> list[Path]:
    """A JCT CDF per policy, and GPU utilisation over time; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)

    def figure(name: str, title: str, xlabel: str, ylabel: str, draw) -> Path:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in results:
            draw(ax, r)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {stem}")
        ax.legend()
        path = folder / f"{stem}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def cdf(ax, r: SimResult) -> None:
        jct = sorted(rec.finish - rec.job.submit_s for rec in r.records)
        ax.plot(jct, [(i + 1) / len(jct) for i in range(len(jct))], label=r.policy)
        ax.set_xscale("log")

    def utilisation(ax, r: SimResult) -> None:
        days = [t / 86400 for t, _ in r.timeline]
        ax.step(days, [g for _, g in r.timeline], where="post", label=r.policy, linewidth=0.8)

    return [
        figure("jct-cdf", "JCT CDF", "job completion time (s)", "fraction of jobs", cdf),
        figure("utilization", "GPU utilisation", "days", "GPUs allocated", utilisation),
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        results = run(args)
    except (TraceError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        if len(results) == 1:
            print(json.dumps(results[0].metrics))
        else:
            print(json.dumps({r.policy: r.metrics for r in results}))
        return 0
    print(table(results))
    print(
        "\nrun time predictions the policies saw at each job's first start, against real run times:"
    )
    print(prediction_table(results))
    stem = args.trace.stem if args.trace is not None else f"synthetic-{args.synthetic}"
    for path in plot(results, args.plots, stem):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
