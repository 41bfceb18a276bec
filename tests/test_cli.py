"""The aigrid command against a real server: submit, logs -f, list, status, cancel, cluster."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jupyter_aigrid.cli import build_parser, cluster_table, jobs_table, spec_from_args

TRAIN = textwrap.dedent("""
    import sys
    import torch, torch.distributed as dist
    from jupyter_aigrid import runtime
    dist = runtime.init_distributed()
    t = torch.ones(1) * (runtime.rank() + 1)
    dist.all_reduce(t)
    print(f"rank {runtime.rank()} sum {t.item():g} args {sys.argv[1:]}")
""")


def aigrid(server, *args, discover=False, check=True, cwd=None):
    env = {**os.environ}
    env.pop("AIGRID_URL", None)
    if discover:
        # Found through Jupyter's runtime files, like a user who just started `jupyter lab`.
        env["JUPYTER_RUNTIME_DIR"] = str(server.root / "runtime")
        argv = list(args)
    else:
        argv = ["--url", server.url, "--token", server.token, *args]
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter_aigrid.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"aigrid {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.mark.slow
def test_submit_follow_list(server, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    out = aigrid(
        server, "submit", "--gpus", "2", str(script), "--epochs", "1", discover=True
    ).stdout
    job_id = out.split()[2]
    assert out.startswith(f"submitted job {job_id} (train.py)")
    logs = aigrid(server, "logs", "-f", job_id, discover=True).stdout.splitlines()
    assert sorted(logs) == [
        "[0] rank 0 sum 3 args ['--epochs', '1']",
        "[1] rank 1 sum 3 args ['--epochs', '1']",
    ]
    listing = aigrid(server, "list").stdout.splitlines()
    assert listing[0].split()[:4] == ["ID", "NAME", "STATE", "GPUS"]
    row = next(line.split() for line in listing[1:] if line.split()[0] == job_id)
    status = json.loads(aigrid(server, "status", job_id).stdout)
    assert row[1:4] == ["train.py", "succeeded", "2"], status["reason"]
    status = json.loads(aigrid(server, "status", job_id).stdout)
    assert status["state"] == "succeeded" and status["exit_codes"] == {"0": 0, "1": 0}


def test_submit_code_with_follow_exit_status(server):
    ok = aigrid(server, "submit", "-f", "-c", "print('hello')")
    assert "[0] hello" in ok.stdout
    bad = aigrid(server, "submit", "-f", "-c", "raise SystemExit('no luck')", check=False)
    assert bad.returncode == 1
    assert "[0] no luck" in bad.stderr
    assert "failed: rank 0 on" in bad.stderr


def test_command_cancel_and_cluster(server):
    out = aigrid(server, "--json", "submit", "--gpus", "1", "--", "sleep", "60").stdout
    job = json.loads(out)
    assert job["spec"]["command"] == ["sleep", "60"]
    cluster = aigrid(server, "cluster").stdout
    assert "simulated (SIMULATED)" in cluster
    assert "GPUs free (local executor)" in cluster
    cancel = aigrid(server, "cancel", job["id"]).stdout
    assert f"job {job['id']}: cancel requested" in cancel
    final = json.loads(aigrid(server, "status", job["id"]).stdout)
    while final["state"] not in ("cancelled", "failed", "succeeded"):
        final = json.loads(aigrid(server, "status", job["id"]).stdout)
    assert final["state"] == "cancelled"


def test_templates_and_images(server):
    header, *rows = aigrid(server, "templates").stdout.splitlines()
    assert header.split()[:3] == ["TEMPLATE", "FRAMEWORK", "REPLICAS"]
    assert {r.split()[0] for r in rows} == {
        "single", "pytorch-ddp", "mpi", "tf-parameter-server", "inference"
    }  # fmt: skip
    images = json.loads(aigrid(server, "--json", "images").stdout)
    assert "python-3.11" in {i["id"] for i in images}
    table = aigrid(server, "images").stdout
    assert "python:3.11-slim" in table and table.startswith("ID")


def test_errors_are_clear(server):
    bad = aigrid(server, "submit", "--gpus", "9", "-c", "pass", check=False)
    assert bad.returncode == 1
    assert "unschedulable" in bad.stderr and "(field: gpus)" in bad.stderr
    missing = aigrid(server, "status", "999", check=False)
    assert missing.returncode == 1 and "no job '999'" in missing.stderr
    nothing = aigrid(server, "submit", check=False)
    assert nothing.returncode == 2 and "nothing to run" in nothing.stderr
    unreachable = subprocess.run(
        [sys.executable, "-m", "jupyter_aigrid.cli", "--url", "http://127.0.0.1:9", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == 1 and "cannot reach the AI Grid master" in unreachable.stderr


def test_tables_write_sizes_and_ages_as_the_whole_product_does():
    ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=200)
    job = {
        "id": "7",
        "name": "mnist",
        "state": "running",
        "gpus": 1,
        "qos": "normal",
        "owner": "ada",
        "submitted_at": ago.isoformat(),
        "placement": None,
        "queue_position": None,
    }
    header, row = jobs_table([job]).splitlines()
    assert row[header.index("AGE") :].startswith("3 m ")  # formatting.format_age
    gpu = {"index": 0, "model": "H100", "simulated": False, "job_id": None, "rank": None}
    cluster = {
        "executor": "local",
        "gpus_free": 2,
        "gpus_total": 2,
        "nodes": [
            {
                "name": "node-0",
                "gpus": [
                    {**gpu, "memory_mb": 81559, "memory_used_mb": 20480, "utilization_pct": 40},
                    {**gpu, "index": 1, "memory_mb": 81559},
                ],
            }
        ],
    }
    lines = cluster_table(cluster).splitlines()
    assert lines[0].split()[-1] == "MEMORY"
    assert lines[1].endswith("40%   20 GiB / 80 GiB")
    assert lines[2].endswith("80 GiB")


def test_spec_from_args():
    args = build_parser().parse_args(
        [
            "submit",
            "--gpus",
            "4",
            "--nodes",
            "2",
            "--env",
            "A=1",
            "--priority",
            "high",
            "--",
            "python",
            "x.py",
        ]
    )
    # A command whose first word is not a .py file runs as given.
    assert spec_from_args(args) == {
        "command": ["python", "x.py"],
        "gpus": 4,
        "nodes": 2,
        "priority": "high",
        "env": {"A": "1"},
    }
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "--env", "novalue", "-c", "pass"])


@pytest.mark.slow
def test_example_ddp_training_converges_with_identical_weights(server):
    example = Path(__file__).parent.parent / "examples" / "train_ddp.py"
    out = aigrid(
        server, "submit", "-f", "--gpus", "2", "--nodes", "2", str(example), "--epochs", "4"
    ).stdout.splitlines()
    losses = [float(line.split()[-1]) for line in out if "loss" in line]
    assert len(losses) == 4
    assert losses[-1] < losses[0] / 10
    sums = {line.split()[2]: line.split()[-1] for line in out if "checksum" in line}
    assert sorted(sums) == ["0", "1"]
    assert sums["0"] == sums["1"]  # DDP kept both ranks' weights identical
