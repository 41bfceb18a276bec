"""The master's :class:`Lifecycle`, called directly on a real store and the local executor
(without the master's loop): submit, cancel, the state machine's guard, a failing gang's
restarts and backoff, the end of a gang for each reason it was stopped, time limits.

Gangs here are placed by the launcher and put on record as running, but no process is
started: each test reports the replicas' exits itself, as the executor would, so the tests
stay in the fast lane. :mod:`tests.test_components_launcher` starts real processes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from components import open_master, run_without_processes, states, submit

from jupyter_aigrid.server import events
from jupyter_aigrid.server.errors import Conflict, NotFound
from jupyter_aigrid.server.master import Master
from jupyter_aigrid.server.master.queue import request_of
from jupyter_aigrid.server.model import ReplicaExit
from jupyter_aigrid.server.spec import SpecError, validate
from jupyter_aigrid.server.states import REFUSED, IllegalTransition

BACKOFF_S = 10.0


@pytest.fixture
def m(tmp_path: Path):
    with open_master(tmp_path, restart_backoff_s=BACKOFF_S) as master:
        yield master


def exited(m: Master, *exits: tuple[str, int | None]) -> None:
    """The executor reports these (replica id, exit code) exits."""
    m.lifecycle.handle_exits([ReplicaExit(replica_id, code) for replica_id, code in exits])


# -- submit and cancel --------------------------------------------------------------------------


def test_submit_stores_a_queued_job_and_returns_its_view(m):
    m.journal.take()
    view = m.lifecycle.submit(validate({"code": "pass", "gpus": 2}), "ann", {"x": b"pickled"})
    assert (view["state"], view["owner"], view["queue_position"]) == ("queued", "ann", 1)
    assert view["actions"]["cancel"] == {"allowed": True, "reason": None}
    assert m.store.job(view["id"]).state == "queued"
    assert list(m.queue.waiting) == [view["id"]]
    assert (m.files.inputs(view["id"]) / "x.pkl").read_bytes() == b"pickled"
    ((schema, data),) = m.journal.take()
    assert schema == events.JOB_STATE
    assert (data["state"], data["previous_state"], data["owner"]) == ("queued", None, "ann")
    second = m.lifecycle.submit(validate({"code": "pass"}), "ann", {})
    assert second["queue_position"] == 2


def test_submit_refuses_a_job_no_idle_node_could_hold(m):
    with pytest.raises(SpecError, match="unschedulable") as info:
        m.lifecycle.submit(validate({"code": "pass", "gpus": 3, "gpus_per_replica": 3}), "u", {})
    assert info.value.field == "gpus_per_replica"
    assert m.store.jobs() == [] and m.queue.waiting == {}


def test_cancel_of_a_queued_job_ends_it_at_once(m):
    job_id = submit(m, {"code": "pass"})
    m.memory(job_id).not_before = time.time() + 60
    view = m.lifecycle.cancel(job_id, "u", admin=False)
    assert (view["state"], view["reason"]) == ("cancelled", "cancelled by u")
    assert view["finished_at"] is not None
    assert states(m, job_id) == ["queued", "cancelled"]
    assert m.queue.waiting == {}
    assert m.memory.get(job_id) is None  # what was kept about it went with it
    with pytest.raises(Conflict, match="has already cancelled"):
        m.lifecycle.cancel(job_id, "u", admin=False)


def test_cancel_of_another_users_job_is_not_found_but_an_admin_may(m):
    job_id = submit(m, {"code": "pass"}, owner="ann")
    with pytest.raises(NotFound, match=f"no job '{job_id}'"):
        m.lifecycle.cancel(job_id, "bob", admin=False)
    assert m.store.job(job_id).state == "queued"
    view = m.lifecycle.cancel(job_id, "root", admin=True)
    assert (view["state"], view["reason"]) == ("cancelled", "cancelled by root")


def test_cancel_of_a_running_gang_stops_it_and_ends_it_once_every_rank_exited(m):
    job_id = submit(m, {"code": "pass", "replicas": 2})
    first, second = run_without_processes(m, job_id)
    view = m.lifecycle.cancel(job_id, "u", admin=False)
    assert (view["state"], view["stopping"]) == ("running", True)
    assert [r.state for r in m.store.replicas(job_id, 0)] == ["stopping", "stopping"]
    exited(m, (first, 143))
    assert m.store.job(job_id).state == "running"  # a rank still runs
    exited(m, (second, 143))
    row = m.store.job(job_id)
    assert (row.state, row.reason) == ("cancelled", "cancelled by u")
    assert row.exit_codes == {"0": 143, "1": 143}


# -- the state machine --------------------------------------------------------------------------


def test_set_state_refuses_an_illegal_transition_and_changes_nothing(m):
    job_id = submit(m, {"code": "pass"})
    m.journal.take()
    with pytest.raises(IllegalTransition, match="state cannot go from queued to running"):
        m.lifecycle.set_state(m.store.job(job_id), "running")
    assert list(REFUSED) == [f"job {job_id}: state cannot go from queued to running"]
    REFUSED.clear()  # refused on purpose: the suite's guard against illegal ones stays quiet
    assert m.store.job(job_id).state == "queued"
    assert states(m, job_id) == ["queued"]
    assert m.journal.take() == []
    assert list(m.queue.waiting) == [job_id]


def test_a_finished_job_never_changes_state_again(m):
    job_id = submit(m, {"code": "pass"})
    m.lifecycle.cancel(job_id, "u", admin=False)
    with pytest.raises(IllegalTransition, match="from cancelled to queued"):
        m.lifecycle.set_state(m.store.job(job_id), "queued")
    REFUSED.clear()
    assert m.store.job(job_id).state == "cancelled" and m.queue.waiting == {}


# -- failures, restarts and the backoff ---------------------------------------------------------


def test_a_failing_gang_restarts_with_a_doubling_backoff_then_fails(m):
    job_id = submit(m, {"code": "pass", "replicas": 2, "max_restarts": 2})
    for restarts, backoff_s in ((1, BACKOFF_S), (2, 2 * BACKOFF_S)):
        failing, other = run_without_processes(m, job_id)
        before = time.time()
        exited(m, (failing, 3))
        assert m.store.replica(other).state == "stopping"  # the gang fails as a whole
        exited(m, (other, 143))
        row = m.store.job(job_id)
        assert (row.state, row.restarts, row.attempt) == ("queued", restarts, restarts)
        assert row.reason.startswith("restarting after: rank 0 on node-0 exited with code 3")
        assert before + backoff_s <= row.retry_at <= time.time() + backoff_s
        assert m.queue.not_before(job_id) == row.retry_at
        assert m.queue.ready(row.retry_at - 0.01) == []
        assert [r.job_id for r in m.queue.ready(row.retry_at)] == [job_id]
    failing, other = run_without_processes(m, job_id)
    exited(m, (other, 1), (failing, 143))
    row = m.store.job(job_id)
    assert (row.state, row.restarts) == ("failed", 2)
    assert row.reason.startswith("rank 1 on node-0 exited with code 1")
    assert row.exit_codes == {"0": 143, "1": 1}
    assert m.queue.waiting == {} and m.memory.get(job_id) is None


def test_the_failure_reason_names_the_signal_and_the_last_stderr_lines(m):
    job_id = submit(m, {"code": "pass"})
    (replica_id,) = run_without_processes(m, job_id)
    stderr = m.files.log(job_id, 0, 0, "stderr")
    stderr.parent.mkdir(parents=True, exist_ok=True)
    stderr.write_text("Traceback (most recent call last):\nMemoryError: out of memory\n")
    exited(m, (replica_id, 137))
    reason = m.store.job(job_id).reason
    assert reason.startswith("rank 0 on node-0 exited with code 137 (SIGKILL)")
    assert reason.endswith("MemoryError: out of memory")


def test_a_gang_whose_node_left_gets_restarts_beyond_its_own(m):
    job_id = submit(m, {"code": "pass", "gpus": 4})  # 4 ranks over both nodes
    replicas = run_without_processes(m, job_id)
    assert {r.node for r in m.store.replicas(job_id, 0)} == {"node-0", "node-1"}
    m.nodes.update([n for n in m.nodes.all if n.name == "node-0"])
    exited(m, (replicas[2], None))  # lost with its node: no exit status
    exited(m, *((r, 143) for r in replicas if r != replicas[2]))
    row = m.store.job(job_id)
    assert (row.state, row.restarts) == ("queued", 1)  # max_restarts is 0
    assert "rank 2 on node-1 was lost: its node left the cluster" in row.reason


# -- the end of a gang, for each reason it was stopped ------------------------------------------


def test_a_clean_exit_succeeds_and_teaches_the_history(m):
    job_id = submit(m, {"code": "print('learn me')", "replicas": 2})
    ids = run_without_processes(m, job_id)
    m.store.update_job(job_id, prediction={"run_s": 1000.0, "basis": "global"})
    exited(m, *((r, 0) for r in ids))
    row = m.store.job(job_id)
    assert (row.state, row.exit_codes) == ("succeeded", {"0": 0, "1": 0})
    assert states(m, job_id) == ["queued", "starting", "running", "succeeded"]
    ran_s = row.finished_at - row.started_at
    assert row.prediction["actual_s"] == pytest.approx(ran_s)
    assert row.prediction["error"] > 1  # predicted 1000 s, ran for about none
    again = m.store.job(submit(m, {"code": "print('learn me')", "replicas": 2}))
    assert m.queue.history.estimate_s(request_of(again)) == pytest.approx(ran_s)


def stop_for_restart(m: Master, job_id: str) -> None:
    m.lifecycle.fail_gang(job_id, "rank 0 was sick", retry=True)


def stop_to_requeue(m: Master, job_id: str) -> None:
    """The master's own doing: a rank it never started (it died while starting the gang)."""
    replica_id = m.store.replicas(job_id, m.store.job(job_id).attempt)[0].id
    m.lifecycle.handle_exits([ReplicaExit(replica_id, None, never_started=True)])


