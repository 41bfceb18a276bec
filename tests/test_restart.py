"""kill -9 the master mid-job, start it again: nothing acknowledged is lost."""

from __future__ import annotations

import os
import signal
import textwrap
import time

import psutil
import pytest

from jupyter_aigrid.testing import ServerProcess, wait_for_state

pytestmark = pytest.mark.slow  # restarts servers / installs the package: not the fast lane

ARGS = (
    "--AIGridApp.local_nodes=1",
    "--AIGridApp.simulated_gpus=2",
    "--AIGridApp.local_cpus_per_node=8",
    "--AIGridApp.tick_interval_s=0.2",
)


def live_members(group: int) -> list[int]:
    """Processes of a process group that are still running (orphaned zombies do not count)."""
    return [
        p.pid
        for p in psutil.process_iter(["status"])
        if p.info["status"] != psutil.STATUS_ZOMBIE and _pgid(p.pid) == group
    ]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def group_of(server, job_id, rank=0, attempt=0):
    (pidfile,) = server.state_dir.glob(f"jobs/*/{job_id}/{attempt}/rank-{rank}.exit.pid")
    return int(pidfile.read_text())


@pytest.mark.slow
def test_kill_9_master_mid_job_then_restart(tmp_path):
    server = ServerProcess(tmp_path, *ARGS).start()
    try:
        c = server.client()
        marker = tmp_path / "go"
        # Runs across the restart and is re-adopted.
        survivor = c.submit(
            {
                "name": "survivor",
                "gpus": 1,
                "code": textwrap.dedent(f"""
            import os, time
            print("started", flush=True)
            while not os.path.exists({str(marker)!r}):
                time.sleep(0.05)
            print("finished after the restart", flush=True)
        """),
            }
        )
        # Ends while the master is down; its exit status must still be learned.
        quick = c.submit(
            {
                "name": "quick",
                "code": f"import os, time\n"
                f"while not os.path.exists({str(marker)!r}): time.sleep(0.05)\n"
                "raise SystemExit(3)\n",
            }
        )
        # Killed while the master is down: requeued (restarts left) or failed (none left).
        retry = c.submit(
            {
                "name": "retry",
                "max_restarts": 1,
                "code": textwrap.dedent("""
            import os, time
            if os.environ["AIGRID_ATTEMPT"] == "0":
                time.sleep(300)
            print("second attempt", flush=True)
        """),
            }
        )
        lost = c.submit({"name": "lost", "code": "import time; time.sleep(300)"})
        # Queued behind the survivor: needs both GPUs.
        queued = c.submit({"name": "queued", "gpus": 2, "code": "print('queued job ran')"})
        for job in (survivor, quick, retry, lost):
            wait_for_state(c, job["id"], ("running",))
        assert c.job(queued["id"])["state"] == "queued"
        survivor_group = group_of(server, survivor["id"])

        server.kill()
        os.killpg(group_of(server, retry["id"]), signal.SIGKILL)
        os.killpg(group_of(server, lost["id"]), signal.SIGKILL)
        marker.write_text("go")  # quick exits 3 and survivor finishes... once we let it
        time.sleep(1.0)

        server = ServerProcess(tmp_path, *ARGS, port=server.port, token=server.token).start()
        c = server.client()
        assert {j["id"] for j in c.jobs()} == {
            j["id"] for j in (survivor, quick, retry, lost, queued)
        }

        done = wait_for_state(c, survivor["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded", done["reason"]
        lines = [e["line"] for e in c.logs(survivor["id"])]
        assert lines == ["started", "finished after the restart"]
        assert live_members(survivor_group) == []

        done = wait_for_state(c, quick["id"], ("succeeded", "failed"))
        assert done["state"] == "failed" and "exited with code 3" in done["reason"]

        done = wait_for_state(c, retry["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded"
        assert done["restarts"] == 1
        assert [e["line"] for e in c.logs(retry["id"])] == ["second attempt"]

        done = wait_for_state(c, lost["id"], ("succeeded", "failed"))
        assert done["state"] == "failed"
        assert "lost on restart" in done["reason"]

        done = wait_for_state(c, queued["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded"
        ran = sorted((e["rank"], e["line"]) for e in c.logs(queued["id"]))
        assert ran == [(0, "queued job ran"), (1, "queued job ran")]
    finally:
        server.stop()


def test_acknowledged_jobs_survive_kill_9(tmp_path):
    """Every job that got a 201 is there after a kill -9, queued as it was."""
    args = ("--AIGridApp.simulated_gpus=1", "--AIGridApp.local_cpus_per_node=1")
    with ServerProcess(tmp_path, *args) as first:
        c = first.client()
        blocker = c.submit({"code": "import time; time.sleep(300)", "gpus": 1})
        ids = [c.submit({"code": "pass", "gpus": 1, "name": f"j{i}"})["id"] for i in range(20)]
        wait_for_state(c, blocker["id"], ("running",))
        first.kill()
        os.killpg(group_of(first, blocker["id"]), signal.SIGKILL)
    with ServerProcess(tmp_path, *args, port=first.port, token=first.token) as second:
        c = second.client()
        jobs = {j["id"]: j for j in c.jobs()}
        assert set(ids) <= set(jobs)
        assert jobs[blocker["id"]]["state"] in ("running", "failed")
        for job_id in ids:
            assert wait_for_state(c, job_id, ("succeeded",), timeout_s=60)["state"] == "succeeded"
        blocked = c.job(blocker["id"])
        assert blocked["state"] == "failed"
        assert "lost on restart" in blocked["reason"]


def test_kill_9_during_a_stop_still_stops_the_job(tmp_path):
    """A replica that ignores SIGTERM is killed after the grace period, even when the master
    died in between: the restarted master asks again."""
    args = ("--AIGridApp.simulated_gpus=1", "--AIGridApp.stop_grace_s=2")
    stubborn = textwrap.dedent("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring SIGTERM", flush=True)
        time.sleep(300)
    """)
    with ServerProcess(tmp_path, *args) as first:
        c = first.client()
        job = c.submit({"code": stubborn, "gpus": 1})
        wait_for_state(c, job["id"], ("running",))
        while not list(c.logs(job["id"])):
            time.sleep(0.05)
        group = group_of(first, job["id"])
        c.cancel(job["id"])
        first.kill()
    assert live_members(group)  # SIGTERM was ignored and nobody is left to SIGKILL
    with ServerProcess(tmp_path, *args, port=first.port, token=first.token) as second:
        done = wait_for_state(second.client(), job["id"], ("cancelled", "failed"), timeout_s=30)
        assert done["state"] == "cancelled"
        assert second.client().cluster()["gpus_free"] == 1
    assert live_members(group) == []


def test_a_new_database_never_meets_old_job_files(tmp_path):
    """Job ids restart at 1 with a new database; its job 1 must not run or show the old one's."""
    with ServerProcess(tmp_path, "--AIGridApp.simulated_gpus=1") as first:
        c = first.client()
        old = c.submit({"code": "print('OLD')", "replicas": 2})
        wait_for_state(c, old["id"], ("succeeded",))
    (first.state_dir / "aigrid.sqlite").unlink()
    with ServerProcess(tmp_path, "--AIGridApp.simulated_gpus=1") as second:
        c = second.client()
        new = c.submit({"code": "print('NEW')", "replicas": 2})
        assert new["id"] == old["id"]
        wait_for_state(c, new["id"], ("succeeded",))
        assert [e["line"] for e in c.logs(new["id"])] == ["NEW", "NEW"]
