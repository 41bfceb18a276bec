"""Ray executor start latency: a 4-GPU gang through AI Grid, next to a bare placement group.

    python benchmarks/ray_start.py [--runs 10]

A real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, as in
``tests/test_ray.py``): a head that runs nothing and 3 nodes of 2 CPUs and 2 logical GPUs.
The work is the same everywhere: 4 replicas of 1 GPU each over 2 nodes (2 per node), each
running a tiny script whose first line is ``time.time()`` (flushed), then exiting.

AI Grid: an in-process ``Master`` (fifo policy) on ``RayExecutor``. t0 just before
``_submit({"code": CODE, "gpus": 4})``; then ``_tick()`` every ~10 ms until the job has
succeeded. Start latency: the latest of the 4 printed times (read from the ranks' stdout
files) minus t0, i.e. until all ranks run the user's code. Time to ``succeeded`` is shown too.
The breakdown rows time the executor's calls in that path (``rendezvous``: a Ray task that
finds a free port on rank 0's node; ``prepare_gang``: the placement group and its wait;
the 4 ``launch`` calls, each creating an actor and asking it to start, without waiting:
the starts complete together and ``started()`` reports them).

Baseline, the bare Ray equivalent on the same 2 nodes: t0; a placement group of 4 bundles
``{"GPU": 1, "CPU": 0.01}`` pinned with ``bundle_label_selector`` (``ray.io/node-id``);
``pg.wait()``; 4 actors (``num_gpus=1, num_cpus=0.01``, one per bundle), all asked at once
to write the script to a file and ``subprocess.run`` it; latency: the latest printed time
minus t0; then the actors are killed and the group removed. AI Grid runs the script as
``python -u -m jupyter_aigrid.runner script.py`` (the runner loads pushed inputs and
records errors and outputs: it imports a little of our package), so the baseline is timed
two ways: a plain ``python -u script.py``, and the same ``-m jupyter_aigrid.runner`` command
line. The runner needs no variable to run (its ``AIGRID_*`` ones are all optional); the
subprocess gets the actor's own environment (``PYTHONPATH`` included, where the package is
found through it), like the replica, which gets the master's.

Each run does one of each, interleaved, after one untimed warm-up of each; between two,
the cluster is left to give every GPU back (untimed). Target: AI Grid's p50 start latency
at most ``TARGET_RATIO`` x the bare placement group's (plain ``python -u``) p50 +
``TARGET_SLACK_MS``, i.e. ``TARGET_RATIO = 1.5``, ``TARGET_SLACK_MS = 300``. Figures are
printed, never asserted; progress goes to stderr. The cluster's and the master's files
live in a temporary directory, removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ray
from _server import parse_runs, percentile, print_percentiles
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

CODE = "import time\nprint(repr(time.time()), flush=True)\n"
REPLICAS = 4
TARGET_RATIO = 1.5
TARGET_SLACK_MS = 300.0
TIMEOUT_S = 180.0
TICK_SLEEP_S = 0.01
NODE_ARGS = {"object_store_memory": 80 * 2**20, "include_dashboard": False}
RUNNER = ["-m", "jupyter_aigrid.runner"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the cluster ---------------------------------------------------------------------------


def start_cluster(tmp: Path):
    """A head with no CPUs or GPUs and 3 nodes of 2 CPUs and 2 GPUs (as tests/test_ray.py)."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    small = {**NODE_ARGS, "temp_dir": str(tmp / "ray")}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, **small})
    try:
        for _ in range(3):
            c.add_node(num_cpus=2, num_gpus=2, **small)
        c.wait_for_nodes()
    except BaseException:
        c.shutdown()
        raise
    return c


def wait_idle(total_gpus: float, timeout_s: float = 60.0) -> None:
    """Until every GPU is free again (the last gang's actors and group are gone)."""
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("GPU", 0.0) < total_gpus:
        if time.monotonic() > deadline:
            msg = f"GPUs still held after {timeout_s:g} s: {ray.available_resources()}"
            raise RuntimeError(msg)
        time.sleep(0.02)


def first_time(text: str, who: str) -> float:
    """The time the script printed first."""
    try:
        return float(text.splitlines()[0])
    except (IndexError, ValueError):
        msg = f"{who} printed {text[:300]!r}, not a time"
        raise RuntimeError(msg) from None


# -- baseline: a bare placement group and actors --------------------------------------------


