"""The master's read side (:class:`Reads`), built alone from a :class:`Core` and a
:class:`JobQueue` on a real store: who sees which job, queue positions, the cluster's GPU
holders, events, log files, and the snapshot every round decides on."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from components import insert_job, local_executor

from jupyter_aigrid.server import events
from jupyter_aigrid.server.errors import NotFound
from jupyter_aigrid.server.master.core import Core
from jupyter_aigrid.server.master.queue import JobQueue
from jupyter_aigrid.server.master.reads import Reads
from jupyter_aigrid.server.model import Placement, Slot
from jupyter_aigrid.server.policies import load_policy
from jupyter_aigrid.server.records import Migration
from jupyter_aigrid.server.spec import SpecError
from jupyter_aigrid.server.store import Store

#: A gang of two ranks, one on each node.
ACROSS = Placement((Slot(0, "node-0", 0, (0,)), Slot(1, "node-1", 0, (1,))))


@pytest.fixture
def core(tmp_path: Path):
    store = Store(tmp_path / "aigrid.sqlite")
    c = Core(store, local_executor(tmp_path), tmp_path)
    yield c
    c.close()
    store.close()


@pytest.fixture
def queue(core: Core) -> JobQueue:
    return JobQueue(core, load_policy("priority"))


@pytest.fixture
def reads(core: Core, queue: JobQueue) -> Reads:
    return Reads(core, queue)


def queued(core: Core, queue: JobQueue, spec: dict[str, Any], owner: str = "u") -> str:
    """A job stored and queued as a submit does; its id."""
    row = insert_job(core.store, spec, owner)
    queue.track(row)
    return row.id


def running(core: Core, queue: JobQueue, job_id: str, placement: Placement) -> None:
    """The job placed at ``placement`` and running (its replicas are not needed here)."""
    core.store.update_job(
        job_id, state="starting", placement=placement.to_json(), started_at=time.time()
    )
    core.store.update_job(job_id, state="running")
    queue.track(core.store.job(job_id))


def test_a_user_sees_only_their_own_jobs(core, queue, reads):
    mine = queued(core, queue, {"code": "pass"}, owner="ann")
    theirs = queued(core, queue, {"code": "pass"}, owner="bob")
    assert reads.visible(mine, "ann", admin=False).id == mine
    with pytest.raises(NotFound, match=f"no job '{theirs}'"):
        reads.visible(theirs, "ann", admin=False)
    with pytest.raises(NotFound, match="no job '99'"):
        reads.visible("99", "ann", admin=True)
    assert reads.visible(theirs, "root", admin=True).owner == "bob"
    with pytest.raises(NotFound):
        reads.view_one(theirs, "ann", admin=False)

    assert [v["id"] for v in reads.view_many("ann", False, None, None)] == [mine]
    assert reads.view_many("ann", False, None, "bob") == []  # not hers to list
    assert [v["id"] for v in reads.view_many("root", True, None, "bob")] == [theirs]
    assert [v["id"] for v in reads.view_many("root", True, None, None)] == [mine, theirs]
    assert reads.view_many("root", True, "running", None) == []


def test_views_carry_queue_positions_in_the_policys_order(core, queue, reads):
    low = queued(core, queue, {"code": "pass", "priority": "low"})
    normal = queued(core, queue, {"code": "pass"})
    high = queued(core, queue, {"code": "pass", "priority": "high"})
    placed = queued(core, queue, {"code": "pass", "priority": "high"})
    running(core, queue, placed, Placement((Slot(0, "node-0", 0, (0,)),)))
    positions = {v["id"]: v["queue_position"] for v in reads.view_many("u", False, None, None)}
    assert positions == {low: 3, normal: 2, high: 1, placed: None}
    assert reads.view_one(normal, "u", admin=False)["queue_position"] == 2


def test_the_snapshot_holds_placed_gangs_and_not_queued_ones(core, queue, reads):
    waiting = queued(core, queue, {"code": "pass", "gpus": 2})
    placed = queued(core, queue, {"code": "pass", "gpus": 2})
    running(core, queue, placed, ACROSS)
    snapshot = reads.snapshot()
    assert set(snapshot.running) == {placed}
    assert snapshot.running[placed].placement == ACROSS
    assert snapshot.node("node-0").free_gpus == frozenset({1})
    assert snapshot.node("node-1").free_gpus == frozenset({0})
    assert snapshot.free_gpus == 2
    assert waiting not in snapshot.running


def test_the_snapshot_leaves_out_the_slots_on_nodes_that_left(core, queue, reads):
    placed = queued(core, queue, {"code": "pass", "gpus": 2})
    running(core, queue, placed, ACROSS)
    core.nodes.update([n for n in core.nodes.all if n.name == "node-0"])
    snapshot = reads.snapshot()
    assert [n.name for n in snapshot.nodes] == ["node-0"]
    assert snapshot.running[placed].placement == Placement((ACROSS.slots[0],))


def test_a_gang_on_the_move_holds_its_target_too_until_it_has_stopped(core, queue, reads):
    placed = queued(core, queue, {"code": "pass"})
    running(core, queue, placed, Placement((Slot(0, "node-0", 0, (0,)),)))
    target = Placement((Slot(0, "node-1", 0, (1,)),))
    migration = Migration(
        id=1, kind="migrate", state="checkpointing", started_at=0.0, target=target.to_json()
    ).to_json()
    core.store.update_job(placed, migration=migration)
    held = reads.snapshot().running
    assert set(held) == {placed, f"{placed}>"}
    assert held[f"{placed}>"].placement == target
    assert not held[f"{placed}>"].request.preemptible
    core.store.update_job(placed, migration={**migration, "state": "stopping"})
    assert f"{placed}>" in reads.snapshot().running
    core.store.update_job(placed, migration={**migration, "state": "transferring"})
    assert set(reads.snapshot().running) == {placed}  # the gang has stopped at its source


def test_the_cluster_names_the_job_and_rank_holding_each_gpu(core, queue, reads):
    placed = queued(core, queue, {"code": "pass", "gpus": 2})
    running(core, queue, placed, ACROSS)
    cluster = reads.cluster()
    assert (cluster["gpus_total"], cluster["gpus_free"], cluster["simulated"]) == (4, 2, True)
    holders = {
        (n["name"], g["index"]): (g["job_id"], g["rank"])
        for n in cluster["nodes"]
        for g in n["gpus"]
    }
    assert holders == {
        ("node-0", 0): (placed, 0),
        ("node-0", 1): (None, None),
        ("node-1", 0): (None, None),
        ("node-1", 1): (placed, 1),
    }
    assert cluster["recovering"] is None
    reads.recovery_error = lambda: "the engine is down"
    assert reads.cluster()["recovering"] == "the engine is down"


def test_events_of_other_users_jobs_show_only_their_id_and_state(core, queue, reads):
    mine = queued(core, queue, {"code": "pass"}, owner="ann")
    theirs = queued(core, queue, {"code": "pass"}, owner="bob")
    assert reads.events("ann", False, None, None) == ([], 0)
    with core.store.write():
        for job_id in (mine, theirs):
            data = {"job_id": job_id, "state": "queued", "reason": "secret", "name": "x"}
            core.journal.record(events.JOB_STATE, job_id, data)
    sent, last = reads.events("ann", False, 0, None)
    assert last == core.store.last_event_seq() == 2
    assert [e["data"] for e in sent] == [
        {"job_id": mine, "state": "queued", "reason": "secret", "name": "x"},
        {"job_id": theirs, "state": "queued"},
    ]
    assert reads.events("ann", False, None, None) == ([], 2)  # the position to follow from
    assert reads.events("ann", False, 2, None) == ([], 2)
    assert [e["job_id"] for e in reads.events("ann", False, 0, mine)[0]] == [mine]
    with pytest.raises(NotFound):
        reads.events("ann", False, 0, theirs)
    assert reads.events("root", True, 0, theirs)[0][0]["data"]["reason"] == "secret"


def test_log_files_name_every_rank_and_stream_of_an_attempt(core, queue, reads):
    job_id = queued(core, queue, {"code": "pass", "replicas": 2})
    view, files = reads.log_files(job_id, "u", False, None)
    assert view["id"] == job_id
    assert [(rank, stream) for rank, stream, _ in files] == [
        (0, "stdout"),
        (0, "stderr"),
        (1, "stdout"),
        (1, "stderr"),
    ]
    assert files[3][2] == core.files.log(job_id, 0, 1, "stderr")
    with pytest.raises(SpecError, match="has attempts 0 to 0, not 1") as info:
        reads.log_files(job_id, "u", False, 1)
    assert info.value.field == "attempt"
