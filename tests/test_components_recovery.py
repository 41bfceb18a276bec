"""The master's :class:`Recovery`: a new master on the state of one that died (its store
closed as a dead process's is) picks up where it left off, each test calling
``recovery.recover()`` directly, without the master's loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from components import build_master, recovered, run_without_processes, states, submit, until_ended

from jupyter_aigrid.server.master import Master
from jupyter_aigrid.server.master.queue import request_of
from jupyter_aigrid.server.model import Launch, ReplicaExit


class Masters:
    """Masters on one state folder, one after the other; each is shut down at the end."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.made: list[Master] = []

    def new(self) -> Master:
        m = build_master(self.state)
        self.made.append(m)
        return m

    def first(self) -> Master:
        return recovered(self.new())

    @staticmethod
    def dies(m: Master) -> None:
        """The master's process is gone: so is its database lock. Its replicas run on."""
        m.store.close()

    def close(self) -> None:
        for m in self.made:  # their loops never ran; one that died closes its store again
            asyncio.run(m.stop())


@pytest.fixture
def masters(tmp_path: Path):
    made = Masters(tmp_path)
    yield made
    made.close()


def test_a_gang_whose_ranks_all_exited_before_the_master_died_is_settled(masters):
    a = masters.first()
    job_id = submit(a, {"code": "pass", "replicas": 2})
    for replica_id in run_without_processes(a, job_id):
        a.store.update_replica(replica_id, state="exited", exit_code=0, finished_at=time.time())
    masters.dies(a)  # ... before it finished the job
    b = masters.new()
    b.recovery.recover()
    row = b.store.job(job_id)
    assert (row.state, row.exit_codes) == ("succeeded", {"0": 0, "1": 0})
    assert not b.core.live_replicas


def test_the_queue_and_its_backoff_and_the_history_come_back(masters):
    a = masters.first()
    done = submit(a, {"code": "print('again')"})
    (replica_id,) = run_without_processes(a, done)
    a.lifecycle.handle_exits([ReplicaExit(replica_id, 0)])
    retrying = submit(a, {"code": "pass", "max_restarts": 1})
    (replica_id,) = run_without_processes(a, retrying)
    a.lifecycle.handle_exits([ReplicaExit(replica_id, 1)])
    waiting = submit(a, {"code": "pass"})
    retry_at = a.store.job(retrying).retry_at
    assert retry_at is not None
    masters.dies(a)
    b = masters.new()
    assert b.queue.waiting == {}
    b.recovery.recover()
    assert list(b.queue.waiting) == [retrying, waiting]
    assert b.queue.not_before(retrying) == retry_at
    assert [r.job_id for r in b.queue.ready(retry_at - 0.01)] == [waiting]
    again = b.store.job(submit(b, {"code": "print('again')"}))
    assert b.queue.history.estimate_s(request_of(again)) is not None


def test_a_gang_stopping_when_the_master_died_ends_as_its_stop_said(masters):
    a = masters.first()
    job_id = submit(a, {"code": "pass", "replicas": 2})
    run_without_processes(a, job_id)
    a.lifecycle.stop_to_requeue(job_id, "preempted for job 9")
    masters.dies(a)
    b = masters.new()
    b.recovery.recover()
    # Never started (no pid on record): the new executor reports them so.
    exits = b.executor.poll()
    assert sorted((e.replica_id, e.never_started) for e in exits) == [
        (f"{job_id}.0.0", True),
        (f"{job_id}.0.1", True),
    ]
    b.lifecycle.handle_exits(exits)
    row = b.store.job(job_id)
    assert states(b, job_id)[-2:] == ["preempted", "queued"]
    assert (row.state, row.attempt, row.restarts) == ("queued", 1, 0)
    assert list(b.queue.waiting) == [job_id]


@pytest.mark.slow
def test_live_replicas_are_adopted_and_followed_to_their_end(masters, tmp_path):
    marker = tmp_path / "release"
    code = f"import os, time\nwhile not os.path.exists({str(marker)!r}): time.sleep(0.05)\n"
    a = masters.first()
    job_id = submit(a, {"code": code, "gpus": 2, "nodes": 2})
    a.launcher.apply(
        Launch(job_id, a.policy.place(request_of(a.store.job(job_id)), a.reads.snapshot()))
    )
    assert a.store.job(job_id).state == "running"
    masters.dies(a)
    b = masters.new()
    b.recovery.recover()
    assert b.lifecycle.lost_on_restart == set()
    assert b.core.live_replicas
    assert b.executor.poll() == []  # they still run
    assert b.store.job(job_id).state == "running"
    marker.write_text("go")
    row = until_ended(b, job_id)
    assert (row.state, row.attempt, row.exit_codes) == ("succeeded", 0, {"0": 0, "1": 0})


@pytest.mark.slow
def test_a_gang_placed_but_never_started_is_started_by_the_next_master(masters):
    a = masters.first()
    job_id = submit(a, {"code": "print('started by b')"})
    placement = a.policy.place(request_of(a.store.job(job_id)), a.reads.snapshot())
    a.launcher.place(a.store.job(job_id), placement)
    masters.dies(a)  # ... before it started any replica
    b = masters.new()
    b.recovery.recover()
    assert b.store.job(job_id).state == "running"
    row = until_ended(b, job_id)
    assert (row.state, row.attempt, row.restarts) == ("succeeded", 0, 0)
    assert "started by b" in b.files.log(job_id, 0, 0, "stdout").read_text()
