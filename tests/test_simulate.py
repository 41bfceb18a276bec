"""What-if: the master's own history replayed through the simulator, over REST and %aigrid."""

from __future__ import annotations

import asyncio

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output


@pytest.fixture
def aigrid_config(aigrid_config):
    return {**aigrid_config, "policy": "fifo"}


def _slots(placement: list[dict]) -> list[tuple]:
    return [
        (s["rank"], s["node"], tuple(g if isinstance(g, int) else g["index"] for g in s["gpus"]))
        for s in placement
    ]


async def test_replayed_history_places_jobs_as_the_live_fifo_run_did(api):
    """Jobs queue behind each other on 2 nodes x 2 GPUs; the replay decides alike."""
    plan = [  # (GPUs, seconds of work, seconds to the next submit)
        (2, 1.6, 0.4),
        (1, 2.4, 0.4),
        (2, 0.8, 0.4),  # waits for the first job's node
        (1, 0.6, 0.4),  # FIFO: waits behind the one before
        (4, 0.5, 0.0),  # waits for the whole cluster
    ]
    ids = []
    for gpus, work, gap in plan:
        job = await api.submit({"code": f"import time; time.sleep({work})", "gpus": gpus})
        ids.append(job["id"])
        await asyncio.sleep(gap)
    live = {}
    for job_id in ids:
        job = await api.wait(job_id)
        assert job["state"] == "succeeded"
        live[job_id] = _slots(job["placement"])
    found = await api.call("POST", "simulate", body={"policy": "fifo", "preempt_overhead_s": 0})
    assert found["policy"] == "fifo" and found["live_policy"] == "fifo"
    assert found["simulated"]["jobs"] == found["live"]["jobs"] == len(plan)
    replayed = {job_id: _slots(p) for job_id, p in found["placements"].items()}
    assert replayed == live
    # The replay runs the same jobs for as long as they ran: the figures agree closely.
    assert abs(found["simulated"]["avg_jct_s"] - found["live"]["avg_jct_s"]) < 1.0

    other = await api.call("POST", "simulate", body={"policy": "aigrid"})
    assert other["policy"] == "aigrid" and other["simulated"]["jobs"] == len(plan)
    from test_openapi import assert_exact_keys, assert_valid

    for result in (found, other):
        assert_exact_keys("SimulateResult", result)
        assert_valid("SimulateResult", result)


async def test_simulate_refuses_bad_requests(api):
    status, body = await api.error("POST", "simulate", body={"policy": "fifo"})
    assert status == 409 and "no job has run" in body["message"]
    job = await api.submit({"code": "pass"})
    await api.wait(job["id"])
    for body, field in [
        ({}, "policy"),
        ({"policy": "nope"}, "policy"),
        ({"policy": "fifo", "options": {"bogus": 1}}, "options"),
        ({"policy": "fifo", "options": []}, "options"),
        ({"policy": "fifo", "preempt_overhead_s": -1}, "preempt_overhead_s"),
        ({"policy": "fifo", "extra": 1}, "extra"),
    ]:
        status, error = await api.error("POST", "simulate", body=body)
        assert (status, error["field"]) == (400, field), body


def test_simulate_magic(server):
    job = server.client().submit({"code": "pass", "gpus": 1})
    server.client().wait(job["id"])
    ip = InteractiveShell.instance()
    if "aigrid" not in ip.magics_manager.magics["line"]:
        ip.run_line_magic("load_ext", "jupyter_aigrid")
    with capture_output():
        ip.run_line_magic("aigrid", f"connect {server.url} --token {server.token}")
    with capture_output() as cap:
        found = ip.run_line_magic("aigrid", "simulate --policy fairshare --option weights={}")
    assert found["policy"] == "fairshare"
    lines = cap.stdout.splitlines()
    assert "live (aigrid)" in lines[0] and "simulated (fairshare)" in lines[0]
    assert any(line.startswith("avg JCT (s)") for line in lines)
