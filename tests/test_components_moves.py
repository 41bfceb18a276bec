"""The master's :class:`Moves` (checkpoint requests and migrations), called directly on a
real store and the local executor. Gangs are put on record as running without processes,
and answer as the job-side runtime would, through their control files; the migration's
prestart is off, so nothing starts a process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from components import open_master, run_without_processes, submit

from jupyter_aigrid import checkpoints as ck
from jupyter_aigrid.server import events
from jupyter_aigrid.server.errors import Conflict
from jupyter_aigrid.server.master import Master
from jupyter_aigrid.server.model import Placement, ReplicaExit, Slot
from jupyter_aigrid.server.spec import SpecError, validate

ON_NODE_0 = Placement((Slot(0, "node-0", 0, (0,)), Slot(1, "node-0", 1, (1,))))


@pytest.fixture
def m(tmp_path: Path):
    with open_master(tmp_path, checkpoint_timeout_s=30.0, migration_prestart=False) as master:
        yield master


def running_gang(m: Master, spec: dict[str, Any], listening: bool) -> str:
    """A job placed on node-0 and on record as running (no process); ``listening``: each
    rank has said, as ``runtime.should_checkpoint()`` does, that it answers requests."""
    job_id = submit(m, {**spec, "replicas": 2})
    run_without_processes(m, job_id, ON_NODE_0)
    if listening:
        root = m.core.roots(job_id)["node-0"]
        for rank in (0, 1):
            # The runtime writes its pid here, for SIGUSR1; these ranks have no process.
            ck.write_json(ck.listen_file(root, 0, rank), {})
    return job_id


def test_only_a_running_gang_that_listens_may_checkpoint(m):
    queued = m.lifecycle.submit(validate({"code": "pass"}), "u", {})["id"]
    with pytest.raises(Conflict, match=f"job {queued} is queued; only a running job can"):
        m.requests.checkpoint_now(queued, "u", admin=False)
    deaf = running_gang(m, {"code": "pass"}, listening=False)
    assert not m.requests.listening(m.store.job(deaf))
    with pytest.raises(
        Conflict, match=r"never calls jupyter_aigrid\.runtime\.should_checkpoint\(\)"
    ):
        m.requests.checkpoint_now(deaf, "u", admin=False)
    assert m.store.job(deaf).checkpoint is None


def test_a_checkpoint_request_reaches_every_node_of_the_gang(m):
    job_id = running_gang(m, {"code": "pass"}, listening=True)
    assert m.requests.listening(m.store.job(job_id))
    m.journal.take()
    before = time.time()
    view = m.requests.checkpoint_now(job_id, "ann", admin=True)
    request = m.store.job(job_id).checkpoint["request"]
    assert (request["id"], request["state"], request["reason"]) == (
        "0.1",
        "pending",
        "requested by ann",
    )
    assert before + 30.0 <= request["deadline"] <= time.time() + 30.0
    asked = ck.read_json(
        ck.request_file(m.core.roots(job_id)["node-0"]), m.core.roots(job_id)["node-0"]
    )
    assert (asked["id"], asked["reason"]) == ("0.1", "requested by ann")
    assert not ck.request_file(m.core.roots(job_id)["node-1"]).exists()  # not a node of it
    assert m.memory(job_id).watching
    assert [d["state"] for s, d in m.journal.take() if s == events.JOB_CHECKPOINT] == ["requested"]
    assert view["actions"]["checkpoint"]["allowed"] is False
    with pytest.raises(Conflict, match="is already writing a checkpoint"):
        m.requests.checkpoint_now(job_id, "ann", admin=True)


def test_a_listening_gang_is_preempted_through_a_checkpoint(m):
    job_id = running_gang(m, {"code": "pass", "preemptible": True}, listening=True)
    m.lifecycle.preempt(job_id, "preempted for high job 9")
    row = m.store.job(job_id)
    assert row.pending_state is None  # it runs on until its checkpoint is written
    assert row.checkpoint["request"]["then"] == "preempt"
    assert [r.state for r in m.store.replicas(job_id, 0)] == ["running", "running"]


def test_a_migration_to_a_node_that_does_not_exist_is_refused_naming_the_field(m):
    job_id = running_gang(m, {"code": "pass"}, listening=True)
    with pytest.raises(
        SpecError, match="no node named 'node-7'; the nodes are: node-0, node-1"
    ) as e:
        m.moves.migrate_now(job_id, "u", admin=False, node="node-7")
    assert e.value.field == "node"
    assert m.store.job(job_id).migration is None


def test_a_migration_that_the_gang_does_not_live_through_fails(m):
    job_id = running_gang(m, {"code": "pass"}, listening=True)
    view = m.moves.migrate_now(job_id, "u", admin=False, node="node-1")
    migration = m.store.job(job_id).migration
    assert (migration["state"], migration["from"], migration["to"]) == (
        "checkpointing",
        ["node-0"],
        ["node-1"],
    )
    assert {s["node"] for s in migration["target"]} == {"node-1"}
    assert view["actions"]["migrate"]["allowed"] is False
    assert m.store.job(job_id).checkpoint["request"]["then"] == "migrate"
    with pytest.raises(Conflict, match="is migrating"):
        m.moves.migrate_now(job_id, "u", admin=False, node="node-1")
    # Rank 1 dies before the checkpoint is written: the gang fails, and its move with it.
    m.lifecycle.handle_exits([ReplicaExit(f"{job_id}.0.1", 1)])
    m.lifecycle.handle_exits([ReplicaExit(f"{job_id}.0.0", 143)])
    row = m.store.job(job_id)
    assert row.state == "failed"
    assert row.migration["state"] == "failed"
    assert row.migration["error"].startswith("rank 1 on node-0 exited with code 1")


def test_the_next_attempt_comes_after_every_attempt_that_had_replicas(m):
    job_id = running_gang(m, {"code": "pass"}, listening=False)
    row = m.store.job(job_id)
    assert m.moves.next_attempt(row) == 1
    m.store.insert_replicas(  # replicas started ahead of a move, for attempt 3
        [
            {
                "id": f"{job_id}.3.0",
                "job_id": job_id,
                "attempt": 3,
                "rank": 0,
                "local_rank": 0,
                "node": "node-1",
                "gpu_indices": [0],
                "state": "launching",
                "exit_path": str(m.files.log(job_id, 3, 0, "exit")),
            }
        ]
    )
    assert m.moves.next_attempt(row) == 4
