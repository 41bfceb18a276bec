"""The infrastructure every component of the master runs on, each part alone on a real store:
:class:`Journal` (events of committed transactions only), :class:`Nodes` (the inventory as it
changes), :class:`Core` (where a job's checkpoints live) and :class:`JobQueue` (the queue in
memory, in the policy's order, with the restart backoff)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from components import insert_job, local_executor

from jupyter_aigrid.server import events
from jupyter_aigrid.server.master.core import Core, Journal, Nodes
from jupyter_aigrid.server.master.queue import JobQueue, request_of, run_time_s
from jupyter_aigrid.server.model import Gpu, Node, Placement, Slot
from jupyter_aigrid.server.policies import load_policy
from jupyter_aigrid.server.records import Job
from jupyter_aigrid.server.snapshot import Snapshot
from jupyter_aigrid.server.store import Store


class Boom(Exception):
    """Raised inside a transaction so that it rolls back."""


def in_failing_transaction(store: Store, work) -> None:
    """Do ``work`` in a write transaction that then fails (and rolls back)."""
    with store.write():
        work()
        raise Boom


def node(name: str, gpus: int = 2, scratch: str = "", simulated: bool = True) -> Node:
    return Node(
        name=name,
        gpus=tuple(Gpu(i, f"{name}-gpu{i}", "sim", 1024, simulated) for i in range(gpus)),
        cpus=4,
        memory_mb=4096,
        scratch=scratch or f"/scratch/{name}",
    )


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "aigrid.sqlite")
    yield s
    s.close()


@pytest.fixture
def core(tmp_path: Path, store: Store):
    c = Core(store, local_executor(tmp_path), tmp_path)
    yield c
    c.close()


# -- Journal ------------------------------------------------------------------------------------


def test_journal_hands_out_a_committed_event_once(store):
    journal = Journal(store)
    job = insert_job(store, {"code": "pass"})
    with store.write():
        journal.record(events.JOB_STATE, job.id, {"state": "queued"})
        journal.record(events.JOB_STATE, job.id, {"state": "starting"})
        assert journal.take() == []  # not committed yet: nothing to emit
    assert journal.take() == [
        (events.JOB_STATE, {"state": "queued"}),
        (events.JOB_STATE, {"state": "starting"}),
    ]
    assert journal.take() == []
    assert [e["data"]["state"] for e in store.events(job.id)] == ["queued", "starting"]


def test_journal_never_hands_out_an_event_of_a_transaction_that_rolled_back(store):
    journal = Journal(store)
    job = insert_job(store, {"code": "pass"})
    with pytest.raises(Boom):
        in_failing_transaction(
            store, lambda: journal.record(events.JOB_STATE, job.id, {"state": "starting"})
        )
    assert journal.take() == []
    assert store.events(job.id) == []  # nor is it kept
    with store.write():  # the next transaction does not carry the dropped event along
        journal.record(events.JOB_STATE, job.id, {"state": "cancelled"})
    assert journal.take() == [(events.JOB_STATE, {"state": "cancelled"})]


def test_after_commit_actions_run_once_the_outermost_transaction_commits(store):
    journal = Journal(store)
    ran: list[str] = []
    with store.write():
        with store.write():  # nested: part of the outer transaction
            journal.after_commit(lambda: ran.append("first"))
        assert ran == []
        journal.after_commit(lambda: ran.append("second"))
        assert ran == []
    assert ran == ["first", "second"]
    with store.write():
        pass
    assert ran == ["first", "second"]  # each action runs once


def test_after_commit_actions_of_a_rolled_back_transaction_never_run(store):
    journal = Journal(store)
    ran: list[str] = []
    with pytest.raises(Boom):
        in_failing_transaction(store, lambda: journal.after_commit(lambda: ran.append("dropped")))
    with store.write():
        journal.after_commit(lambda: ran.append("kept"))
    assert ran == ["kept"]


# -- Nodes --------------------------------------------------------------------------------------


def test_nodes_update_says_who_left_and_who_joined_and_keeps_old_scratch():
    nodes = Nodes([node("a"), node("b"), node("c")])
    left, joined = nodes.update([node("c"), node("d"), node("a")])
    assert (left, joined) == (["b"], ["d"])
    assert [n.name for n in nodes.all] == ["c", "d", "a"]
    assert set(nodes.by_name) == {"a", "c", "d"}
    # A node that left keeps its scratch folder: its checkpoints are still named by it.
    assert nodes.scratch == {n: f"/scratch/{n}" for n in "abcd"}
    assert nodes.update([node("c"), node("d"), node("a")]) == ([], [])


def test_nodes_update_takes_a_new_scratch_of_a_node_that_came_back():
    nodes = Nodes([node("a")])
    nodes.update([])
    nodes.update([node("a", scratch="/elsewhere/a")])
    assert nodes.scratch == {"a": "/elsewhere/a"}


def test_nodes_present_drops_the_slots_on_nodes_that_left():
    nodes = Nodes([node("a"), node("b")])
    gang = Placement((Slot(0, "a", 0, (0,)), Slot(1, "b", 0, (0,)), Slot(2, "b", 1, (1,))))
    assert nodes.present(gang) is gang  # all there: the same placement
    nodes.update([node("a")])
    assert nodes.present(gang) == Placement((Slot(0, "a", 0, (0,)),))
    nodes.update([])
    assert nodes.present(gang).slots == ()


def test_nodes_know_which_nodes_have_simulated_gpus():
    nodes = Nodes([node("sim"), node("real", simulated=False), node("cpu", gpus=0)])
    assert nodes.simulated("sim")
    assert not nodes.simulated("real")
    assert not nodes.simulated("cpu")
    assert not nodes.simulated("gone")


# -- Core ---------------------------------------------------------------------------------------


def test_core_roots_name_every_node_that_ever_held_the_job(core, tmp_path):
    key = core.files.key("7")
    assert core.roots("7") == {
        f"node-{i}": tmp_path / "nodes" / f"node-{i}" / "checkpoints" / key for i in (0, 1)
    }
    core.nodes.update([n for n in core.nodes.all if n.name == "node-0"])
    assert set(core.roots("7")) == {"node-0", "node-1"}  # node-1 left; its folder is named
    holders = core.holders("7")
    assert set(core.roots("7").items()) < set(holders.items())
    assert len(holders) == 4  # each node's own folder, and the copies it keeps of others'
    job = Job(id="7", seq=7, owner="u", state="running", spec={}, submitted_at=0.0)
    placed = replace(job, placement=[{"rank": 1, "node": "b"}, {"rank": 0, "node": "a"}])
    assert core.rank_nodes(placed) == {0: "a", 1: "b"}
    assert core.rank_nodes(job) == {}


# -- JobQueue -----------------------------------------------------------------------------------


def test_queue_positions_follow_the_policy_order(core):
    queue = JobQueue(core, load_policy("priority"))
    low = insert_job(core.store, {"code": "pass", "priority": "low"}, submitted_at=1.0)
    normal = insert_job(core.store, {"code": "pass"}, submitted_at=2.0)
    high = insert_job(core.store, {"code": "pass", "priority": "high"}, submitted_at=3.0)
    for row in (low, normal, high):
        queue.track(row)
    snapshot = lambda: Snapshot.empty(core.nodes.all)  # noqa: E731
    assert queue.positions(snapshot) == {high.id: 1, normal.id: 2, low.id: 3}

    fifo = JobQueue(core, load_policy("fifo"))
    for row in (high, low, normal):
        fifo.track(row)
    assert fifo.positions(snapshot) == {low.id: 1, normal.id: 2, high.id: 3}


def test_queue_positions_are_computed_once_per_change(core):
    queue = JobQueue(core, load_policy("fifo"))
    first = insert_job(core.store, {"code": "pass"})
    queue.track(first)
    calls: list[int] = []

    def snapshot():
        calls.append(1)
        return Snapshot.empty(core.nodes.all)

    assert queue.positions(snapshot) == {first.id: 1}
    assert queue.positions(snapshot) == {first.id: 1}
    assert len(calls) == 1
    second = insert_job(core.store, {"code": "pass"})
    queue.track(second)  # a change: the order is computed again
    assert queue.positions(snapshot) == {first.id: 1, second.id: 2}
    assert len(calls) == 2
    queue.track(replace(first, state="starting"))  # it left the queue
    assert queue.positions(snapshot) == {second.id: 1}
    assert list(queue.waiting) == [second.id]


def test_queue_ready_holds_back_a_job_until_its_backoff_has_passed(core):
    queue = JobQueue(core, load_policy("fifo"))
    waiting, backing_off = (insert_job(core.store, {"code": "pass"}) for _ in range(2))
    queue.track(waiting)
    queue.track(backing_off)
    assert queue.not_before(backing_off.id) == 0.0
    core.memory(backing_off.id).not_before = 100.0
    assert queue.not_before(backing_off.id) == 100.0
    assert [r.job_id for r in queue.ready(99.0)] == [waiting.id]
    assert [r.job_id for r in queue.ready(100.0)] == [waiting.id, backing_off.id]
    assert queue.not_before("no-such-job") == 0.0


def test_queue_load_restores_the_queued_jobs_and_their_backoff_from_the_store(core):
    queued = insert_job(core.store, {"code": "pass", "gpus": 2})
    retrying = insert_job(core.store, {"code": "pass"})
    started = insert_job(core.store, {"code": "pass"})
    core.store.update_job(retrying.id, retry_at=500.0)
    core.store.update_job(started.id, state="starting")
    queue = JobQueue(core, load_policy("fifo"))
    queue.load()
    assert list(queue.waiting) == [queued.id, retrying.id]
    request = queue.waiting[queued.id]
    assert (request.owner, request.replicas, request.gpus_per_replica) == ("u", 2, 1)
    assert queue.not_before(retrying.id) == 500.0
    assert queue.not_before(queued.id) == 0.0
    assert [r.job_id for r in queue.ready(499.0)] == [queued.id]


def test_queue_history_learns_run_times_of_succeeded_jobs_only(core):
    queue = JobQueue(core, load_policy("fifo"))
    code = {"code": "print('the same code')", "gpus": 2}
    done = insert_job(core.store, code)
    failed = insert_job(core.store, code)
    for row, end, finished_at in ((done, "succeeded", 40.0), (failed, "failed", 1000.0)):
        core.store.update_job(row.id, state="starting")
        core.store.update_job(
            row.id, state=end, started_at=10.0, finished_at=finished_at, attained_gpu_s=20.0
        )
    # 20 GPU-seconds earlier over 2 GPUs, then 30 s: 40 s in all.
    assert run_time_s(core.store.job(done.id)) == 40.0
    new = insert_job(core.store, code)
    queue.load_history()
    assert queue.history.estimate_s(request_of(new)) == pytest.approx(40.0)
    queue.succeeded(core.store.job(done.id), 100.0)  # the median of 40 s and 100 s
    assert queue.history.estimate_s(request_of(new)) == pytest.approx(70.0)
