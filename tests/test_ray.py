"""The Ray executor on a real multi-node Ray cluster on this machine (``cluster_utils``: a
head that runs nothing and 3 nodes with 2 logical GPUs each)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from test_executor_stopping import STUBBORN
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


#: A small torch model trained on generated data: its loss at every step (exact, in hex) and
#: a digest of its final weights. It checkpoints when asked, and every ``every`` steps.
TRAIN = """
import hashlib, sys, time, torch
from jupyter_aigrid import runtime
steps, pause, every = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = torch.nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
data = torch.Generator().manual_seed(1)
step, state = 0, runtime.restore()
if state:
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    data.set_state(state["data"])
    step = state["step"]
    print("resumed at", step, flush=True)
while step < steps:
    x = torch.randn(16, 8, generator=data)
    loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    step += 1
    print("step", step, loss.item().hex(), flush=True)
    if runtime.should_checkpoint() or step % every == 0:
        runtime.checkpoint(
            {"model": model.state_dict(), "opt": opt.state_dict(), "data": data.get_state(),
             "step": step}
        )
    time.sleep(pause)
weights = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
print("final", hashlib.sha256(weights).hexdigest(), flush=True)
"""

#: What the master's own process did to files in the nodes' scratch folders (it must do
#: nothing: every node's files are reached through Ray). Filled by an audit hook.
TOUCHED: list[tuple[str, str]] = []
_WATCHED: list[str] = []
_AUDITED = ("open", "os.listdir", "os.scandir", "os.mkdir", "os.remove", "os.rename",
            "os.symlink", "os.chmod", "shutil.rmtree")  # fmt: skip


def _audit(event: str, args: tuple) -> None:
    if _WATCHED and event in _AUDITED and args and isinstance(args[0], str | os.PathLike):
        path = os.fspath(args[0])
        if isinstance(path, str) and any(path.startswith(w) for w in _WATCHED):
            TOUCHED.append((event, path))


def scratch_env(root, i: int) -> dict:
    return {"env_vars": {"AIGRID_NODE_SCRATCH": str(root / f"node-{i}")}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    root = tmp_path_factory.mktemp("ray-nodes")
    small = {"object_store_memory": 80 * 2**20, "include_dashboard": False}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, **small})
    nodes = [c.add_node(num_cpus=2, num_gpus=2, **small, **scratch_env(root, i)) for i in range(3)]
    c.wait_for_nodes()
    sys.addaudithook(_audit)
    _WATCHED.append(str(root))  # every node keeps its files there, each in its own folder
    yield c, nodes
    _WATCHED.clear()
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def ray_master(cluster, tmp_path):
    from jupyter_aigrid.server.executors.ray import RayExecutor

    c, _ = cluster
    m = master(tmp_path, RayExecutor(tmp_path, address=c.address))
    TOUCHED.clear()
    yield m
    m.store.close()
    assert TOUCHED == []  # the master never opened a node's file itself


def tick_until(m, done, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "timed out"
        m._tick()
        time.sleep(0.05)


def test_inventory_is_the_ray_nodes(ray_master, cluster):
    _, nodes = cluster
    names = {n.name for n in ray_master.nodes.all}
    assert names == {f"ray-{n.node_id[:12]}" for n in nodes}  # the head runs nothing
    for node in ray_master.nodes.all:
        assert len(node.gpus) == 2 and all(g.simulated for g in node.gpus)  # no NVML here
        assert node.cpus == 2
        assert ("ray.io/node-id", ray_master.executor._ids[node.name]) in node.labels
    scratch = sorted(n.scratch for n in ray_master.nodes.all)  # each node's own, as it said
    assert [os.path.basename(s) for s in scratch] == ["node-0", "node-1", "node-2"]


def test_a_four_replica_gang_over_two_nodes_all_reduces_where_the_policy_placed_it(
    ray_master, tmp_path
):
    job_id = submit(ray_master, {"code": ALL_REDUCE, "gpus": 4})
    tick_until(ray_master, lambda: ray_master.store.job(job_id).state == "succeeded")
    row = ray_master.store.job(job_id)
    slots = {s["rank"]: s["node"] for s in row.placement}
    assert len(set(slots.values())) == 2  # 4 GPUs: two nodes of 2
    # Ray ran each rank exactly where the policy put it.
    key = ray_master.files.key(job_id)
    assert ray_master.executor.placed(key, 0) == slots
    out = ran(tmp_path, job_id, 0)
    assert out == sorted(f"rank {r} of 4 sum 10\n" for r in range(4))


def test_a_replica_that_fails_fails_the_gang_and_its_logs_come_back(ray_master, tmp_path):
    code = "import sys\nprint('to stdout', flush=True)\nsys.exit('went wrong')"
    job_id = submit(ray_master, {"code": code, "gpus": 1})
    tick_until(ray_master, lambda: ray_master.store.job(job_id).state == "failed")
    row = ray_master.store.job(job_id)
    assert "exited with code 1" in row.reason and "went wrong" in row.reason
    assert ran(tmp_path, job_id, 0) == ["to stdout\n"]


def test_cancel_stops_the_replicas(ray_master):
    job_id = submit(ray_master, {"code": "import time; time.sleep(600)", "gpus": 2})
    tick_until(ray_master, lambda: ray_master.store.job(job_id).state == "running")
    ray_master.lifecycle.cancel(job_id, "u", False)
    tick_until(ray_master, lambda: ray_master.store.job(job_id).state == "cancelled", 60)
    assert not ray_master.executor._gangs  # the placement group went with the gang


def test_a_restarted_master_adopts_the_running_replicas(cluster, tmp_path):
    from jupyter_aigrid.server.executors.ray import RayExecutor

    c, _ = cluster
    a = master(tmp_path, RayExecutor(tmp_path, address=c.address))
    code = "import time\nprint('up', flush=True)\ntime.sleep(4)\nprint('done', flush=True)"
    job_id = submit(a, {"code": code, "gpus": 2})
    tick_until(a, lambda: a.store.job(job_id).state == "running")
    tick_until(a, lambda: ran(tmp_path, job_id, 0) == ["up\n", "up\n"])
    a.store.close()  # the master dies; its replicas (detached actors) run on

    b = master(tmp_path, RayExecutor(tmp_path, address=c.address))
    b.recovery.recover()
    b.recovery.error = None
    tick_until(b, lambda: b.store.job(job_id).state == "succeeded")
    assert b.store.job(job_id).restarts == 0
    assert ran(tmp_path, job_id, 0) == ["up\ndone\n", "up\ndone\n"]  # the logs went on
    b.store.close()


def train(steps: int = 60, pause: float = 0.05, every: int = 10, **spec) -> dict:
    return {"code": TRAIN, "args": [str(steps), str(pause), str(every)], "gpus": 1, **spec}


def output(state, job_id: str, attempt: int) -> list[str]:
    (text,) = ran(state, job_id, attempt)
    return text.splitlines()


def test_a_job_migrated_to_another_node_resumes_bit_exact(ray_master, tmp_path):
    """Checkpoint on node A, copied to node B through Ray (no shared filesystem), resumed
    there: every step's loss and the final weights are those of a run left alone."""
    m = ray_master
    reference = submit(m, train())
    moved = submit(m, train())
    tick_until(
        m, lambda: m.requests.listening(m.store.job(moved)) and len(ran(tmp_path, moved, 0)) == 1
    )
    tick_until(m, lambda: sum(line.startswith("step") for line in output(tmp_path, moved, 0)) >= 10)
    source = m.store.job(moved).placement[0]["node"]
    started = m.moves.migrate_now(moved, "u", False, None)
    assert started["migration"]["state"] == "checkpointing"
    done = lambda j: m.store.job(j).state in ("succeeded", "failed")  # noqa: E731
    tick_until(m, lambda: done(moved) and done(reference))
    row = m.store.job(moved)
    assert row.state == "succeeded", row.reason
    migration = row.migration
    assert migration["state"] == "done", migration
    assert [p["phase"] for p in migration["phases"]] == [
        "checkpointing", "stopping", "transferring", "restoring"
    ]  # fmt: skip
    assert migration["phases"][2]["bytes"] > 0  # copied between the nodes
    target = row.placement[0]["node"]
    assert target != source and m.executor.placed(m.files.key(moved), 1) == {0: target}
    expected = output(tmp_path, reference, 0)
    before, after = output(tmp_path, moved, 0), output(tmp_path, moved, 1)
    resumed_at = int(after[0].split()[-1])
    assert after[0] == f"resumed at {resumed_at}" and resumed_at >= 10
    assert before[:resumed_at] == expected[:resumed_at]
    assert after[1:] == expected[resumed_at:]  # every loss after it, and the final weights
    assert after[-1].startswith("final ")


