"""What the Ray executor runs on the nodes: the actor of one replica, and two small probes.

Ray imports this module on the node (the actor's class and the probes are its module-level
names), so it needs nothing of the master beyond what a node has: this package.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from .scripts import runner_argv, write_script
from .stopping import StopLadder

#: A node's scratch folder, from its own environment (set it where the Ray node starts).
SCRATCH_ENV = "AIGRID_NODE_SCRATCH"


def node_name(node_id: str) -> str:
    """``ray-<first 12 hex of the node id>``: a Ray node's name in the inventory."""
    return f"ray-{node_id[:12]}"


class ReplicaActor:
    """The actor that runs one replica's process on its node (Ray makes it a remote class).

    Its methods run on the actor's threads (``max_concurrency``), so a ``wait`` blocked on the
    process never holds up ``logs`` or ``stop``; and no method blocks for a grace period.
    """

    def __init__(self) -> None:
        self.popen: subprocess.Popen | None = None
        self.out = self.err = ""
        self.code: int | None = None
        self.stopped = False
        self.lock = threading.Lock()
        #: Keyed by the process's pid. The actor outlives the master, so a restarted master
        #: that asks again to stop finds the first deadline here, kept.
        self.stops: StopLadder[int] = StopLadder()

    def start(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        logs: str,
        script: tuple[str, int, str] | None = None,
    ) -> dict[str, Any]:
        """Start the process; ``script`` (folder, attempt, code) is written on this node
        first and run with ``argv`` as its arguments: the job's code travels with the call,
        not through a shared filesystem."""
        import sys

        import ray

        if script is not None:
            folder, attempt, code = script
            argv = runner_argv(sys.executable, write_script(folder, attempt, code), argv)
        Path(cwd).mkdir(parents=True, exist_ok=True)
        Path(logs).mkdir(parents=True, exist_ok=True)
        self.out, self.err = str(Path(logs) / "stdout"), str(Path(logs) / "stderr")
        node_id = ray.get_runtime_context().get_node_id()
        with self.lock, open(self.out, "wb") as out, open(self.err, "wb") as err:
            if self.stopped:  # stopped before it started: it never does
                return {"pid": None, "node_id": node_id}
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        return {"pid": self.popen.pid, "node_id": node_id}

    def wait(self) -> int:
        """Block until the process ends; its exit code (128 + n when killed by signal n)."""
        if self.popen is None:  # stopped before it started
            return 128 + signal.SIGTERM
        code = self.popen.wait()
        self.code = 128 - code if code < 0 else code
        self.stops.forget(self.popen.pid)
        with contextlib.suppress(OSError):  # what it forked dies with it
            os.killpg(self.popen.pid, signal.SIGKILL)
        return self.code

    def logs(self, out_from: int, err_from: int, most: int) -> tuple[bytes, bytes]:
        def read(path: str, start: int) -> bytes:
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    return f.read(most)
            except OSError:
                return b""

        return read(self.out, out_from), read(self.err, err_from)

    def stop(self, grace_s: float) -> None:
        """SIGTERM the process group now, SIGKILL once ``grace_s`` is over (unless it ended).

        Returns at once: a timer thread sends the SIGKILL. Asking again changes nothing."""
        with self.lock:
            self.stopped = True
            popen = self.popen
        if popen is None or self.code is not None or popen.poll() is not None:
            return
        if self.stops.ask(popen.pid, grace_s):
            with contextlib.suppress(OSError):
                os.killpg(popen.pid, signal.SIGTERM)
            self._kill_after(grace_s)

    def _kill_after(self, delay_s: float) -> None:
        timer = threading.Timer(delay_s, self._kill_if_due)
        timer.daemon = True
        timer.start()

    def _kill_if_due(self) -> None:
        popen = self.popen
        if popen is None:
            return
        left = self.stops.seconds_left(popen.pid)
        if left is None:  # it ended meanwhile (wait() forgot it)
            return
        if left > 0:  # the timer woke early
            self._kill_after(left)
            return
        with contextlib.suppress(OSError):
            os.killpg(popen.pid, signal.SIGKILL)


def probe_node() -> dict[str, Any]:
    """What a node has that Ray does not say: its address, its NVML GPUs, and its scratch
    folder (``$AIGRID_NODE_SCRATCH`` in the node's environment, else ``<tmp>/aigrid``)."""
    import tempfile

    import ray

    from ..inventory import nvml_gpus

    scratch = os.environ.get(SCRATCH_ENV) or os.path.join(tempfile.gettempdir(), "aigrid")
    return {
        "ip": ray.util.get_node_ip_address(),
        "gpus": [vars(g) for g in nvml_gpus()],
        "scratch": os.path.abspath(scratch),
    }


def free_port_on_node() -> tuple[str, int]:
    """This node's address and a port free on it (for rank 0's process group store)."""
    import ray

    from .local import free_port

    ip = ray.util.get_node_ip_address()
    return ip, free_port(ip)
