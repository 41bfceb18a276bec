"""What the unit tests of the master's components share: a master that never starts its
loop, jobs stored as a submit stores them, and gangs put on record as running without a
process (so a test reports their exits itself, as the executor would)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jupyter_aigrid.server import events
from jupyter_aigrid.server.executors.local import LocalExecutor
from jupyter_aigrid.server.master import Master
from jupyter_aigrid.server.master.queue import request_of
from jupyter_aigrid.server.model import Placement
from jupyter_aigrid.server.policies import load_policy
from jupyter_aigrid.server.records import Job
from jupyter_aigrid.server.spec import validate
from jupyter_aigrid.server.store import Store

FINAL = ("succeeded", "failed", "cancelled")


def local_executor(state: Path) -> LocalExecutor:
    """2 local nodes x 2 simulated GPUs, 4 CPUs each."""
    return LocalExecutor(state, nodes=2, simulated_gpus=2, cpus_per_node=4)


def build_master(state: Path, **options: Any) -> Master:
    """A master (fifo) on :func:`local_executor`; its loop is never started."""
    options = {"tick_s": 0.05, "stop_grace_s": 2.0, **options}
    store = Store(state / "aigrid.sqlite")
    return Master(store, local_executor(state), load_policy("fifo"), state_dir=state, **options)


def recovered(master: Master) -> Master:
    """``master`` once it has picked up its store, as ``start()`` does before the loop."""
    master.recovery.recover()
    master.recovery.error = None
    return master


@contextmanager
def open_master(state: Path, **options: Any) -> Iterator[Master]:
    """A recovered :func:`build_master`, stopped after (its store and pools closed)."""
    master = recovered(build_master(state, **options))
    try:
        yield master
    finally:
        asyncio.run(master.stop())


def submit(m: Master, spec: dict[str, Any], owner: str = "u") -> str:
    return m.lifecycle.submit(validate(spec), owner, {})["id"]


def insert_job(
    store: Store, spec: dict[str, Any], owner: str = "u", submitted_at: float | None = None
) -> Job:
    """A queued job, stored as a submit stores it (no master needed)."""
    full = validate(spec)
    return store.insert_job(
        {
            "name": full["name"],
            "owner": owner,
            "kind": full["kind"],
            "state": "queued",
            "priority": full["priority"],
            "gpus": full["gpus"],
            "replicas": full["replicas"],
            "spec": full,
            "submitted_at": time.time() if submitted_at is None else submitted_at,
        }
    )


def run_without_processes(m: Master, job_id: str, placement: Placement | None = None) -> list[str]:
    """Place the queued job (at ``placement``, or where the policy would) and put its
    replicas on record as running, as a launch does, but start nothing; the replicas' ids."""
    row = m.store.job(job_id)
    placement = placement or m.policy.place(request_of(row), m.reads.snapshot())
    assert placement is not None, "the test cluster has room for the gang"
    m.launcher.place(row, placement)
    attempt = m.store.job(job_id).attempt
    ids = [f"{job_id}.{attempt}.{s.rank}" for s in placement.slots]
    m.store.insert_replicas(
        [
            {
                "id": replica_id,
                "job_id": job_id,
                "attempt": attempt,
                "rank": s.rank,
                "local_rank": s.local_rank,
                "node": s.node,
                "gpu_indices": list(s.gpus),
                "state": "running",
                "exit_path": str(m.files.log(job_id, attempt, s.rank, "exit")),
            }
            for replica_id, s in zip(ids, placement.slots, strict=True)
        ]
    )
    m.lifecycle.set_state(m.store.job(job_id), "running")
    return ids


def until_ended(m: Master, job_id: str, timeout_s: float = 60.0) -> Job:
    """Hand the executor's exits to the lifecycle until the job has ended."""
    deadline = time.monotonic() + timeout_s
    while (row := m.store.job(job_id)).state not in FINAL:
        assert time.monotonic() < deadline, row
        m.lifecycle.handle_exits(m.executor.poll())
        time.sleep(0.02)
    return row


def states(m: Master, job_id: str) -> list[str]:
    """The states the job went through, from its stored events."""
    return [
        e["data"]["state"] for e in m.store.events(job_id) if e["schema_id"] == events.JOB_STATE
    ]