def test_a_node_that_dies_mid_job_its_job_recovers_from_the_checkpoint_elsewhere(
    ray_master, cluster, tmp_path
):
    """The job's node leaves the cluster: the checkpoint's copy on another node survives it,
    the job resumes from it on a live node (even with max_restarts 0: not its fault), and the
    node's GPUs are no longer counted."""
    c, nodes = cluster
    m = ray_master
    job = submit(m, train(steps=120, pause=0.1, every=5))
    tick_until(m, lambda: (m.store.job(job).checkpoint or {}).get("copied") is not None)
    copied = m.store.job(job).checkpoint["copied"]["name"]
    dead = m.store.job(job).placement[0]["node"]
    (victim,) = [n for n in nodes if f"ray-{n.node_id[:12]}" == dead]
    c.remove_node(victim)
    nodes.remove(victim)
    tick_until(m, lambda: m.store.job(job).state in ("succeeded", "failed"), 180)
    row = m.store.job(job)
    assert row.state == "succeeded", row.reason
    assert row.restarts == 1 and row.placement[0]["node"] != dead
    assert dead not in {n.name for n in m.nodes.all}  # its GPUs are gone with it
    assert sum(len(n.gpus) for n in m.nodes.all) == 4
    reasons = [
        e["data"].get("reason") or ""
        for e in m.store.events(job)
        if e["schema_id"].endswith("job_state/v1")
    ]
    assert any("its node left the cluster" in r for r in reasons), reasons
    resumed = output(tmp_path, job, 1)
    step = int(resumed[0].split()[-1])
    assert resumed[0] == f"resumed at {step}" and step >= int(copied.split(".")[-1]) * 5
    reference = [line for line in output(tmp_path, job, 0) if line.startswith("step")]
    assert resumed[1 : 1 + len(reference) - step] == reference[step:]  # the same steps again
    assert resumed[-1].startswith("final ")
    nodes.append(c.add_node(num_cpus=2, num_gpus=2, object_store_memory=80 * 2**20,
                            **scratch_env(tmp_path, 9)))  # fmt: skip


