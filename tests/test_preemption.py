"""The live master carries out a policy's preemptions: stop the gang, keep its service, requeue."""

from __future__ import annotations

import asyncio

import pytest


@pytest.fixture
def aigrid_config(aigrid_config):
    return {**aigrid_config, "policy": "priority"}


async def test_a_high_priority_job_preempts_a_low_preemptible_one(api, aigrid_master):
    low = await api.submit(
        {"code": "import time; time.sleep(60)", "gpus": 4, "priority": "low", "preemptible": True}
    )
    await api.wait(low["id"], states=("running",))
    pinned = await api.submit({"code": "import time; time.sleep(60)", "gpus": 0, "priority": "low"})
    high = await api.submit({"code": "print('urgent')", "gpus": 2, "priority": "high"})
    done = await api.wait(high["id"])
    assert done["state"] == "succeeded"
    # The low job went back to the queue and runs again, as attempt 1, with its service kept.
    again = await api.wait(low["id"], states=("running",))
    assert again["attempt"] == 1 and again["restarts"] == 0
    row = aigrid_master.store.job(low["id"])
    assert row.attained_gpu_s > 0
    states = [
        e["data"]["state"] for e in aigrid_master.store.events(low["id"]) if "state" in e["data"]
    ]
    assert states[:6] == ["queued", "starting", "running", "preempted", "queued", "starting"]
    assert "preempted for high job" in next(
        e["data"]["reason"] for e in aigrid_master.store.events(low["id"])
        if e["data"].get("state") == "preempted"
    )  # fmt: skip
    # A job that is not preemptible is never touched.
    assert (await api.job(pinned["id"]))["attempt"] == 0
    for job in (low, pinned):
        await api.call("DELETE", "jobs", job["id"])
        await api.wait(job["id"])


async def test_a_cancel_while_a_preemption_stops_the_job_ends_it(api, aigrid_master):
    # The low job takes its time to stop (it checkpoints, say): a cancel in that window must
    # end it, not let the preemption requeue it.
    slow_stop = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1), exit(143)))\n"
        "time.sleep(60)\n"
    )
    low = await api.submit({"code": slow_stop, "gpus": 4, "priority": "low", "preemptible": True})
    await api.wait(low["id"], states=("running",))
    high = await api.submit({"code": "print('urgent')", "gpus": 2, "priority": "high"})
    for _ in range(200):
        if aigrid_master.store.job(low["id"]).pending_state == "preempted":
            break
        await asyncio.sleep(0.02)
    assert aigrid_master.store.job(low["id"]).pending_state == "preempted"
    cancelled = await api.call("DELETE", "jobs", low["id"])
    assert cancelled["stopping"]
    done = await api.wait(low["id"])
    assert done["state"] == "cancelled" and done["attempt"] == 0, done
    assert (await api.wait(high["id"]))["state"] == "succeeded"