def stop_to_preempt(m: Master, job_id: str) -> None:
    m.lifecycle.preempt(job_id, "preempted for high job 9")


def stop_to_fail(m: Master, job_id: str) -> None:
    m.lifecycle.fail_gang(job_id, "rank 0 was sick", retry=False)


def stop_to_cancel(m: Master, job_id: str) -> None:
    m.lifecycle.cancel(job_id, "u", admin=False)


@pytest.mark.parametrize(
    ("stop", "ends", "restarts", "reason"),
    [
        (stop_for_restart, ["queued"], 1, "restarting after: rank 0 was sick"),
        (stop_to_requeue, ["queued"], 0, "requeued: the master restarted while starting rank 0"),
        (stop_to_preempt, ["preempted", "queued"], 0, "requeued: preempted for high job 9"),
        (stop_to_fail, ["failed"], 0, "rank 0 was sick"),
        (stop_to_cancel, ["cancelled"], 0, "cancelled by u"),
    ],
    ids=["restart", "requeue", "preempt", "fail", "cancel"],
)
def test_a_stopped_gang_ends_where_its_stop_says(m, stop, ends, restarts, reason):
    job_id = submit(m, {"code": "pass", "replicas": 2, "max_restarts": 1})
    run_without_processes(m, job_id)
    stop(m, job_id)
    row = m.store.job(job_id)
    assert row.state == "running" and row.pending_state is not None
    exited(m, *((r.id, 143) for r in m.store.replicas(job_id, 0) if r.state != "exited"))
    row = m.store.job(job_id)
    assert states(m, job_id) == ["queued", "starting", "running", *ends]
    assert row.restarts == restarts
    assert row.reason.startswith(reason)
    assert row.pending_state is None or row.state in ("failed", "cancelled")
    assert all(r.state == "exited" for r in m.store.replicas(job_id, 0))
    if row.state == "queued":  # a new attempt, from the queue, on no GPUs
        assert (row.attempt, row.placement) == (1, None)
        assert list(m.queue.waiting) == [job_id]
        assert row.attained_gpu_s > 0.0  # the service it had is kept for fair share
        assert (row.retry_at is not None) == (stop is stop_for_restart)
    else:
        assert row.finished_at is not None and m.queue.waiting == {}


# -- time limits --------------------------------------------------------------------------------


def test_a_gang_past_its_time_limit_fails_without_a_restart(m):
    job_id = submit(m, {"code": "pass", "replicas": 2, "time_limit_s": 5, "max_restarts": 3})
    ids = run_without_processes(m, job_id)
    started = m.store.job(job_id).started_at
    m.lifecycle.enforce_time_limits(started + 4.9)
    assert m.store.job(job_id).pending_state is None
    m.lifecycle.enforce_time_limits(started + 5.1)
    row = m.store.job(job_id)
    assert (row.pending_state, row.reason) == ("failed", "time limit of 5 s exceeded")
    assert [r.state for r in m.store.replicas(job_id, 0)] == ["stopping", "stopping"]
    exited(m, *((r, 143) for r in ids))
    row = m.store.job(job_id)
    assert (row.state, row.restarts) == ("failed", 0)
    assert row.reason == "time limit of 5 s exceeded"


def test_a_job_without_a_time_limit_runs_on(m):
    job_id = submit(m, {"code": "pass"})
    run_without_processes(m, job_id)
    m.lifecycle.enforce_time_limits(time.time() + 365 * 86400)
    assert m.store.job(job_id).pending_state is None
