"""The master dies at awkward moments (in-process: an exception no one catches, its store
closed as a dead process's would be); a new master on the same state picks up correctly."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from jupyter_aigrid.server.executors.base import ExecutorError
from jupyter_aigrid.server.executors.local import LocalExecutor
from jupyter_aigrid.server.master import Master
from jupyter_aigrid.server.policies import load_policy
from jupyter_aigrid.server.spec import validate
from jupyter_aigrid.server.store import Store


class Crash(BaseException):
    """The master process dies here."""


def master(state: Path, executor: LocalExecutor | None = None) -> Master:
    executor = executor or LocalExecutor(state, nodes=1, simulated_gpus=2, cpus_per_node=4)
    return Master(
        Store(state / "aigrid.sqlite"),
        executor,
        load_policy("fifo"),
        state_dir=state,
        tick_s=0.05,
        stop_grace_s=2.0,
    )


def crash_in(m: Master, where: str, when=lambda *a, **kw: True, ticks: int = 100) -> None:
    """Make ``m.<where>`` (a component's method: ``lifecycle.set_state``) die (when ``when``
    says so), then tick until it does."""
    path, _, where = where.rpartition(".")
    target = m
    for name in filter(None, path.split(".")):
        target = getattr(target, name)
    real = getattr(target, where)

    def dying(*args, **kwargs):
        if when(*args, **kwargs):
            raise Crash
        return real(*args, **kwargs)

    def tick_until_it_dies() -> None:
        for _ in range(ticks):
            m._tick()
            time.sleep(0.02)

    setattr(target, where, dying)
    with pytest.raises(Crash):
        tick_until_it_dies()
    m.store.close()  # the process is gone: so is its database lock


async def finished(m: Master, job_id: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = await m.job(job_id, "u")
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['state']}")


def submit(m: Master, spec: dict) -> str:
    if m.recovery_error is not None:
        m.recovery.recover()
        m.recovery.error = None
    return m.lifecycle.submit(validate(spec), "u", {})["id"]


def ran(state: Path, job_id: str, attempt: int) -> list[str]:
    return sorted(p.read_text() for p in state.glob(f"jobs/*/{job_id}/{attempt}/rank-*.stdout"))


@pytest.mark.parametrize("dies_at_rank", [0, 1])
async def test_died_while_starting_a_gang_starts_it_again_without_a_restart(tmp_path, dies_at_rank):
    # Dies after the placement was committed: before any process, or between two ranks.
    marker = tmp_path / "release"
    code = (
        "import os, time\n"
        "print('attempt', os.environ['AIGRID_ATTEMPT'], flush=True)\n"
        f"while os.environ['AIGRID_ATTEMPT'] == '0' and not os.path.exists({str(marker)!r}):\n"
        "    time.sleep(0.05)\n"
    )
    a = master(tmp_path)
    job_id = submit(a, {"code": code, "replicas": 2})
    crash_in(a, "executor.launch", when=lambda request, *rest: request.rank == dies_at_rank)
    b = master(tmp_path)
    await b.start()
    try:
        done = await finished(b, job_id)
        assert done["state"] == "succeeded", done["reason"]
        assert done["restarts"] == 0 and done["attempt"] == 1
        assert "failed" not in [e["data"].get("state") for e in b.store.events(job_id)]
        assert ran(tmp_path, job_id, 1) == ["attempt 1\n", "attempt 1\n"]
        # A rank of attempt 0 that did start was stopped, not left beside attempt 1.
        codes = [r.exit_code for r in b.store.replicas(job_id, 0)]
        assert codes == ([None, None] if dies_at_rank == 0 else [143, None]), codes
    finally:
        await b.stop()


async def test_died_after_starting_every_replica_the_job_is_running(tmp_path):
    marker = tmp_path / "release"
    code = f"import os, time\nwhile not os.path.exists({str(marker)!r}): time.sleep(0.05)\n"
    a = master(tmp_path)
    job_id = submit(a, {"code": code, "replicas": 2})
    crash_in(a, "lifecycle.set_state", when=lambda row, state, **kw: state == "running")
    b = master(tmp_path)
    await b.start()
    try:
        assert (await b.job(job_id, "u"))["state"] == "running"
        marker.write_text("go")
        done = await finished(b, job_id)
        assert done["state"] == "succeeded" and done["attempt"] == 0
    finally:
        await b.stop()


async def test_a_lost_replicas_leftover_processes_are_killed(tmp_path):
    a = master(tmp_path)
    job_id = submit(a, {"code": "import time; time.sleep(300)"})
    a._tick()
    (pidfile,) = tmp_path.glob(f"jobs/*/{job_id}/0/rank-0.exit.pid")
    wrapper = int(pidfile.read_text())
    deadline = time.monotonic() + 30
    while not (children := psutil.Process(wrapper).children()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job = children[0]
    a.store.close()  # the master dies...
    os.kill(wrapper, signal.SIGKILL)  # ... and so does the replica's wrapper, not the job
    psutil.wait_procs([psutil.Process(wrapper)], timeout=5)
    assert job.is_running()
    b = master(tmp_path)
    await b.start()
    try:
        done = await finished(b, job_id)
        assert done["state"] == "failed" and "lost on restart" in done["reason"]
        job.wait(timeout=10)  # killed: nothing of it runs beside a retry
    finally:
        await b.stop()


class EngineDownOnce(LocalExecutor):
    """An executor that cannot be reached the first time a master recovers."""

    failed = False

    def reconcile(self, known):
        if not EngineDownOnce.failed:
            EngineDownOnce.failed = True
            msg = "cannot list containers on tcp://docker:2376: connection refused"
            raise ExecutorError(msg)
        return super().reconcile(known)


async def test_a_master_that_cannot_recover_keeps_trying_and_loses_nothing(tmp_path):
    m = master(tmp_path, EngineDownOnce(tmp_path, nodes=1, simulated_gpus=1, cpus_per_node=2))
    await m.start()  # does not raise: the loop keeps trying
    try:
        assert "connection refused" in (await m.cluster())["recovering"]
        job = await m.submit(validate({"code": "print('ok')"}), "u")
        done = await finished(m, job["id"])
        assert done["state"] == "succeeded"
        assert (await m.cluster())["recovering"] is None
    finally:
        await m.stop()


def test_a_gang_whose_node_cannot_be_reached_at_start_goes_back_to_the_queue(tmp_path):
    """Placed, then its node stops answering before any replica started (it left the
    cluster): the job is queued again, not failed and not counted as a restart."""
    m = master(tmp_path)
    real = m.executor.rendezvous
    calls = []

    def unreachable(node):
        calls.append(node)
        if len(calls) == 1:
            raise ExecutorError(f"node {node} is not in the cluster")
        return real(node)

    m.executor.rendezvous = unreachable
    job_id = submit(m, {"code": "print('ran')", "gpus": 1})
    deadline = time.monotonic() + 60
    while m.store.job(job_id).state != "succeeded":
        assert time.monotonic() < deadline, m.store.job(job_id)
        m._tick()
        time.sleep(0.02)
    row = m.store.job(job_id)
    assert len(calls) == 2 and row.restarts == 0
    states = [e["data"]["state"] for e in m.store.events(job_id) if "job_state" in e["schema_id"]]
    assert states.count("queued") == 2, states
    reasons = [e["data"].get("reason") or "" for e in m.store.events(job_id)]
    assert any("could not reach its nodes: node" in r for r in reasons), reasons
    m.store.close()