def write_files(folder: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


READ_DATA = """
import hashlib, os
root = os.path.join(os.environ["AIGRID_DATA"], "digits")
for name in sorted(os.listdir(root)):
    with open(os.path.join(root, name), "rb") as f:
        print(name, hashlib.sha256(f.read()).hexdigest(), flush=True)
"""


async def test_a_dataset_on_one_node_is_staged_through_ray_to_the_job_s_node(ray_master, tmp_path):
    """Registered where an admin put it (node A), used by a job on node B: copied from A to
    B through Ray, verified there, and the job reads it."""
    import hashlib

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    m = ray_master
    a = m.nodes.all[0]
    files = {"a.bin": os.urandom(3 * 2**20), "b.bin": b"digits\n" * 1000}
    strategy = NodeAffinitySchedulingStrategy(node_id=m.executor._ids[a.name], soft=False)

    def admin_puts_it_there(folder: str, files: dict[str, bytes]) -> None:  # on node A
        import os

        for rel, data in files.items():
            with open(os.path.join(folder, rel), "wb") as f:
                f.write(data)

    folder = os.path.join(a.scratch, "datasets", "raw")
    write = ray.remote(num_cpus=0)(admin_puts_it_there).options(scheduling_strategy=strategy)
    m.node_files.call(a.name, os.makedirs, folder)
    ray.get(write.remote(folder, files))
    body = {"name": "digits", "node": a.name, "path": "raw"}
    view = await m.data.register_dataset(body, "admin", True)
    assert view["versions"][-1]["locations"][0]["state"] == "verified", view

    busy = submit(m, {"code": "import time; time.sleep(600)", "gpus": 2})  # fills node A
    tick_until(m, lambda: m.store.job(busy).state == "running")
    assert {s["node"] for s in m.store.job(busy).placement} == {a.name}
    job = submit(m, {"code": READ_DATA, "gpus": 1, "datasets": ["digits"]})
    tick_until(m, lambda: m.store.job(job).state in ("succeeded", "failed"))
    row = m.store.job(job)
    assert row.state == "succeeded", row.reason
    b = row.placement[0]["node"]
    assert b != a.name
    expected = [f"{n} {hashlib.sha256(d).hexdigest()}\n" for n, d in sorted(files.items())]
    assert ran(tmp_path, job, 0) == ["".join(expected)]
    staged = [
        e["data"]
        for e in m.store.events_since(0, limit=100_000)
        if e["schema_id"].endswith("dataset/v1") and e["data"]["state"] == "staged"
    ]
    assert staged and staged[-1]["node"] == b and staged[-1]["source"] == a.name
    m.lifecycle.cancel(busy, "u", False)
    tick_until(m, lambda: m.store.job(busy).state == "cancelled")


def test_an_upload_on_the_master_is_put_on_a_node_through_ray(ray_master, tmp_path):
    from jupyter_aigrid import contents

    m = ray_master
    local = tmp_path / "upload"
    write_files(str(local), {"x/one.txt": b"one\n", "two.bin": os.urandom(20 * 2**20)})
    manifest = contents.build_manifest(local)
    node = m.nodes.all[1]
    dest = Path(node.scratch) / "datasets" / ".aigrid" / "up" / "r"
    assert m.node_files.put_tree(local, node.name, dest, manifest)
    assert not local.exists()  # moved: the master keeps no copy
    assert m.node_files.verify_tree(node.name, dest, manifest) == []
    assert not m.node_files.put_tree(local, node.name, dest, manifest)  # already there


@pytest.fixture
def driver(cluster):
    """This process connected to the test cluster (as the executor connects it)."""
    c, _ = cluster
    if not ray.is_initialized():
        ray.init(address=c.address, namespace="aigrid", log_to_driver=False)
    return c


def test_the_node_actor_s_stop_returns_at_once_and_a_second_ask_moves_no_deadline(driver, tmp_path):
    """The actor sends SIGTERM and returns (its other calls are never held up by a grace
    period); SIGKILL follows when the first ask's grace is over, whatever later asks say."""
    from jupyter_aigrid.server.executors.ray_node import ReplicaActor

    actor_class = ray.remote(max_restarts=0, max_concurrency=4)(ReplicaActor)
    short, long = actor_class.options(num_cpus=0).remote(), actor_class.options(num_cpus=0).remote()
    argv = [sys.executable, "-u", "-c", STUBBORN]
    for i, actor in enumerate((short, long)):
        started = ray.get(
            actor.start.remote(argv, dict(os.environ), str(tmp_path), f"{tmp_path}/{i}")
        )
        assert started["pid"] is not None
    waits = [short.wait.remote(), long.wait.remote()]
    for actor in (short, long):
        deadline = time.monotonic() + 60
        while b"up" not in ray.get(actor.logs.remote(0, 0, 1000))[0]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    # A 600 s grace period: a stop that blocked for it would not answer within the timeout.
    ray.get([short.stop.remote(0.5), long.stop.remote(600.0)], timeout=30)
    ray.get([short.stop.remote(600.0), long.stop.remote(0.0)], timeout=30)
    assert ray.get(waits[0], timeout=60) == 137
    ready, _ = ray.wait([waits[1]], timeout=1.0)
    assert not ready  # the long one's deadline was not pulled in by its second ask
    for actor in (short, long):
        out, _ = ray.get(actor.logs.remote(0, 0, 10_000), timeout=30)
        assert out.count(b"got SIGTERM") == 1, out
    for actor in (short, long):
        ray.kill(actor)


def test_the_node_actor_writes_the_job_s_script_on_its_node(driver, tmp_path):
    from jupyter_aigrid.server.executors.ray_node import ReplicaActor

    actor = ray.remote(max_restarts=0)(ReplicaActor).options(num_cpus=0).remote()
    script = (str(tmp_path / "job"), 2, "import sys\nprint('args', sys.argv[1:])\n")
    env = dict(os.environ)
    ray.get(actor.start.remote(["x"], env, str(tmp_path), str(tmp_path / "logs"), script))
    assert ray.get(actor.wait.remote(), timeout=60) == 0
    out, err = ray.get(actor.logs.remote(0, 0, 10_000))
    assert out.decode().strip() == "args ['x']", err
    path = tmp_path / "job" / "main-2.py"
    assert path.read_text() == script[2] and (path.stat().st_mode & 0o777) == 0o444
    ray.kill(actor)
