"""The trace simulator: row-named errors, the reference numbers, the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from jupyter_aigrid.server.model import Request
from jupyter_aigrid.server.policies import load_policy
from jupyter_aigrid.sim import (
    Simulator,
    Staging,
    TraceError,
    TraceJob,
    load_trace,
    make_nodes,
    synthetic_trace,
)

TRACES = Path(
    os.environ.get("AIGRID_TRACES", Path(__file__).resolve().parents[2] / "shared" / "traces")
)
needs_traces = pytest.mark.skipif(
    not (TRACES / "slice-a.csv").exists(), reason=f"the shared traces are not at {TRACES}"
)
KEYS = {
    "avg_jct_s", "median_jct_s", "p99_jct_s", "avg_queue_s", "p99_queue_s", "makespan_s",
    "gpu_utilization", "preemptions", "jobs", "wall_s", "decisions_per_s",
}  # fmt: skip


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("job_id,submit_time_s,num_gpus\na,0,1\n", ["row 1", "missing column(s) duration_s"]),
        (
            "job_id,submit_time_s,duration_s,num_gpus\na,0,10,1\nb,5,-3,1\n",
            ["row 3 (job b)", "duration_s", ">= 0", "'-3'"],
        ),
        (
            "job_id,submit_time_s,duration_s,num_gpus\na,0,10,1.5\n",
            ["row 2 (job a)", "num_gpus", "whole number"],
        ),
        (
            "job_id,submit_time_s,duration_s,num_gpus\na,soon,10,1\n",
            ["row 2", "submit_time_s must be a number"],
        ),
        ("job_id,submit_time_s,duration_s,num_gpus\na,0,nan,1\n", ["row 2", "finite"]),
        (
            "job_id,submit_time_s,duration_s,num_gpus\na,0,1,1\na,1,1,1\n",
            ["row 3", "appears twice"],
        ),
        ("job_id,submit_time_s,duration_s,num_gpus\n", ["no jobs"]),
    ],
)
def test_bad_traces_name_the_row(tmp_path, text, words):
    with pytest.raises(TraceError) as info:
        load_trace(write(tmp_path, text))
    for word in words:
        assert word in str(info.value)


def test_a_job_bigger_than_the_cluster_names_its_row(tmp_path):
    jobs = load_trace(
        write(tmp_path, "job_id,submit_time_s,duration_s,num_gpus\na,0,1,4\nb,1,1,64\n")
    )
    with pytest.raises(
        TraceError, match=r"row 3 \(job b\): asks for 64 GPUs, but the cluster has 16"
    ):
        Simulator(jobs, make_nodes(2, 8), load_policy("fifo"), source="t.csv")


def test_every_job_finishes_and_metrics_add_up():
    jobs = synthetic_trace(400, 32, load=1.2, seed=3)
    for name in ("fifo", "aigrid", "backfill", "fairshare"):
        result = Simulator(jobs, make_nodes(4, 8), load_policy(name), 40.0).run()
        m = result.metrics
        assert set(m) == KEYS and m["jobs"] == 400
        for rec in result.records:
            assert rec.finish - rec.job.submit_s >= rec.job.duration_s - 1e-6
            # A resumed job pays at most the overhead once per preemption.
            assert rec.job.duration_s - 1e-3 <= rec.held_s
            assert rec.held_s <= rec.job.duration_s + 40.0 * rec.preemptions + 1e-3
        assert 0 < m["gpu_utilization"] <= 1
        assert m["avg_jct_s"] >= sum(j.duration_s for j in jobs) / len(jobs)


def test_policies_never_see_true_durations():
    jobs = synthetic_trace(50, 16, seed=1)
    sim = Simulator(jobs, make_nodes(2, 8), load_policy("srtf"))
    assert all(r.request.time_limit_s is None for r in sim.records.values())
    oracle = Simulator(jobs, make_nodes(2, 8), load_policy("srtf"), oracle=True)
    assert oracle.run().policy == "srtf+oracle"


@needs_traces
def test_fifo_and_oracle_srtf_reproduce_the_peer_simulator():
    """Same trace, same cluster: our FIFO and SRTF land on the Tiresias simulator's numbers."""
    jobs = load_trace(TRACES / "slice-a.csv")
    fifo = Simulator(jobs, make_nodes(16, 8), load_policy("fifo"), 40.0).run().metrics
    assert (fifo["avg_jct_s"], fifo["avg_queue_s"]) == pytest.approx((46188.9, 6315.8), abs=0.5)
    srtf = Simulator(jobs, make_nodes(16, 8), load_policy("srtf"), 0.0, oracle=True).run().metrics
    assert (srtf["avg_jct_s"], srtf["avg_queue_s"]) == pytest.approx((41827.8, 1954.7), abs=0.5)
    aigrid = Simulator(jobs, make_nodes(16, 8), load_policy("aigrid"), 40.0).run().metrics
    assert aigrid["avg_jct_s"] < 42487.2  # better than Tiresias' own 2D-LAS


