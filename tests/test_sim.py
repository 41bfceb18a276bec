"""The trace simulator: row-named errors, the reference numbers, the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_aigrid.server.policies import load_policy
from jupyter_aigrid.sim import Simulator, TraceError, load_trace, make_nodes, synthetic_trace

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
