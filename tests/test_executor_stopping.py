"""The stop ladder (SIGTERM, grace, SIGKILL) that every executor shares, and the local
executor climbing it with real processes."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import psutil
import pytest

from jupyter_aigrid.server.executors.local import LocalExecutor
from jupyter_aigrid.server.executors.stopping import StopLadder, Stopping
from jupyter_aigrid.server.model import LaunchRequest, ReplicaExit, ReplicaHandle


class Clock:
    """Seconds that move only when the test says (the ladder's own clock is monotonic)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_ask_sends_sigterm_and_sets_the_deadline():
    clock = Clock()
    ladder: StopLadder[str] = StopLadder(clock)
    assert ladder.ask("a", 5.0) is True
    assert ladder.get("a") == Stopping(terminated_at=100.0, kill_at=105.0)
    assert "a" in ladder and len(ladder) == 1
    assert ladder.due() == []
    assert ladder.seconds_left("a") == 5.0
    clock.now = 104.9
    assert ladder.due() == []
    clock.now = 105.0
    assert ladder.due() == ["a"]
    assert ladder.seconds_left("a") == 0.0


def test_asking_again_keeps_the_first_deadline():
    """A restarted master asks again to stop what is stopping: neither a longer nor a
    shorter grace period moves the deadline, and no second SIGTERM is asked for."""
    clock = Clock()
    ladder: StopLadder[str] = StopLadder(clock)
    ladder.ask("a", 10.0)
    clock.now = 103.0
    assert ladder.ask("a", 600.0) is False
    assert ladder.ask("a", 0.0) is False
    assert ladder.get("a") == Stopping(terminated_at=100.0, kill_at=110.0)
    clock.now = 110.0
    assert ladder.due() == ["a"]


def test_a_replica_stays_due_until_it_is_forgotten():
    clock = Clock()
    ladder: StopLadder[int] = StopLadder(clock)
    ladder.ask(1, 1.0)
    ladder.ask(2, 3.0)
    clock.now = 102.0
    assert ladder.due() == [1]
    assert ladder.due() == [1]  # SIGKILL again at the next look, if it did not land
    assert ladder.due(now=103.0) == [1, 2]
    ladder.forget(1)
    ladder.forget(7)  # never stopping: nothing to do
    assert ladder.due(now=103.0) == [2]
    assert ladder.get(1) is None and ladder.seconds_left(1) is None
    # A forgotten replica that is stopped again starts a new ladder.
    assert ladder.ask(1, 1.0) is True
    assert ladder.get(1) == Stopping(terminated_at=102.0, kill_at=103.0)


@pytest.mark.parametrize("grace", [-1.0, math.inf, math.nan])
def test_a_grace_period_must_be_finite_and_not_negative(grace):
    ladder: StopLadder[str] = StopLadder()
    with pytest.raises(ValueError, match="grace_s must be a finite number of seconds >= 0"):
        ladder.ask("a", grace)
    assert "a" not in ladder


@pytest.mark.parametrize("grace", ["5", None, True])
def test_a_grace_period_must_be_a_number(grace):
    with pytest.raises(TypeError, match="grace_s must be a number of seconds"):
        StopLadder().ask("a", grace)


#: Prints when SIGTERM arrives and goes on: only SIGKILL ends it.
STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, lambda *a: print("got SIGTERM", flush=True))
print("up", flush=True)
while True:
    time.sleep(0.05)
"""


def launch(executor: LocalExecutor, tmp_path: Path, rank: int, code: str) -> ReplicaHandle:
    logs = tmp_path / "logs"
    request = LaunchRequest(
        replica_id=f"1.0.{rank}", job_id="1", attempt=0, rank=rank, node="node-0",
        job_key="t-1", stdout_path=str(logs / f"rank-{rank}.stdout"),
        stderr_path=str(logs / f"rank-{rank}.stderr"), exit_path=str(logs / f"rank-{rank}.exit"),
    )  # fmt: skip
    return executor.launch(request, code, [], None)


def wait_for_line(path: Path, line: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while line not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{path} never said {line!r}"
        time.sleep(0.05)


def poll_until(executor: LocalExecutor, replica_id: str, timeout_s: float = 30.0) -> ReplicaExit:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for exit_ in executor.poll():
            if exit_.replica_id == replica_id:
                return exit_
        time.sleep(0.05)
    raise AssertionError(f"{replica_id} never ended")


def test_the_local_executor_terms_then_kills_and_a_second_ask_moves_no_deadline(tmp_path):
    executor = LocalExecutor(tmp_path, nodes=1, simulated_gpus=1, python=sys.executable)
    short, long = launch(executor, tmp_path, 0, STUBBORN), launch(executor, tmp_path, 1, STUBBORN)
    for rank in (0, 1):
        wait_for_line(tmp_path / "logs" / f"rank-{rank}.stdout", "up")
    # The short one asked again with a long grace, the long one again with none: if a
    # second ask moved a deadline, the long one would be killed first, or the short one never.
    executor.stop(short, 0.5)
    executor.stop(long, 600.0)
    executor.stop(short, 600.0)
    executor.stop(long, 0.0)
    assert poll_until(executor, short.replica_id) == ReplicaExit(short.replica_id, 137)
    assert psutil.pid_exists(long.pid) and psutil.Process(long.pid).status() != "zombie"
    assert executor.poll() == []
    for rank in (0, 1):  # both had their SIGTERM, once, before anything else
        out = (tmp_path / "logs" / f"rank-{rank}.stdout").read_text()
        assert out.count("got SIGTERM") == 1, out
    psutil.Process(long.pid).kill()  # the test's own clean-up (its grace is 600 s)
    assert poll_until(executor, long.replica_id).replica_id == long.replica_id
    executor.close()


def test_a_replica_that_honours_sigterm_ends_with_its_own_status(tmp_path):
    executor = LocalExecutor(tmp_path, nodes=1, simulated_gpus=1, python=sys.executable)
    code = "import time\nprint('up', flush=True)\ntime.sleep(600)"
    handle = launch(executor, tmp_path, 0, code)
    wait_for_line(tmp_path / "logs" / "rank-0.stdout", "up")
    executor.stop(handle, 600.0)
    assert poll_until(executor, handle.replica_id) == ReplicaExit(handle.replica_id, 143)
    # Ended: forgotten by the ladder, so nothing is left due for a pid that may be reused.
    assert handle.replica_id not in executor._stops
    executor.close()
