"""The master's :class:`Launcher` on the real local executor: a launch starts every replica
of the gang with torchrun's and our environment and its log files, and a rank that cannot
start fails the gang (stopping the ranks that did)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from components import open_master, submit, until_ended

from jupyter_aigrid.server import events
from jupyter_aigrid.server.master.queue import request_of
from jupyter_aigrid.server.model import Launch, Placement, Slot


@pytest.fixture
def m(tmp_path: Path):
    with open_master(tmp_path) as master:
        yield master


#: A job that prints, on one line, the environment a replica was started with.
PRINT_ENV = "import json, os\nprint('ENV=' + json.dumps(dict(os.environ)), flush=True)\n"
#: Both ranks of a gang, one on each node.
ACROSS_NODES = Placement((Slot(0, "node-0", 0, (1,)), Slot(1, "node-1", 0, (0,))))


@pytest.mark.slow
def test_a_launch_runs_every_rank_with_its_environment_and_log_files(m):
    job_id = submit(m, {"code": PRINT_ENV, "gpus": 2, "nodes": 2, "env": {"MY_SETTING": "42"}})
    m.journal.take()
    m.launcher.apply(Launch(job_id, ACROSS_NODES))
    row = m.store.job(job_id)
    assert row.state == "running" and m.core.live_replicas
    assert row.placement == ACROSS_NODES.to_json()
    assert row.prediction["basis"] == "none"  # nothing has run here yet
    reps = m.store.replicas(job_id, 0)
    assert [(r.id, r.node, r.gpu_indices) for r in reps] == [
        (f"{job_id}.0.0", "node-0", (1,)),
        (f"{job_id}.0.1", "node-1", (0,)),
    ]
    assert all(r.state == "running" and r.pid and r.started_at for r in reps)
    taken = m.journal.take()
    assert [d["state"] for s, d in taken if s == events.JOB_STATE] == ["starting", "running"]
    ((placed),) = [d for s, d in taken if s == events.JOB_PLACEMENT]
    assert [(p["node"], p["gpus"], p["simulated"]) for p in placed["placement"]] == [
        ("node-0", [1], True),
        ("node-1", [0], True),
    ]

    assert until_ended(m, job_id).state == "succeeded"
    envs = []
    for rank in (0, 1):
        stdout = m.files.log(job_id, 0, rank, "stdout")
        assert m.files.log(job_id, 0, rank, "stderr").is_file()
        (line,) = [x for x in stdout.read_text().splitlines() if x.startswith("ENV=")]
        envs.append(json.loads(line.removeprefix("ENV=")))
    for rank, (env, slot) in enumerate(zip(envs, ACROSS_NODES.slots, strict=True)):
        assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == "2"
        assert (env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"], env["GROUP_RANK"]) == (
            "0",
            "1",
            str(rank),
        )
        assert env["AIGRID_JOB_ID"] == job_id and env["AIGRID_ATTEMPT"] == "0"
        assert env["AIGRID_NODE"] == slot.node
        assert env["AIGRID_GPUS"] == str(slot.gpus[0])
        # Simulated GPUs are CPU slots: no real device is visible.
        assert (env["CUDA_VISIBLE_DEVICES"], env["AIGRID_SIMULATED_GPUS"]) == ("", "1")
        assert env["AIGRID_CHECKPOINT_DIR"] == str(m.core.roots(job_id)[slot.node])
        assert env["AIGRID_RESULT_DIR"] == str(m.files.results(job_id, 0))
        assert env["AIGRID_INPUTS_DIR"] == str(m.files.inputs(job_id))
        assert env["MY_SETTING"] == "42"
    # One rendezvous for the whole gang.
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs} == {
        (envs[0]["MASTER_ADDR"], envs[0]["MASTER_PORT"])
    }


def test_a_rank_that_cannot_start_fails_the_gang(m):
    job_id = submit(
        m, {"code": "pass", "replicas": 2, "workdir": "/no/such/dir", "max_restarts": 2}
    )
    m.launcher.apply(
        Launch(job_id, m.policy.place(request_of(m.store.job(job_id)), m.reads.snapshot()))
    )
    row = m.store.job(job_id)
    assert row.state == "failed" and row.restarts == 0  # not the cluster's fault: no retry
    assert row.reason == (
        "rank 0 could not start: workdir '/no/such/dir' is not a directory on node-0"
    )
    reps = m.store.replicas(job_id, 0)
    assert [(r.state, r.pid) for r in reps] == [("exited", None), ("exited", None)]
    assert m.queue.waiting == {}


@pytest.mark.slow
def test_the_ranks_started_before_one_that_cannot_are_stopped(m, tmp_path):
    # node-1 cannot hold the job's folder: rank 1 fails to start after rank 0 has.
    (tmp_path / "nodes" / "node-1" / "jobs").write_text("not a folder")
    job_id = submit(m, {"command": ["sleep", "120"], "gpus": 2, "nodes": 2})
    m.launcher.apply(Launch(job_id, ACROSS_NODES))
    first, second = m.store.replicas(job_id, 0)
    assert first.pid is not None and first.state == "stopping"
    assert (second.pid, second.state) == (None, "exited")
    row = until_ended(m, job_id)
    assert row.state == "failed"
    assert row.reason.startswith("rank 1 could not start:")
    # Rank 0 was stopped: by the SIGTERM, or by the SIGKILL after the grace where the
    # SIGTERM came before its wrapper had started the job (the wrapper traps it).
    assert row.exit_codes in ({"0": 143, "1": None}, {"0": 137, "1": None})


def test_replicas_never_start_inside_a_transaction(m):
    """Each replica is on record (committed) before its process starts, so a master that
    dies in between finds it."""
    job_id = submit(m, {"code": "pass"})
    m.launcher.place(m.store.job(job_id), Placement((Slot(0, "node-0", 0, (0,)),)))
    with m.store.write(), pytest.raises(AssertionError, match="outside a transaction"):
        m.launcher.launch(m.store.job(job_id), None)
    assert m.store.replicas(job_id, 0) == []
