"""The Ray executor on a real multi-node Ray cluster on this machine (``cluster_utils``: a
head that runs nothing and 3 nodes with 2 logical GPUs each)."""

from __future__ import annotations

import os
import time

import pytest
from test_recovery import master, ran, submit

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

#: Every rank adds its rank + 1 across the gang (gloo, over the nodes) and prints the sum.
ALL_REDUCE = """
import torch
from jupyter_aigrid import runtime
dist = runtime.init_distributed()
t = torch.tensor([float(runtime.rank() + 1)])
dist.all_reduce(t)
print(f"rank {runtime.rank()} of {runtime.world_size()} sum {t.item():g}", flush=True)
"""


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    small = {"object_store_memory": 80 * 2**20, "include_dashboard": False}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, **small})
    nodes = [c.add_node(num_cpus=2, num_gpus=2, **small) for _ in range(3)]
    c.wait_for_nodes()
    yield c, nodes
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def ray_master(cluster, tmp_path):
    from jupyter_aigrid.server.executors.ray import RayExecutor

    c, _ = cluster
    m = master(tmp_path, RayExecutor(tmp_path, address=c.address))
    yield m
    m.store.close()


def tick_until(m, done, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "timed out"
        m._tick()
        time.sleep(0.05)


def test_inventory_is_the_ray_nodes(ray_master, cluster):
    _, nodes = cluster
    names = {n.name for n in ray_master.nodes}
    assert names == {f"ray-{n.node_id[:12]}" for n in nodes}  # the head runs nothing
    for node in ray_master.nodes:
        assert len(node.gpus) == 2 and all(g.simulated for g in node.gpus)  # no NVML here
        assert node.cpus == 2
        assert ("ray.io/node-id", ray_master.executor._ids[node.name]) in node.labels


def test_a_four_replica_gang_over_two_nodes_all_reduces_where_the_policy_placed_it(
    ray_master, tmp_path
):
    job_id = submit(ray_master, {"code": ALL_REDUCE, "gpus": 4})
    tick_until(ray_master, lambda: ray_master.store.job(job_id)["state"] == "succeeded")
    row = ray_master.store.job(job_id)
    slots = {s["rank"]: s["node"] for s in row["placement"]}
    assert len(set(slots.values())) == 2  # 4 GPUs: two nodes of 2
    # Ray ran each rank exactly where the policy put it.
    key = ray_master.files.key(job_id)
    assert ray_master.executor.placed(key, 0) == slots
    out = ran(tmp_path, job_id, 0)
    assert out == sorted(f"rank {r} of 4 sum 10\n" for r in range(4))


def test_a_replica_that_fails_fails_the_gang_and_its_logs_come_back(ray_master, tmp_path):
    code = "import sys\nprint('to stdout', flush=True)\nsys.exit('went wrong')"
    job_id = submit(ray_master, {"code": code, "gpus": 1})
    tick_until(ray_master, lambda: ray_master.store.job(job_id)["state"] == "failed")
    row = ray_master.store.job(job_id)
    assert "exited with code 1" in row["reason"] and "went wrong" in row["reason"]
    assert ran(tmp_path, job_id, 0) == ["to stdout\n"]


def test_cancel_stops_the_replicas(ray_master):
    job_id = submit(ray_master, {"code": "import time; time.sleep(600)", "gpus": 2})
    tick_until(ray_master, lambda: ray_master.store.job(job_id)["state"] == "running")
    ray_master._cancel(job_id, "u", False)
    tick_until(ray_master, lambda: ray_master.store.job(job_id)["state"] == "cancelled", 60)
    assert not ray_master.executor._gangs  # the placement group went with the gang


def test_a_restarted_master_adopts_the_running_replicas(cluster, tmp_path):
    from jupyter_aigrid.server.executors.ray import RayExecutor

    c, _ = cluster
    a = master(tmp_path, RayExecutor(tmp_path, address=c.address))
    code = "import time\nprint('up', flush=True)\ntime.sleep(4)\nprint('done', flush=True)"
    job_id = submit(a, {"code": code, "gpus": 2})
    tick_until(a, lambda: a.store.job(job_id)["state"] == "running")
    tick_until(a, lambda: ran(tmp_path, job_id, 0) == ["up\n", "up\n"])
    a.store.close()  # the master dies; its replicas (detached actors) run on

    b = master(tmp_path, RayExecutor(tmp_path, address=c.address))
    b._recover()
    b.recovery_error = None
    tick_until(b, lambda: b.store.job(job_id)["state"] == "succeeded")
    assert b.store.job(job_id)["restarts"] == 0
    assert ran(tmp_path, job_id, 0) == ["up\ndone\n", "up\ndone\n"]  # the logs went on
    b.store.close()