class BareReplica:
    """What one replica does, in bare Ray: write the script on its node, run it, hand back
    its stdout."""

    def run(self, path: str, code: str, prefix: list[str]) -> str:
        import subprocess

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(code, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, "-u", *prefix, path], capture_output=True, check=False
        )
        if done.returncode != 0:
            msg = f"exited with {done.returncode}: {done.stderr.decode()[-1000:]}"
            raise RuntimeError(msg)
        return done.stdout.decode()


def bare_once(actor_class, node_ids: list[str], folder: Path, prefix: list[str]) -> dict:
    """Seconds from t0 to the placement group ready and to the last replica's first line."""
    t0 = time.time()
    selector = [{"ray.io/node-id": n} for n in node_ids]
    pg = placement_group(
        [{"GPU": 1.0, "CPU": 0.01} for _ in node_ids],
        strategy="PACK",
        bundle_label_selector=selector,
    )
    actors = []
    try:
        if not pg.wait(timeout_seconds=TIMEOUT_S):
            msg = f"the placement group was not ready within {TIMEOUT_S:g} s"
            raise RuntimeError(msg)
        pg_ready = time.time() - t0
        actors = [
            actor_class.options(
                num_gpus=1,
                num_cpus=0.01,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=i
                ),
            ).remote()
            for i in range(len(node_ids))
        ]
        refs = [
            a.run.remote(str(folder / f"rank-{i}" / "main.py"), CODE, prefix)
            for i, a in enumerate(actors)
        ]
        outs = ray.get(refs, timeout=TIMEOUT_S)
        ended = time.time() - t0
    finally:
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
        with contextlib.suppress(Exception):
            remove_placement_group(pg)
    start = max(first_time(out, f"bare rank {i}") for i, out in enumerate(outs)) - t0
    return {"start": start, "pg": pg_ready, "end": ended}


# -- AI Grid: the master on the Ray executor ------------------------------------------------


def make_master(state: Path, address: str):
    from jupyter_aigrid.server.executors.ray import RayExecutor
    from jupyter_aigrid.server.master import Master
    from jupyter_aigrid.server.policies import load_policy
    from jupyter_aigrid.server.store import Store

    state.mkdir(parents=True, exist_ok=True)
    executor = RayExecutor(state, address=address)
    m = Master(
        Store(state / "aigrid.sqlite"),
        executor,
        load_policy("fifo"),
        state_dir=state,
        tick_s=0.05,
        stop_grace_s=2.0,
    )
    m.recovery.recover()
    m.recovery.error = None
    return m


