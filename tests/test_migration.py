"""Checkpoint and migration end to end: real torch jobs on logical nodes resume bit-exact."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow
TRAIN = (Path(__file__).parents[1] / "examples" / "train_resume.py").read_text()
STEPS = 40


@pytest.fixture
def aigrid_config(aigrid_config):
    return {**aigrid_config, "local_nodes": 3, "checkpoint_timeout_s": 60.0}


def train(out: Path, gpus: int = 1, sleep: float = 0.05, **spec) -> dict:
    return {
        "name": f"train-{out.name}",
        "code": TRAIN,
        "args": ["--steps", str(STEPS), "--sleep", str(sleep), "--out", str(out)],
        "gpus": gpus,
        "max_restarts": 3,
        **spec,
    }


def losses(out: Path, rank: int = 0) -> dict[int, set[str]]:
    """Every loss each step recorded (a step redone after a restore records it again)."""
    seen: dict[int, set[str]] = {}
    for line in (out / f"losses-{rank}.jsonl").read_text().splitlines():
        record = json.loads(line)
        seen.setdefault(record["step"], set()).add(record["loss"])
    return seen


def assert_same_run(reference: Path, resumed: Path, ranks: int = 1) -> None:
    for rank in range(ranks):
        expected, got = losses(reference, rank), losses(resumed, rank)
        assert sorted(got) == list(range(STEPS))
        for step in range(STEPS):
            assert got[step] == expected[step], f"rank {rank} step {step}: {got[step]}"
    before = torch.load(reference / "final.pt")
    after = torch.load(resumed / "final.pt")
    assert before.keys() == after.keys()
    for name in before:
        assert torch.isfinite(before[name]).all(), name  # NaN would equal nothing, not even NaN
        assert torch.equal(before[name], after[name]), name


async def reached(out: Path, step: int, timeout_s: float = 120.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        path = out / "losses-0.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= step:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the job never reached step {step}")


async def listening(api, job_id: str) -> dict:
    for _ in range(2400):
        job = await api.job(job_id)
        if job["checkpoint"]["listening"]:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never listened: {job}")


@pytest.mark.parametrize(
    ("gpus", "prestart"), [(1, True), (2, True), (1, False)], ids=["1", "2", "1-cold"]
)
async def test_a_migrated_job_resumes_bit_exact(api, aigrid_master, tmp_path, gpus, prestart):
    """The gang's replicas start at the destination while its checkpoint is written and
    wait in restore() (prestart), or start once it is there (cold): the same run either way."""
    aigrid_master.moves.migration_prestart = prestart
    reference = await api.submit(train(tmp_path / "reference", gpus))
    moved = await api.submit(train(tmp_path / "moved", gpus))
    job = await listening(api, moved["id"])
    source = {s["node"] for s in job["placement"]}
    await reached(tmp_path / "moved", 10)

    started = await api.call("POST", "jobs", moved["id"], "migrate", body={})
    assert started["migration"]["state"] == "checkpointing"
    assert started["migration"]["from"] == sorted(source)
    target = set(started["migration"]["to"])
    assert not target & source

    done = await api.wait(moved["id"])
    assert done["state"] == "succeeded", done
    assert (await api.wait(reference["id"]))["state"] == "succeeded"
    migration = done["migration"]
    assert migration["state"] == "done", migration
    assert [p["phase"] for p in migration["phases"]] == [
        "checkpointing",
        "stopping",
        "transferring",
        "restoring",
    ]
    assert all(p["duration_s"] is not None for p in migration["phases"])
    transferred = migration["phases"][2]["bytes"]
    assert transferred > 0 and transferred == migration["bytes"]
    assert {s["node"] for s in done["placement"]} == target
    assert done["attempt"] == 1 and done["restarts"] == 0
    if prestart:
        assert migration["prestart"] == {"attempt": 1, "state": "go", "reason": None}
        assert started["migration"]["prestart"]["state"] == "waiting"
    else:
        assert migration["prestart"] is None
    assert_same_run(tmp_path / "reference", tmp_path / "moved", ranks=gpus)
    # It succeeded: it never resumes, so its checkpoints go (on every node).
    roots = aigrid_master.core.roots(moved["id"]).values()
    for _ in range(200):
        if not any(root.exists() for root in roots):
            break
        await asyncio.sleep(0.05)
    assert not any(root.exists() for root in roots)
    kinds = [
        (e["data"]["state"], e["data"].get("phase"))
        for e in aigrid_master.store.events(moved["id"])
        if e["schema_id"].endswith("job_migration/v1")
    ]
    assert [k[0] for k in kinds] == [
        "checkpointing",
        "stopping",
        "transferring",
        "restoring",
        "done",
    ]


async def test_a_checkpoint_on_request_and_a_killed_replica(api, aigrid_master, tmp_path):
    reference = await api.submit(train(tmp_path / "reference"))
    job = await api.submit(train(tmp_path / "killed", sleep=0.1))
    await listening(api, job["id"])
    await reached(tmp_path / "killed", 5)
    asked = await api.call("POST", "jobs", job["id"], "checkpoint", body={})
    assert asked["checkpoint"]["request"]["state"] == "pending"
    for _ in range(600):
        view = await api.job(job["id"])
        if view["checkpoint"]["request"]["state"] != "pending":
            break
        await asyncio.sleep(0.05)
    assert view["checkpoint"]["request"]["state"] == "written", view["checkpoint"]
    latest = view["checkpoint"]["latest"]
    assert latest["step"] >= 5 and latest["bytes"] > 0
    await reached(tmp_path / "killed", latest["step"] + 5)

    # kill -9 the replica's python process (not the wrapper): the gang restarts from it.
    replica = aigrid_master.store.replicas(job["id"], 0)[0]
    root = Path(aigrid_master.core.roots(job["id"])[replica.node])
    pid = json.loads((root / ".control" / "listen-0-0").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)

    done = await api.wait(job["id"])
    assert done["state"] == "succeeded", done
    assert done["restarts"] == 1 and done["attempt"] == 1
    assert done["migration"]["kind"] == "resume" and done["migration"]["state"] == "done"
    assert done["migration"]["checkpoint"] == latest["name"]
    assert (await api.wait(reference["id"]))["state"] == "succeeded"
    assert_same_run(tmp_path / "reference", tmp_path / "killed")


async def test_migration_errors(api, aigrid_master, tmp_path):
    deaf = await api.submit({"code": "import time; time.sleep(60)", "gpus": 1})
    await api.wait(deaf["id"], states=("running",))
    status, body = await api.error("POST", "jobs", deaf["id"], "migrate", body={})
    assert status == 409 and "should_checkpoint" in body["message"]
    status, body = await api.error("POST", "jobs", deaf["id"], "checkpoint", body={})
    assert status == 409
    status, body = await api.error("POST", "jobs", deaf["id"], "migrate", body={"node": "nope"})
    assert status == 400 and body["field"] == "node" and "node-0" in body["message"]
    status, body = await api.error("POST", "jobs", deaf["id"], "migrate", body={"node": 3})
    assert status == 400 and body["field"] == "node"
    status, body = await api.error("POST", "jobs", deaf["id"], "migrate", body={"nodes": "x"})
    assert status == 400 and body["field"] == "nodes"
    status, body = await api.error("POST", "jobs", "999", "migrate", body={})
    assert status == 404
    await api.call("DELETE", "jobs", deaf["id"])
    done = await api.wait(deaf["id"])
    status, body = await api.error("POST", "jobs", done["id"], "checkpoint", body={})
    assert status == 409 and "cancelled" in body["message"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest"])
async def test_a_damaged_checkpoint_falls_back_to_the_one_before(
    api, aigrid_master, tmp_path, damage
):
    reference = await api.submit(train(tmp_path / "reference"))
    job = await api.submit(train(tmp_path / "damaged", checkpoint_interval_s=0.2))
    await listening(api, job["id"])
    await reached(tmp_path / "damaged", 25)
    replica = aigrid_master.store.replicas(job["id"], 0)[0]
    root = Path(aigrid_master.core.roots(job["id"])[replica.node])
    pid = json.loads((root / ".control" / "listen-0-0").read_text())["pid"]
    os.kill(pid, signal.SIGSTOP)  # no newer checkpoint from here on
    names = sorted(p.parent.name for p in root.glob("ckpt-*/rank-0.json"))
    assert len(names) >= 2, names
    newest = root / names[-1]
    piece = newest / "rank-0.pt"
    if damage == "flip":
        data = bytearray(piece.read_bytes())
        data[len(data) // 2] ^= 0x01
        piece.write_bytes(bytes(data))
    elif damage == "truncate":
        piece.write_bytes(piece.read_bytes()[:-10])
    else:
        (newest / "rank-0.json").unlink()
    os.kill(pid, signal.SIGKILL)

    done = await api.wait(job["id"])
    assert done["state"] == "succeeded", done
    assert done["restarts"] == 1
    assert done["migration"]["kind"] == "resume" and done["migration"]["state"] == "done"
    assert done["migration"]["checkpoint"] == names[-2]
    corrupt = [
        e["data"]
        for e in aigrid_master.store.events(job["id"])
        if e["schema_id"].endswith("job_checkpoint/v1") and e["data"]["state"] == "corrupt"
    ]
    # SIGSTOP may have caught the job writing a newer one: that partial one is passed over too.
    damaged = [c for c in corrupt if c["checkpoint"] == names[-1]]
    partial = [c for c in corrupt if c["checkpoint"] != names[-1]]
    assert len(damaged) == 1, corrupt
    assert all(c["checkpoint"] > names[-1] and "incomplete" in c["reason"] for c in partial)
    expected = {"flip": "sha256", "truncate": "bytes", "manifest": "no manifest"}[damage]
    assert expected in damaged[0]["reason"]
    assert (await api.wait(reference["id"]))["state"] == "succeeded"
    assert_same_run(tmp_path / "reference", tmp_path / "damaged")


#: A job without torch that checkpoints its running sum and RNG; it prints the final sum.
COUNTER = """
import random, sys, time
from jupyter_aigrid import runtime
steps, pause = int(sys.argv[1]), float(sys.argv[2])
state = runtime.restore()
if state:
    step, total = state["step"], state["total"]
    runtime.set_rng_state(state["rng"])
