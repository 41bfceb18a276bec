"""The simulator and the master make the same decisions.

A real master (local executor, two logical nodes with two simulated GPUs each) runs a
history with a defragmentation move, an inference job placed from its profiles, and a
realtime inference job that preempts a batch one. It records every round: the snapshot, the
queue, the facts about running gangs (the :class:`Context`) and what it decided. Each
round is then replayed through the simulator's own round, and must decide the same; and
where every running gang was settled and nothing was moving (what a trace replay assumes),
the simulator's own context must decide the same too.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from test_inference import infer
from test_migration import counter, listening

from jupyter_aigrid.sim import Simulator

pytestmark = pytest.mark.slow

FAST = "simulated:fast"


@pytest.fixture
def aigrid_config():
    return {
        "local_nodes": 2,
        "simulated_gpus": 2,
        "local_cpus_per_node": 4,
        "gpu_models": {"node-0": "fast", "node-1": "fast"},
        "checkpoint_timeout_s": 60.0,
    }


def same(a, b) -> bool:
    return (a.launches, a.preemptions, a.migrations, dict(a.choices)) == (
        b.launches,
        b.preemptions,
        b.migrations,
        dict(b.choices),
    )


async def settle_migration(api, job_id: str) -> None:
    for _ in range(600):
        view = await api.job(job_id)
        if view["migration"] and view["migration"]["state"] in ("done", "failed"):
            assert view["migration"]["state"] == "done", view["migration"]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the migration of job {job_id} never ended")


async def test_the_simulator_decides_what_the_master_decided(api, aigrid_master):
    aigrid_master.round.rounds = []
    # A defragmentation move: two small gangs, one per node, and a gang that needs a node.
    small = [await api.submit(counter(steps=400, preemptible=True)) for _ in range(2)]
    nodes = [(await listening(api, job["id"]))["placement"][0]["node"] for job in small]
    if nodes[0] == nodes[1]:
        other = "node-1" if nodes[1] == "node-0" else "node-0"
        await api.call("POST", "jobs", small[1]["id"], "migrate", body={"node": other})
        await settle_migration(api, small[1]["id"])
        await listening(api, small[1]["id"])
    big = await api.submit({"code": "print('whole node')", "gpus": 2, "gpus_per_replica": 2})
    assert (await api.wait(big["id"]))["state"] == "succeeded"
    for job in small:
        await api.call("DELETE", "jobs", job["id"])
        await api.wait(job["id"])
    # A QoS preemption: one node held, a batch inference gang on the other, then realtime.
    hold = await api.submit(
        {"code": "import time; time.sleep(600)", "gpus": 2, "gpus_per_replica": 2}
    )
    await api.wait(hold["id"], states=("running",))
    batch = await api.submit(infer("batch", gpu_type=FAST, gpus=2, env={"REQUESTS": "100000"}))
    await api.wait(batch["id"], states=("running",))
    urgent = await api.submit(infer("realtime", gpu_type=FAST, gpus=2))
    assert (await api.wait(urgent["id"]))["state"] == "succeeded"
    for job in (hold, batch):
        await api.call("DELETE", "jobs", job["id"])
        await api.wait(job["id"])

    assert len(aigrid_master.memory) == 0  # every job ended: nothing kept about any of them
    rounds = list(aigrid_master.rounds)
    decided = [d for *_, d in rounds]
    assert any(
        m.reason == f"defragmentation for job {big['id']}" for d in decided for m in d.migrations
    )
    assert any(
        p.job_id == batch["id"] and p.reason == f"preempted for realtime job {urgent['id']}"
        for d in decided
        for p in d.preemptions
    )
    assert any(urgent["id"] in d.choices for d in decided)

    sim = Simulator([], list(aigrid_master.nodes.all), aigrid_master.policy)
    own = 0
    for snapshot, queue, context, master_decided in rounds:
        replayed = sim.round(snapshot, list(queue), context)
        assert same(replayed, master_decided), (snapshot.now, queue, master_decided, replayed)
        running = set(snapshot.running)
        if not context.moving and context.settled == running:
            mine = sim.round(snapshot, list(queue), replace(sim.context, book=context.book))
            assert same(mine, master_decided), (snapshot.now, queue, master_decided, mine)
            own += 1
    assert own, "no round ran with every gang settled"
