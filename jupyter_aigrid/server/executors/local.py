"""The embedded default: replicas are local subprocesses, on one or more logical nodes.

Each replica runs under a tiny ``sh`` wrapper in its own session (so its process group can be
signalled as a whole). The wrapper records its pid before starting the job and the job's exit
status after it, in files beside the logs. That is what lets a restarted master re-adopt
replicas that outlived it, and learn the exit code of those that ended meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..inventory import nvml_gpus, simulated_gpus
from ..model import Gpu, LaunchRequest, Node, ReplicaExit, ReplicaHandle
from .base import Capabilities, Executor, ExecutorError
from .scripts import runner_argv, write_script
from .stopping import StopLadder

log = logging.getLogger(__name__)

#: $0 is the exit-status file; the job's argv follows. ``trap : TERM INT`` keeps the wrapper
#: alive through a group-wide SIGTERM so it can record the job's status; a trap with a
#: handler (unlike an ignored signal) is reset to the default in the job itself. The wrapper
#: shares the job's environment, so it depends on nothing in it: ``echo`` and ``printf`` are
#: built in, and ``command -p`` finds ``mv`` on the system's default PATH, not the job's.
_WRAPPER = (
    'echo $$ > "$0.pid"; trap : TERM INT; "$@"; code=$?; '
    'printf %s "$code" > "$0.tmp" && command -p mv -f "$0.tmp" "$0"'
)
DEFAULT_SIMULATED_GPUS = 4


@dataclass
class _Process:
    handle: ReplicaHandle
    popen: subprocess.Popen | None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def read_exit_code(exit_path: str) -> int | None:
    try:
        text = Path(exit_path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.lstrip("-").isdigit() else None


def _same_process(pid: int, pid_start: float | None, exit_path: str) -> bool:
    """Is ``pid`` still our wrapper (not a recycled pid), and not a zombie?"""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if pid_start is not None and abs(proc.create_time() - pid_start) > 0.05:
            return False
        return exit_path in proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_leftovers(pgid: int, exit_path: str) -> None:
    """SIGKILL the process group ``pgid`` if it still holds a process of this replica (its
    environment names the replica's attempt folder, or its command line the exit file): a
    group id may have been reused by someone else's processes."""
    attempt_dir = str(Path(exit_path).parent)
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
            env = proc.environ()
            result_dir = env.get("AIGRID_RESULT_DIR", "")
            if os.path.dirname(result_dir) == attempt_dir or exit_path in proc.cmdline():
                log.warning("AI Grid: killing leftovers of a lost replica (group %d)", pgid)
                _killpg(pgid, signal.SIGKILL)
                return
        except (OSError, psutil.Error):
            continue


class LocalExecutor(Executor):
    """Replicas as processes on this machine, spread over ``nodes`` logical nodes."""

    name = "local"
    #: Processes start at once and see their checkpoint folder: a migrating gang may start
    #: at the destination ahead of its checkpoint; a SIGUSR1 wakes a checkpoint listener.
    capabilities = Capabilities(prestart=True, checkpoint_signal=True)

    def __init__(
        self,
        root: str | Path,
        nodes: int = 1,
        simulated_gpus: int | None = None,
        cpus_per_node: int | None = None,
        memory_mb_per_node: int | None = None,
        python: str = sys.executable,
        gpu_models: dict[str, str] | None = None,
    ) -> None:
        if nodes < 1:
            msg = f"local_nodes must be at least 1, got {nodes}"
            raise ValueError(msg)
        super().__init__()
        self.root = Path(root)
        self.python = python
        unknown = sorted(set(gpu_models or {}) - {f"node-{i}" for i in range(nodes)})
        if unknown:
            msg = f"gpu_models names no local node: {', '.join(unknown)} (nodes are node-0..)"
            raise ValueError(msg)
        self._gpu_models = dict(gpu_models or {})
        self._nodes = self._declare(nodes, simulated_gpus, cpus_per_node, memory_mb_per_node)
        self._by_name = {n.name: n for n in self._nodes}
        self._live: dict[str, _Process] = {}
        self._exits: list[ReplicaExit] = []
        self._stops: StopLadder[str] = StopLadder()

    def _declare(
        self, count: int, simulated: int | None, cpus: int | None, memory_mb: int | None
    ) -> list[Node]:
        real = nvml_gpus() if simulated is None else []
        if simulated is None and not real:
            simulated = DEFAULT_SIMULATED_GPUS
        memory = memory_mb or int(psutil.virtual_memory().total // (1024 * 1024) // count)
        nodes = []
        for i in range(count):
            name = f"node-{i}"
            if real:
                share = len(real) // count + (1 if i < len(real) % count else 0)
                start = sum(
                    len(real) // count + (1 if j < len(real) % count else 0) for j in range(i)
                )
                gpus: list[Gpu] = real[start : start + share]
            else:
                gpus = simulated_gpus(name, simulated or 0, model=self._gpu_models.get(name))
            scratch = self.root / "nodes" / name
            scratch.mkdir(parents=True, exist_ok=True)
            nodes.append(
                Node(
                    name=name,
                    gpus=tuple(gpus),
                    cpus=cpus or max(os.cpu_count() or 1, len(gpus)),
                    memory_mb=memory,
                    scratch=str(scratch),
                    labels=(("executor", "local"),),
                )
            )
        return nodes

    def nodes(self) -> list[Node]:
        return list(self._nodes)

    def rendezvous(self, node: str) -> tuple[str, int]:
        return "127.0.0.1", free_port()

    def launch(
        self, request: LaunchRequest, code: str | None, args: list[str], command: list[str] | None
    ) -> ReplicaHandle:
        node = self._by_name.get(request.node)
        if node is None:
            msg = f"no node named {request.node!r} on the local executor"
            raise ExecutorError(msg)
        job_dir = Path(node.scratch) / "jobs" / (request.job_key or request.job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        if code is not None:
            script = write_script(job_dir, request.attempt, code)
            argv = runner_argv(self.python, script, args)
        else:
            argv = list(command or [])
        workdir = Path(request.workdir) if request.workdir else job_dir / f"rank-{request.rank}"
        if request.workdir and not workdir.is_dir():
            msg = f"workdir {request.workdir!r} is not a directory on {node.name}"
            raise ExecutorError(msg)
        workdir.mkdir(parents=True, exist_ok=True)
        env = {**request.env, "AIGRID_SCRATCH": str(job_dir)}
        for path in (request.stdout_path, request.stderr_path, request.exit_path):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Nothing of an earlier process may pass for this one's status.
        for stale in (request.exit_path, request.exit_path + ".pid"):
            Path(stale).unlink(missing_ok=True)
        with open(request.stdout_path, "wb") as out, open(request.stderr_path, "wb") as err:
            try:
                popen = subprocess.Popen(
                    ["/bin/sh", "-c", _WRAPPER, request.exit_path, *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=str(workdir),
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as e:
                msg = f"could not start rank {request.rank} on {node.name}: {e}"
                raise ExecutorError(msg) from e
        try:
            pid_start = psutil.Process(popen.pid).create_time()
        except psutil.NoSuchProcess:
            pid_start = None
        handle = ReplicaHandle(request.replica_id, popen.pid, pid_start, request.exit_path)
        self._live[request.replica_id] = _Process(handle, popen)
        return handle

    def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        proc = self._live.get(handle.replica_id)
        if proc is None or proc.handle.pid is None:
            return
        if self._stops.ask(handle.replica_id, grace_s):
            _killpg(proc.handle.pid, signal.SIGTERM)

    def signal_checkpoint(self, handle: ReplicaHandle, pid: int) -> None:
        """Nudge the replica's process ``pid`` (the one that listens) with SIGUSR1; only a
        process of the replica's own group is signalled."""
        proc = self._live.get(handle.replica_id)
        if proc is None or proc.handle.pid is None:
            return
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == proc.handle.pid:
                os.kill(pid, signal.SIGUSR1)

    def poll(self) -> list[ReplicaExit]:
        due = set(self._stops.due())
        for replica_id, proc in list(self._live.items()):
            handle = proc.handle
            if proc.popen is not None:
                returncode = proc.popen.poll()
                ended = returncode is not None
            else:
                returncode = None
                ended = not _same_process(handle.pid or -1, handle.pid_start, handle.exit_path)
            if ended:
                code = read_exit_code(handle.exit_path)
                if code is None and returncode is not None:
                    # The wrapper itself was killed (SIGKILL): report the signal shell-style.
                    code = 128 - returncode if returncode < 0 else returncode
                # Leftovers of the job (forked workers) die with the group.
                _killpg(handle.pid or -1, signal.SIGKILL)
                del self._live[replica_id]
                self._stops.forget(replica_id)
                self._exits.append(ReplicaExit(replica_id, code))
            elif replica_id in due:
                _killpg(handle.pid or -1, signal.SIGKILL)
        exits, self._exits = self._exits, []
        return exits

    def reconcile(self, known: list[ReplicaHandle]) -> list[str]:
        adopted = []
        for handle in known:
            if handle.replica_id in self._live:
                adopted.append(handle.replica_id)
                continue
            pid, pid_start = handle.pid, handle.pid_start
            if pid is None:
                # The master died between the launch and recording the pid: the wrapper
                # wrote it down for us.
                with contextlib.suppress(OSError, ValueError):
                    pid = int(Path(handle.exit_path + ".pid").read_text().strip())
                    pid_start = None
            code = read_exit_code(handle.exit_path)
            if code is None and pid is not None and _same_process(pid, pid_start, handle.exit_path):
                found = ReplicaHandle(handle.replica_id, pid, pid_start, handle.exit_path)
                self._live[handle.replica_id] = _Process(found, None)
                adopted.append(handle.replica_id)
                continue
            if pid is not None:
                # The wrapper is gone; the job it ran (same process group) may not be.
                _kill_leftovers(pid, handle.exit_path)
            never = pid is None and code is None
            self._exits.append(ReplicaExit(handle.replica_id, code, never_started=never))
        return adopted

    def close(self) -> None:
        # Reap finished children so no zombie outlives us; running replicas keep running.
        for proc in self._live.values():
            if proc.popen is not None:
                proc.popen.poll()