else:
    step, total = 0, 0
    random.seed(5)
while step < steps:
    total = (total * 31 + random.randrange(1000)) % 1000003
    step += 1
    if runtime.should_checkpoint():
        runtime.checkpoint({"step": step, "total": total, "rng": runtime.rng_state()})
    time.sleep(pause)
print("final", total)
"""


def counted(steps: int) -> str:
    import random

    rng, total = random.Random(5), 0
    for _ in range(steps):
        total = (total * 31 + rng.randrange(1000)) % 1000003
    return f"final {total}"


def counter(steps: int = 200, pause: float = 0.05, **spec) -> dict:
    return {"code": COUNTER, "args": [str(steps), str(pause)], "gpus": 1, **spec}


class TestDefragmentation:
    @pytest.fixture
    def aigrid_config(self, aigrid_config):
        return {**aigrid_config, "local_nodes": 2, "simulated_gpus": 2}

    async def test_small_jobs_move_so_that_a_whole_node_comes_free(
        self, api, aigrid_master, tmp_path
    ):
        small = [await api.submit(counter(preemptible=True)) for _ in range(2)]
        nodes = []
        for job in small:
            view = await listening(api, job["id"])
            nodes.append(view["placement"][0]["node"])
        if nodes[0] == nodes[1]:  # scatter them: one GPU free on each node
            other = "node-1" if nodes[1] == "node-0" else "node-0"
            await api.call("POST", "jobs", small[1]["id"], "migrate", body={"node": other})
            for _ in range(600):
                view = await api.job(small[1]["id"])
                if view["migration"]["state"] in ("done", "failed"):
                    break
                await asyncio.sleep(0.05)
            assert view["migration"]["state"] == "done", view["migration"]
            await listening(api, small[1]["id"])
        big = await api.submit({"code": "print('whole node')", "gpus": 2, "gpus_per_replica": 2})
        done = await api.wait(big["id"])
        assert done["state"] == "succeeded", done
        moved = [await api.job(j["id"]) for j in small]
        reasons = [j["migration"]["reason"] for j in moved if j["migration"]]
        assert f"defragmentation for job {big['id']}" in reasons, reasons
        for job in small:
            finished = await api.wait(job["id"])
            assert finished["state"] == "succeeded", finished
            lines = await api.logs(job["id"])
            assert counted(200) in [entry["line"] for entry in lines], lines[-3:]


class TestPreemption:
    @pytest.fixture
    def aigrid_config(self, aigrid_config):
        return {**aigrid_config, "local_nodes": 1, "simulated_gpus": 2, "policy": "priority"}

    async def test_a_preempted_job_checkpoints_and_resumes_with_the_same_result(
        self, api, aigrid_master, tmp_path
    ):
        reference = await api.submit(train(tmp_path / "reference", gpus=2, sleep=0.0))
        assert (await api.wait(reference["id"]))["state"] == "succeeded"
        low = await api.submit(train(tmp_path / "low", gpus=2, priority="low", preemptible=True))
        await listening(api, low["id"])
        await reached(tmp_path / "low", 10)
        high = await api.submit({"code": "print('urgent')", "gpus": 2, "priority": "high"})
        assert (await api.wait(high["id"]))["state"] == "succeeded"
        done = await api.wait(low["id"])
        assert done["state"] == "succeeded", done
        assert done["restarts"] == 0 and done["attempt"] == 1
        assert done["migration"]["kind"] == "resume" and done["migration"]["state"] == "done"
        checkpoints = [
            e["data"]["state"]
            for e in aigrid_master.store.events(low["id"])
            if e["schema_id"].endswith("job_checkpoint/v1")
        ]
        assert checkpoints == ["requested", "written", "restored"], checkpoints
        written = done["checkpoint"]["latest"]
        assert done["migration"]["checkpoint"] == written["name"] and written["step"] >= 10
        states = [
            e["data"]["state"]
            for e in aigrid_master.store.events(low["id"])
            if e["schema_id"].endswith("job_state/v1")
        ]
        assert states == [
            "queued", "starting", "running", "preempted", "queued", "starting", "running",
            "succeeded",
        ]  # fmt: skip
        assert_same_run(tmp_path / "reference", tmp_path / "low", ranks=2)