def sim_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jupyter_aigrid.sim", *args],
        capture_output=True, text=True, timeout=300, cwd=cwd,
    )  # fmt: skip


def test_command_line_json_table_and_plots(tmp_path):
    trace = write(tmp_path, "job_id,submit_time_s,duration_s,num_gpus,job_type\n" + "".join(
        f"j{i},{i * 10},{100 + i * 7 % 50},{1 + i % 4},t{i % 3}\n" for i in range(60)
    ))  # fmt: skip
    out = sim_cli(
        "--trace",
        str(trace),
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--policy",
        "aigrid",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)
    assert set(metrics) == KEYS and metrics["jobs"] == 60
    out = sim_cli(
        "--trace", str(trace), "--nodes", "2", "--gpus-per-node", "4",
        "--policy", "fifo", "--policy", "las", "--plots", str(tmp_path / "plots"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    header, fifo, las = out.stdout.splitlines()[:3]
    assert header.split()[:3] == ["policy", "avg", "JCT"]
    assert fifo.startswith("fifo") and las.startswith("las")
    for name in ("t-jct-cdf.png", "t-utilization.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_line_errors(tmp_path):
    bad = write(tmp_path, "job_id,submit_time_s,duration_s,num_gpus\na,0,-1,1\n")
    out = sim_cli("--trace", str(bad), "--json")
    assert out.returncode == 2 and "row 2 (job a)" in out.stderr and "duration_s" in out.stderr
    out = sim_cli("--synthetic", "10", "--policy", "nope", "--json")
    assert out.returncode == 2 and "unknown policy 'nope'" in out.stderr


# -- datasets and staging ------------------------------------------------------------------------

STAGING_KEYS = {"staging_s", "staging_gpu_s", "staged_bytes", "no_staging_fraction"}


def test_staging_time_is_added_exactly():
    """2 nodes x 2 GPUs, 50 GB datasets at 10 GB/s: 5 s for each copy a node makes."""
    jobs = [  # (id, submitted, runs, GPUs, type)
        TraceJob("a", 0.0, 100.0, 1, "m (batch size 32)"),  # node-0000: copies m, 5 s
        TraceJob("b", 10.0, 100.0, 1, "m (batch size 64)"),  # beside a: m is there
        TraceJob("c", 20.0, 50.0, 2, "m"),  # node-0001, the only room: copies m, 5 s
        TraceJob("d", 200.0, 30.0, 1, "x"),  # both free: node-0001 holds x from the start
        TraceJob("e", 300.0, 100.0, 1, "p"),  # node-0000: copies p, 5 s
        TraceJob("f", 300.0, 100.0, 1, "q"),  # beside e: copies q after p, 10 s
    ]
    staging = Staging(10.0, 50.0, preload={"x": ("node-0001",)})
    result = Simulator(jobs, make_nodes(2, 2), load_policy("fifo"), 0.0, staging=staging).run()
    got = {r.job.job_id: (r.placements[0].nodes, r.first_start, r.finish) for r in result.records}
    assert got == {
        "a": (("node-0000",), 0.0, 105.0),
        "b": (("node-0000",), 10.0, 110.0),
        "c": (("node-0001",), 20.0, 75.0),
        "d": (("node-0001",), 200.0, 230.0),
        "e": (("node-0000",), 300.0, 405.0),
        "f": (("node-0000",), 300.0, 410.0),
    }
    m = result.metrics
    assert (m["staging_s"], m["staging_gpu_s"]) == (25.0, 30.0)
    assert m["staged_bytes"] == 4 * 50 * 10**9
    assert m["no_staging_fraction"] == round(2 / 6, 4)
    assert m["avg_queue_s"] == 0.0  # staging holds GPUs: it is run time, not queueing
    # Blind to data, d goes to the first free node and copies x there as well.
    blind = replace(staging, blind=True)
    again = Simulator(jobs, make_nodes(2, 2), load_policy("fifo"), 0.0, staging=blind).run()
    assert again.policy == "fifo+data-blind"
    d = next(r for r in again.records if r.job.job_id == "d")
    assert (d.placements[0].nodes, d.finish) == (("node-0000",), 235.0)
    assert again.metrics["staged_bytes"] == 5 * 50 * 10**9


def test_a_node_cache_drops_the_least_recently_used_data_no_gang_reads():
    one = make_nodes(1, 2)
    staging = Staging(10.0, 50.0, cache_gb=60.0)  # room for one dataset
    alternate = [TraceJob(f"j{i}", i * 100.0, 10.0, 1, t) for i, t in enumerate("mnm")]
    fifo = load_policy("fifo")
    assert Simulator(alternate, one, fifo, staging=staging).run().metrics["staged_bytes"] == (
        150 * 10**9
    )
    unbounded = Simulator(alternate, one, fifo, staging=replace(staging, cache_gb=None)).run()
    assert unbounded.metrics["staged_bytes"] == 100 * 10**9
    # m is read by a running gang when n comes: it stays, and a second m job copies nothing.
    overlap = [TraceJob("m1", 0, 1000, 1, "m"), TraceJob("n", 10, 10, 1, "n")]
    overlap.append(TraceJob("m2", 30, 10, 1, "m"))
    result = Simulator(overlap, one, fifo, staging=staging).run()
    assert result.metrics["staged_bytes"] == 100 * 10**9
    assert next(r for r in result.records if r.job.job_id == "m2").finish == 40.0


def test_locality_aware_placement_stages_less_than_data_blind():
    staging = Staging(1.0, 100.0, cache_gb=300.0)  # 6 model datasets, room for 3 a node
    for seed in range(3):
        jobs = synthetic_trace(1500, 128, load=0.5, seed=seed)
        aware, blind = (
            Simulator(jobs, make_nodes(16, 8), load_policy("fifo"), staging=s).run().metrics
            for s in (staging, replace(staging, blind=True))
        )
        assert aware["staged_bytes"] < 0.9 * blind["staged_bytes"], seed
        assert aware["no_staging_fraction"] > blind["no_staging_fraction"], seed


def test_without_staging_results_are_unchanged():
    jobs = synthetic_trace(400, 32, load=1.2, seed=3)
    off = Simulator(jobs, make_nodes(4, 8), load_policy("aigrid"), 40.0).run()
    # The figures this run gave before datasets existed.
    assert set(off.metrics) == KEYS
    assert (off.metrics["avg_jct_s"], off.metrics["avg_queue_s"]) == (7484.1, 3639.8)
    assert (off.metrics["makespan_s"], off.metrics["preemptions"]) == (187695.9, 117)
    assert all(r.request.datasets == () for r in off.records)
    # Data everywhere from the start: nothing to stage, and every decision as without data.
    everywhere = Staging(1.0, 100.0, preload={"*": tuple(n.name for n in make_nodes(4, 8))})
    on = Simulator(jobs, make_nodes(4, 8), load_policy("aigrid"), 40.0, staging=everywhere).run()
    assert set(on.metrics) == KEYS | STAGING_KEYS
    assert on.metrics["staged_bytes"] == 0 and on.metrics["no_staging_fraction"] == 1.0
    assert [(r.placements, r.finish) for r in on.records] == [
        (r.placements, r.finish) for r in off.records
    ]


def test_command_line_staging_options(tmp_path):
    out = sim_cli(
        "--synthetic", "200", "--nodes", "4", "--policy", "fifo", "--json",
        "--staging-gbps", "2", "--dataset-gb", "10:200", "--node-cache-gb", "300",
        "--preload", "LM=0-1", "--preload", "*=3",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)
    assert set(metrics) == KEYS | STAGING_KEYS and metrics["staged_bytes"] > 0
    out = sim_cli("--synthetic", "20", "--nodes", "2", "--staging-gbps", "2", "--data-blind",
                  "--plots", str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert "staging" in header and row.startswith("aigrid+data-blind")
    for args, words in [
        (("--preload", "LM=0"), "need(s) --staging-gbps"),
        (("--staging-gbps", "1", "--preload", "LM=9"), "node 9 does not exist"),
        (("--staging-gbps", "1", "--dataset-gb", "9:1"), "low <= high"),
        (("--staging-gbps", "-1"), "bandwidth_gbps must be a finite number > 0"),
    ]:
        out = sim_cli("--synthetic", "10", "--nodes", "2", "--json", *args)
        assert out.returncode == 2 and words in out.stderr, (args, out.stderr)


def _gang(job_id: str, submit_s: float, duration_s: float, gpus: int = 1) -> TraceJob:
    request = Request(
        job_id=job_id,
        owner="u",
        replicas=1,
        gpus_per_replica=gpus,
        cpus_per_replica=0.0,
        memory_mb_per_replica=0,
        preemptible=True,
    )
    return TraceJob(job_id, submit_s, duration_s, gpus, request=request)


def test_the_simulator_defragments_as_the_master_does():
    """Four 1-GPU gangs fill two 2-GPU nodes; one ends on each; a 2-GPU gang arrives and
    waits only because the free GPUs are scattered: one small gang moves (paying the
    overhead) and the big one starts at once."""
    jobs = [
        _gang("a", 0, 100),
        _gang("b", 0, 5),
        _gang("c", 0, 100),
        _gang("d", 0, 5),
        _gang("big", 6, 10, gpus=2),
    ]
    result = Simulator(jobs, make_nodes(2, 2), load_policy("fifo"), preempt_overhead_s=7.0).run()
    records = {r.job.job_id: r for r in result.records}
    placed = {j: records[j].placements[0].nodes for j in "abcd"}
    assert placed["b"] != placed["d"], placed  # the precondition: one ended on each node
    assert result.migrations == 1
    assert records["big"].first_start == 6
    moved = [r for r in records.values() if r.moves]
    assert len(moved) == 1 and moved[0].job.job_id in ("a", "c")
    assert moved[0].finish == pytest.approx(100 + 7)
    assert result.metrics["preemptions"] == 0
