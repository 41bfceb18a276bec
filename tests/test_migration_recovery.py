"""The master dies at each step of a migration; the next master completes the move or rolls
it back (the gang resumes from its checkpoint), never leaves it half-done."""

from __future__ import annotations

import time

import pytest
from test_migration import counted, counter
from test_recovery import crash_in, finished, master, ran, submit

from jupyter_aigrid import checkpoints as ck
from jupyter_aigrid.server.executors.local import LocalExecutor

STEPS = 150


def two_nodes(tmp_path):
    return LocalExecutor(tmp_path, nodes=2, simulated_gpus=1, cpus_per_node=4)


def always(*args, **kwargs) -> bool:
    return True


#: Where the master dies: the step under way, the method it dies in, and when.
DEATHS = {
    "checkpointing": ("moves._after_checkpoint", always),  # the checkpoint is written
    "stopping": ("moves.stage", always),  # the gang has stopped; it is about to move
    "transferring": ("moves._staged", always),  # the copy is verified; before the restore
    "restoring": (
        "executor.launch",
        lambda request, *rest: request.attempt > 0,
    ),  # starting it there
    # Started there ahead of time, waiting: it dies as it tells them to go on.
    "going": ("moves.resume", lambda row, restore: row.migration.get("prestart")),
    "restored": ("moves._check_restored", always),  # the gang has restored; before "done"
}


@pytest.mark.slow
@pytest.mark.parametrize("step", list(DEATHS))
async def test_a_master_dying_mid_migration_completes_it_or_rolls_it_back(tmp_path, step):
    a = master(tmp_path, two_nodes(tmp_path))
    a.moves.migration_prestart = step != "restoring"  # a cold start at the destination, or not
    job_id = submit(a, counter(STEPS, 0.02))
    deadline = time.monotonic() + 60
    while not a.requests.listening(a.store.job(job_id)):
        assert time.monotonic() < deadline, a.store.job(job_id)
        a._tick()
        time.sleep(0.02)
    source = a.store.job(job_id).placement[0]["node"]
    a.moves.migrate_now(job_id, "u", False, None)
    where, when = DEATHS[step]
    crash_in(a, where, when, ticks=3000)

    b = master(tmp_path, two_nodes(tmp_path))
    await b.start()
    try:
        done = await finished(b, job_id)
        assert done["state"] == "succeeded", done["reason"]
        assert done["restarts"] == 0
        assert ran(tmp_path, job_id, done["attempt"]) == [f"{counted(STEPS)}\n"]
        migration = done["migration"]
        assert migration["state"] == "done", migration
        states = [
            e["data"]["state"]
            for e in b.store.events(job_id)
            if e["schema_id"].endswith("job_migration/v1")
        ]
        if step == "restoring":
            # Rolled back: the move failed, the gang went back to the queue and resumed
            # from the checkpoint where it was placed next.
            assert migration["kind"] == "resume" and "failed" in states, states
        else:
            assert migration["kind"] == "migrate" and migration["id"] == 1
            assert migration["to"] != [source]
            assert states[-1] == "done" and "failed" not in states, states
            # The replicas started ahead of time there were the ones that went on.
            assert migration["prestart"] == {"attempt": 1, "state": "go", "reason": None}
            assert done["attempt"] == 1
    finally:
        await b.stop()


#: Listens for checkpoint requests, and never writes one.
DEAF = """
import time
from jupyter_aigrid import runtime
while True:
    runtime.should_checkpoint()
    time.sleep(0.05)
"""


def tick_until(m, done, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline
        m._tick()
        time.sleep(0.02)


def test_a_checkpoint_that_never_comes_times_out(tmp_path):
    m = master(tmp_path, two_nodes(tmp_path))
    m.requests.timeout_s = 0.5
    job_id = submit(m, {"code": DEAF, "gpus": 1, "preemptible": True})
    tick_until(m, lambda: m.requests.listening(m.store.job(job_id)))
    source = m.store.job(job_id).placement

    # A migration fails, and the gang runs on where it was.
    m.moves.migrate_now(job_id, "u", False, None)
    tick_until(m, lambda: m.store.job(job_id).migration["state"] != "checkpointing")
    row = m.store.job(job_id)
    assert row.migration["state"] == "failed"
    assert "did not checkpoint within 0.5 s; it runs on" in row.migration["error"]
    assert row.state == "running" and row.placement == source and row.attempt == 0
    assert row.checkpoint["request"]["state"] == "timeout"
    # What it had started at the destination ahead of time is stopped, and never used.
    prestart = row.migration["prestart"]
    assert prestart["attempt"] == 1 and prestart["state"] == "dropped"
    assert "did not checkpoint" in prestart["reason"]
    tick_until(m, lambda: all(r.state == "exited" for r in m.store.replicas(job_id, 1)))
    assert len(m.store.replicas(job_id, 1)) == 1

    # A preemption goes ahead without the checkpoint.
    with m.store.write():
        m.lifecycle.preempt(job_id, "preempted for a test")
    assert m.store.job(job_id).pending_state is None  # asked for a checkpoint first
    tick_until(m, lambda: m.store.job(job_id).attempt == 2)  # attempt 1 is spent
    states = [e["data"].get("state") for e in m.store.events(job_id)]
    assert states.count("timeout") == 2 and "preempted" in states
    m.lifecycle.cancel(job_id, "u", False)
    tick_until(m, lambda: m.store.job(job_id).state == "cancelled")
    m.store.close()


def test_checkpoints_stay_after_a_failure_and_go_after_a_cancel(tmp_path):
    m = master(tmp_path, two_nodes(tmp_path))
    wrote = "from jupyter_aigrid import runtime\nruntime.checkpoint({'step': 1})\n"
    failed = submit(m, {"code": wrote + "raise SystemExit(3)", "gpus": 1})
    tick_until(m, lambda: m.store.job(failed).state == "failed")
    assert any(ck.piece_names(root) for root in m.core.roots(failed).values())  # to look into

    waits = submit(m, {"code": wrote + "print('written', flush=True)\nimport time; time.sleep(60)"})
    roots = m.core.roots(waits).values()
    tick_until(m, lambda: any(ck.piece_names(root) for root in roots))
    m.lifecycle.cancel(waits, "u", False)
    tick_until(m, lambda: not any(root.exists() for root in roots))
    assert m.store.job(waits).state == "cancelled"
    assert any(ck.piece_names(root) for root in m.core.roots(failed).values())
    m.store.close()
