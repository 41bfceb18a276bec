"""Jobs end to end through a real Jupyter server that requires a token."""

from __future__ import annotations

import asyncio
import json
import textwrap

import psutil
import pytest

ALL_REDUCE = textwrap.dedent("""
    import torch, torch.distributed as dist
    from jupyter_aigrid import runtime
    runtime.init_distributed()
    t = torch.tensor([float(runtime.rank() + 1)])
    dist.all_reduce(t)
    print(f"rank {dist.get_rank()} of {dist.get_world_size()}: sum={t.item():g}")
    dist.destroy_process_group()
""")


@pytest.mark.slow
async def test_two_replica_gloo_all_reduce(api):
    job = await api.submit({"code": ALL_REDUCE, "gpus": 2, "name": "allreduce"})
    assert job["state"] == "queued"
    assert job["replicas"] == 2
    done = await api.wait(job["id"])
    assert done["state"] == "succeeded", done["reason"]
    assert done["exit_codes"] == {"0": 0, "1": 0}
    lines = {(e["rank"], e["line"]) for e in await api.logs(job["id"]) if e["stream"] == "stdout"}
    assert (0, "rank 0 of 2: sum=3") in lines
    assert (1, "rank 1 of 2: sum=3") in lines
    # Packed onto the fewest nodes: one node holds both simulated GPUs.
    assert [s["node"] for s in done["placement"]] == ["node-0", "node-0"]
    assert all(g["simulated"] for s in done["placement"] for g in s["gpus"])


async def test_environment_is_torchrun_style(api):
    code = textwrap.dedent("""
        import os
        keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "CUDA_VISIBLE_DEVICES", "AIGRID_GPUS", "AIGRID_JOB_ID",
                "AIGRID_SIMULATED_GPUS", "JUPYTER_TOKEN"]
        print(";".join(f"{k}={os.environ.get(k, '<unset>')}" for k in keys))
    """)
    job = await api.submit({"code": code, "gpus": 4, "nodes": 2})
    done = await api.wait(job["id"])
    assert done["state"] == "succeeded", done["reason"]
    envs = {}
    for e in await api.logs(job["id"]):
        if e["stream"] == "stdout":
            envs[e["rank"]] = dict(kv.split("=", 1) for kv in e["line"].split(";"))
    assert sorted(envs) == [0, 1, 2, 3]
    ports = {env["MASTER_PORT"] for env in envs.values()}
    assert len(ports) == 1 and ports.pop().isdigit()
    for rank, env in envs.items():
        slot = done["placement"][rank]
        assert env["RANK"] == str(rank)
        assert env["WORLD_SIZE"] == "4"
        assert env["LOCAL_WORLD_SIZE"] == "2"
        assert env["LOCAL_RANK"] == str(slot["local_rank"])
        # Exactly the assigned GPUs; simulated ones hide every real device.
        assert env["AIGRID_GPUS"] == ",".join(str(g["index"]) for g in slot["gpus"])
        assert env["CUDA_VISIBLE_DEVICES"] == ""
        assert env["AIGRID_SIMULATED_GPUS"] == "1"
        assert env["AIGRID_JOB_ID"] == job["id"]
        assert env["JUPYTER_TOKEN"] == "<unset>"
    assert {s["node"] for s in done["placement"]} == {"node-0", "node-1"}


async def test_failing_rank_fails_the_gang_with_reason(api):
    code = textwrap.dedent("""
        import os, sys, time
        if os.environ["RANK"] == "1":
            print("about to fail", flush=True)
            raise SystemExit("rank one gives up: bad batch")
        time.sleep(120)
    """)
    job = await api.submit({"code": code, "gpus": 2})
    done = await api.wait(job["id"], timeout_s=60)
    assert done["state"] == "failed"
    assert "rank 1" in done["reason"]
    assert "exited with code 1" in done["reason"]
    assert "rank one gives up: bad batch" in done["reason"]
    # Rank 0 was stopped by the master (SIGTERM), not left running.
    assert done["exit_codes"]["0"] in (143, -15, 137)