def close_master(m) -> None:
    m.store.close()
    for name in (
        "_db",
        "_stager",
        "_hasher",
        "_copier",
    ):  # the master's thread pools, if it has them
        pool = getattr(m, name, None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class Phases:
    """Seconds spent in the executor's calls on the start path, per job (wraps them)."""

    NAMES = ("rendezvous", "prepare_gang", "launch")

    def __init__(self, executor) -> None:
        self.spent: dict[str, list[float]] = {n: [] for n in self.NAMES}
        for name in self.NAMES:
            setattr(executor, name, self._timed(getattr(executor, name), self.spent[name]))

    @staticmethod
    def _timed(fn, into: list[float]):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                into.append(time.perf_counter() - t)

        return timed

    def take(self) -> dict[str, float]:
        """Each call's total since the last take, and the longest single ``launch``."""
        out = {n: sum(xs) for n, xs in self.spent.items()}
        out["launch_max"] = max(self.spent["launch"], default=0.0)
        for xs in self.spent.values():
            xs.clear()
        return out


def aigrid_once(m, state: Path, phases: Phases) -> dict:
    """Seconds from t0 (before _submit) to the last rank's first line and to ``succeeded``."""
    from jupyter_aigrid.server.spec import validate

    phases.take()
    t0 = time.time()
    job_id = m.lifecycle.submit(validate({"code": CODE, "gpus": REPLICAS}), "u", {})["id"]
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        m._tick()
        row = m.store.job(job_id)
        if row["state"] == "succeeded":
            break
        if row["state"] in ("failed", "cancelled", "lost"):
            msg = f"job {job_id} {row['state']}: {row.get('reason')}"
            raise RuntimeError(msg)
        if time.monotonic() > deadline:
            msg = f"job {job_id} still {row['state']} after {TIMEOUT_S:g} s"
            raise RuntimeError(msg)
        time.sleep(TICK_SLEEP_S)
    ended = time.time() - t0
    outs = sorted(state.glob(f"jobs/*/{job_id}/0/rank-*.stdout"))
    if len(outs) != REPLICAS:
        msg = f"job {job_id} left {len(outs)} stdout files, not {REPLICAS}"
        raise RuntimeError(msg)
    start = max(first_time(p.read_text(), p.name) for p in outs) - t0
    nodes = sorted({s["node"] for s in row["placement"]})
    return {"start": start, "end": ended, "nodes": nodes, **phases.take()}


# -- the run --------------------------------------------------------------------------------


def main() -> int:
    runs = parse_runs(__doc__, default=10)
    tmp = Path(tempfile.mkdtemp(prefix="aigrid-bench-ray-"))
    began = time.monotonic()
    cluster = m = None
    try:
        log("starting a Ray cluster (a head and 3 nodes of 2 GPUs) ...")
        cluster = start_cluster(tmp)
        state = tmp / "state"
        m = make_master(state, cluster.address)
        phases = Phases(m.executor)
        total_gpus = ray.cluster_resources().get("GPU", 0.0)
        log(f"cluster up in {time.monotonic() - began:.1f} s ({total_gpus:g} GPUs)")
        actor_class = ray.remote(max_restarts=0)(BareReplica)

        # Warm-up (untimed): AI Grid first, to learn which 2 nodes the policy picks.
        first = aigrid_once(m, state, phases)
        ids = {f"ray-{n['NodeID'][:12]}": n["NodeID"] for n in ray.nodes() if n["Alive"]}
        node_ids = [ids[name] for name in first["nodes"] for _ in range(REPLICAS // 2)]
        methods = {
            "bare": lambda i: bare_once(actor_class, node_ids, tmp / "bare" / str(i), []),
            "runner": lambda i: bare_once(actor_class, node_ids, tmp / "runner" / str(i), RUNNER),
            "aigrid": lambda i: aigrid_once(m, state, phases),
        }
        for name in ("bare", "runner"):
            wait_idle(total_gpus)
            methods[name]("warm-up")
        log(f"warmed up; AI Grid placed the gang on {', '.join(first['nodes'])}")

        results: dict[str, list[dict]] = {name: [] for name in methods}
        for i in range(runs):
            for name, once in methods.items():
                wait_idle(total_gpus)
                results[name].append(once(i))
            r = {name: xs[-1] for name, xs in results.items()}
            log(
                f"run {i + 1}/{runs}: bare {r['bare']['start'] * 1000:.0f} ms, "
                f"bare+runner {r['runner']['start'] * 1000:.0f} ms, "
                f"AI Grid {r['aigrid']['start'] * 1000:.0f} ms "
                f"(succeeded at {r['aigrid']['end'] * 1000:.0f} ms)"
            )
        if any(x["nodes"] != first["nodes"] for x in results["aigrid"]):
            log("note: AI Grid did not place every run on the warm-up's nodes")
    finally:
        if m is not None:
            close_master(m)
        with contextlib.suppress(Exception):
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    def ms(name: str, key: str) -> list[float]:
        return [x[key] * 1000 for x in results[name]]

    print_percentiles(
        runs,
        [
            ("bare PG + actors, python -u", ms("bare", "start")),
            ("bare PG + actors, -m runner", ms("runner", "start")),
            ("AI Grid (RayExecutor)", ms("aigrid", "start")),
            ("AI Grid: submit -> succeeded", ms("aigrid", "end")),
            ("  bare: placement group ready", ms("bare", "pg")),
            ("  bare: all 4 actors returned", ms("bare", "end")),
            ("  AI Grid: rendezvous task", ms("aigrid", "rendezvous")),
            ("  AI Grid: prepare_gang (PG)", ms("aigrid", "prepare_gang")),
            ("  AI Grid: 4 launches (not waited)", ms("aigrid", "launch")),
            ("  AI Grid: slowest launch", ms("aigrid", "launch_max")),
        ],
        width=36,
    )
    bare, runner, grid = (percentile(ms(n, "start"), 50) for n in ("bare", "runner", "aigrid"))
    print(f"\nAI Grid / bare PG (python -u), ratio of medians:   {grid / bare:.2f}")
    print(f"AI Grid / bare PG (-m runner), ratio of medians:   {grid / runner:.2f}")
    limit = TARGET_RATIO * bare + TARGET_SLACK_MS
    verdict = "PASS" if grid <= limit else "MISS"
    print(
        f"TARGET: AI Grid p50 {grid:.0f} ms <= {TARGET_RATIO:g} x {bare:.0f} + "
        f"{TARGET_SLACK_MS:g} = {limit:.0f} ms: {verdict}"
    )
    print(f"whole run: {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