async def test_cancel_stops_every_process(api, aigrid_state):
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    job = await api.submit({"code": code, "gpus": 2})
    await api.wait(job["id"], states=("running",))
    pids = set()
    for _ in range(100):
        children = [e for e in await api.logs(job["id"]) if e["line"].startswith("child")]
        if len(children) == 2:
            break
        await asyncio.sleep(0.1)
    for e in children:
        pids.add(int(e["line"].split()[1]))
    for pidfile in aigrid_state.glob(f"jobs/*/{job['id']}/0/*.exit.pid"):
        pids.add(int(pidfile.read_text()))
    assert len(pids) == 4
    assert all(psutil.pid_exists(p) for p in pids)
    cancelled = await api.call("DELETE", "jobs", job["id"])
    assert cancelled["id"] == job["id"]
    done = await api.wait(job["id"], timeout_s=30)
    assert done["state"] == "cancelled"
    assert "cancelled by" in done["reason"]
    for pid in pids:
        alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        assert not alive, f"pid {pid} outlived the cancel"
    # Cancelling again is a state conflict.
    status, body = await api.error("DELETE", "jobs", job["id"])
    assert status == 409 and "already cancelled" in body["message"]


async def test_cancel_queued_job(api):
    blocker = await api.submit({"code": "import time; time.sleep(60)", "gpus": 4})
    queued = await api.submit({"code": "print(1)", "gpus": 4})
    await api.wait(blocker["id"], states=("running",))
    job = await api.job(queued["id"])
    assert job["state"] == "queued" and job["queue_position"] == 1
    await api.call("DELETE", "jobs", queued["id"])
    assert (await api.job(queued["id"]))["state"] == "cancelled"
    await api.call("DELETE", "jobs", blocker["id"])
    assert (await api.wait(blocker["id"]))["state"] == "cancelled"


async def test_gang_waits_for_all_gpus_then_runs(api):
    """A 3-GPU job behind a 2-GPU one waits (all or nothing) and then runs on 2 nodes."""
    first = await api.submit({"code": "import time; time.sleep(1.5)", "gpus": 2})
    second = await api.submit({"code": "print('ok')", "gpus": 3})
    await api.wait(first["id"], states=("running",))
    assert (await api.job(second["id"]))["state"] == "queued"
    done = await api.wait(second["id"])
    assert done["state"] == "succeeded"
    assert len(done["placement"]) == 3
    assert len({s["node"] for s in done["placement"]}) == 2


async def test_time_limit_is_enforced(api):
    job = await api.submit({"code": "import time; time.sleep(60)", "time_limit_s": 0.5})
    done = await api.wait(job["id"], timeout_s=30)
    assert done["state"] == "failed"
    assert "time limit of 0.5 s exceeded" in done["reason"]


async def test_max_restarts_requeues_the_gang(api):
    code = textwrap.dedent("""
        import os, sys
        attempt = int(os.environ["AIGRID_ATTEMPT"])
        print("attempt", attempt)
        sys.exit(0 if attempt == 1 else 3)
    """)
    job = await api.submit({"code": code, "max_restarts": 2})
    # One following stream shows every attempt of a restarting gang.
    followed = await api.logs(job["id"], follow=1)
    assert [e["line"] for e in followed if e["stream"] == "stdout"] == ["attempt 0", "attempt 1"]
    done = await api.wait(job["id"])
    assert done["state"] == "succeeded"
    assert done["restarts"] == 1 and done["attempt"] == 1
    # It succeeded: no failure is left as its reason; the restart is in its events.
    assert done["reason"] is None
    resp = await api.call("GET", "events", params={"job": job["id"], "since": 0}, raw=True)
    reasons = [json.loads(line)["data"].get("reason") for line in resp.body.decode().splitlines()]
    assert any(r and r.startswith("restarting after: rank 0 on") for r in reasons)
    first = await api.logs(job["id"], attempt=0)
    assert [e["line"] for e in first if e["stream"] == "stdout"] == ["attempt 0"]


@pytest.mark.parametrize("path", ["/nonexistent", ""])
async def test_a_job_that_sets_its_own_path_still_ends_cleanly(api, path):
    """The replica wrapper records the exit status with nothing from the job's PATH."""
    job = await api.submit({"code": "print('ok')", "env": {"PATH": path}})
    done = await api.wait(job["id"])
    assert done["state"] == "succeeded", done["reason"]
    assert done["exit_codes"] == {"0": 0}


async def test_command_job_and_result(api):
    job = await api.submit({"command": ["sh", "-c", "echo out; echo err >&2"]})
    done = await api.wait(job["id"])
    assert done["state"] == "succeeded"
    entries = await api.logs(job["id"])
    assert {"rank": 0, "stream": "stdout", "line": "out"} in entries
    assert {"rank": 0, "stream": "stderr", "line": "err"} in entries
    result = await api.call("GET", "jobs", job["id"], "result")
    assert result["state"] == "succeeded" and result["exit_codes"] == {"0": 0}


async def test_report_metrics_show_in_result(api):
    code = "from jupyter_aigrid import runtime\nruntime.report(loss=0.5, step=3)\n"
    job = await api.submit({"code": code, "replicas": 2})
    assert (await api.wait(job["id"]))["state"] == "succeeded"
    result = await api.call("GET", "jobs", job["id"], "result")
    got = sorted((m["rank"], m["loss"], m["step"]) for m in result["metrics"])
    assert got == [(0, 0.5, 3), (1, 0.5, 3)]


async def test_logs_follow_and_tail(api):
    code = "import time\nfor i in range(5):\n    print('line', i)\n    time.sleep(0.1)\n"
    job = await api.submit({"code": code})
    followed = await api.logs(job["id"], follow=1)
    assert [e["line"] for e in followed] == [f"line {i}" for i in range(5)]
    assert (await api.job(job["id"]))["state"] == "succeeded"
    tail = await api.logs(job["id"], tail=2)
    assert [e["line"] for e in tail] == ["line 3", "line 4"]


async def test_list_filters_and_cluster(api):
    job = await api.submit({"code": "import time; time.sleep(30)", "gpus": 1})
    await api.wait(job["id"], states=("running",))
    running = (await api.call("GET", "jobs", params={"state": "running"}))["jobs"]
    assert [j["id"] for j in running] == [job["id"]]
    assert (await api.call("GET", "jobs", params={"state": "failed"}))["jobs"] == []
    cluster = await api.call("GET", "cluster")
    assert cluster["gpus_total"] == 4 and cluster["gpus_free"] == 3
    assert cluster["simulated"] is True
    held = [
        (n["name"], g["index"], g["job_id"], g["rank"])
        for n in cluster["nodes"]
        for g in n["gpus"]
        if g["job_id"]
    ]
    slot = (await api.job(job["id"]))["placement"][0]
    assert held == [(slot["node"], slot["gpus"][0]["index"], job["id"], 0)]
    assert all(g["simulated"] for n in cluster["nodes"] for g in n["gpus"])
    await api.call("DELETE", "jobs", job["id"])
    await api.wait(job["id"])


async def test_created_job_has_location(api):
    resp = await api.call("POST", "jobs", body={"code": "pass"}, raw=True)
    assert resp.code == 201
    assert resp.headers["Location"].endswith(
        f"/aigrid/api/jobs/{__import__('json').loads(resp.body)['id']}"
    )


async def test_unknown_job_is_404(api):
    status, body = await api.error("GET", "jobs", "nope")
    assert status == 404 and "no job 'nope'" in body["message"]
