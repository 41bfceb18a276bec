"""Replicas as containers on a Docker host, one container per replica, through the docker SDK.

The Docker host (``c.AIGridApp.docker_base_url``; default: the environment's ``DOCKER_HOST``
or the local socket) is one node. What each container is (hardened, its GPUs by UUID, only
the paths the master hands it, labelled so a restarted master finds it again) is built in
:mod:`.docker_spec`. Creating a container is a slow start, done in the background. Its
stdout and stderr are streamed into the rank's log files as they come, and it is removed
once its exit code is recorded (in the rank's exit file, atomically).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ...safefs import write_atomic
from ..inventory import nvml_gpus, simulated_gpus
from ..model import LaunchRequest, Node, ReplicaExit, ReplicaHandle
from .base import Capabilities, Executor, ExecutorError
from .docker_logs import copy_remaining_logs, drain, follow_logs
from .docker_spec import (
    DEFAULT_PIDS_LIMIT,
    DEFAULT_SHM_MB,
    ContainerSettings,
    container_name,
    container_options,
    container_user,
    master_label,
    real_dir,
    safe_name,
)
from .local import free_port, read_exit_code
from .scripts import runner_argv, write_script
from .stopping import StopLadder

log = logging.getLogger(__name__)

DEFAULT_SIMULATED_GPUS = 4
#: The exit code of a replica whose container could not be created or started (as docker run).
START_FAILED = 125
#: How long poll() waits for a finished container's last log lines.
_LOG_DRAIN_S = 10.0


@dataclass
class _Container:
    handle: ReplicaHandle
    name: str
    stdout_path: str
    stderr_path: str
    container_id: str | None = None
    #: The grace period of a stop asked for (None: not asked), kept until it can be sent.
    stop_grace_s: float | None = None
    streams: list[threading.Thread] = field(default_factory=list)
    #: Set once the background start has ended, with ``start_error`` if it failed.
    started: threading.Event = field(default_factory=threading.Event)
    start_error: str | None = None
    #: The master has been told it started (exits are reported only after that).
    reported: bool = False
    #: The container has started (the worker's ``start`` returned, or it was adopted).
    #: Read and written with ``stop_grace_s`` under ``lock``: a stop racing the start is
    #: never lost, whichever comes first.
    running: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class DockerExecutor(Executor):
    """Every replica in its own container on one Docker host."""

    name = "docker"
    #: Replicas do not inherit the server's environment: they get the job's, and the image's;
    #: creating a container is a slow start, finished in the background.
    capabilities = Capabilities(slow_starts=True, host_env=False)

    def __init__(
        self,
        root: str | Path,
        base_url: str = "",
        simulated_gpus: int | None = None,
        user: str = "",
        network: str = "bridge",
        pids_limit: int = DEFAULT_PIDS_LIMIT,
        shm_mb: int = DEFAULT_SHM_MB,
        memory_mb: int = 0,
        client: Any = None,
    ) -> None:
        import docker

        super().__init__()
        self.user = container_user(user)
        self.root = Path(os.path.abspath(root))
        self.base_url = (
            base_url or os.environ.get("DOCKER_HOST", "") or "unix:///var/run/docker.sock"
        )
        try:
            self.client = client or docker.DockerClient(base_url=self.base_url, timeout=60)
            info = self.client.info()
        except Exception as e:
            msg = f"cannot reach the Docker engine at {self.base_url}: {e}"
            raise ExecutorError(msg) from e
        self.network = network
        self.pids_limit = pids_limit
        self.shm_mb = shm_mb
        #: Containers of this master carry this label (several masters may share an engine).
        self.master_id = master_label(self.root)
        self._node = self._declare(info, simulated_gpus)
        #: A container's memory limit when its job names none: most of the host, so that a
        #: runaway job meets the OOM killer in its own container, not the master.
        self.memory_mb = memory_mb or max(256, self._node.memory_mb * 9 // 10)
        self.settings = ContainerSettings(
            self.user, self.master_id, network, pids_limit, shm_mb, self.memory_mb
        )
        self._live: dict[str, _Container] = {}
        self._exits: list[ReplicaExit] = []
        self._stops: StopLadder[str] = StopLadder()
        #: Container creation (and pulls) and removal: slow, so never on the master's loop.
        self._workers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="aigrid-docker")

    # -- inventory --------------------------------------------------------------------------

    def _declare(self, info: dict[str, Any], simulated: int | None) -> Node:
        name = safe_name(f"docker-{info.get('Name') or 'host'}")
        # NVML sees this machine's GPUs: they are the Docker host's only if it is local.
        local = self.base_url.startswith("unix://")
        real = nvml_gpus() if simulated is None and local else []
        count = DEFAULT_SIMULATED_GPUS if simulated is None else simulated
        gpus = tuple(real) if real else tuple(simulated_gpus(name, count))
        scratch = self.root / "nodes" / name
        scratch.mkdir(parents=True, exist_ok=True)
        return Node(
            name=name,
            gpus=gpus,
            cpus=max(int(info.get("NCPU") or 1), len(gpus)),
            memory_mb=int(info.get("MemTotal") or 0) // (1024 * 1024),
            scratch=str(scratch),
            labels=(("executor", "docker"), ("docker_host", self.base_url)),
        )

    def nodes(self) -> list[Node]:
        return [self._node]

    def rendezvous(self, node: str) -> tuple[str, int]:
        # Gangs use the host's network, so rank 0's store listens on the Docker host.
        if self.base_url.startswith(("unix://", "npipe://")):
            return "127.0.0.1", free_port()
        # A remote engine: its host's address; the port is one free here, and is assumed
        # free there too (the master cannot probe another machine's ports).
        host = urlsplit(self.base_url).hostname or "127.0.0.1"
        return host, free_port()

    # -- launching --------------------------------------------------------------------------

    def launch(
        self, request: LaunchRequest, code: str | None, args: list[str], command: list[str] | None
    ) -> ReplicaHandle:
        if request.node != self._node.name:
            msg = f"no node named {request.node!r} on the Docker executor"
            raise ExecutorError(msg)
        if not request.image:
            msg = "the job has no image: name one with 'image' or add one to the catalog"
            raise ExecutorError(msg)
        key = request.job_key or request.job_id
        # Containers write in job_dir (their working directories), so the master never
        # writes there itself, only creates directories, refusing any link a container
        # may have planted; the code lives where no container can write.
        job_dir = Path(self._node.scratch) / "jobs" / key
        for path in (job_dir, job_dir / f"rank-{request.rank}", *map(Path, request.read_write)):
            real_dir(self.root, path, self.user)
        script = None
        if code is not None:
            script = write_script(self.root / "code" / key, request.attempt, code)
            argv = runner_argv("python", script, args)
        else:
            argv = list(command or [])
        options = container_options(self.settings, request, argv, job_dir, script)
        for path in (request.stdout_path, request.stderr_path, request.exit_path):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(request.exit_path).unlink(missing_ok=True)
        name = container_name(request)
        handle = ReplicaHandle(request.replica_id, None, None, request.exit_path)
        entry = _Container(handle, name, request.stdout_path, request.stderr_path)
        self._live[request.replica_id] = entry
        # Creating a container copies its image's files (and may pull it): seconds to
        # minutes. That happens in the background; poll() reports a start that failed.
        self._workers.submit(self._start, entry, request.image, options)
        return handle

    def _start(self, entry: _Container, image: str, options: dict[str, Any]) -> None:
        import docker

        why = f"image {image!r} is not on the Docker host and could not be pulled"
        container = None
        try:
            try:
                self.client.images.get(image)
            except docker.errors.ImageNotFound:
                self.client.images.pull(image)
            why = "the container could not be started"
            self._remove_stale(entry.name)
            container = self.client.containers.create(image, **options)
            entry.container_id = container.id
            container.start()
        except Exception as e:  # every failure is the job's to see, in its stderr
            detail = getattr(e, "explanation", None) or str(e)
            if container is not None:  # created, not started: nothing may be left behind
                with contextlib.suppress(Exception):
                    container.remove(force=True, v=True)
            entry.start_error = f"{why}: {detail}"
            with contextlib.suppress(OSError), open(entry.stderr_path, "ab") as err:
                err.write(f"AI Grid: {entry.start_error}\n".encode())
        else:
            entry.streams = follow_logs(container, entry.name, entry.stdout_path, entry.stderr_path)
            with entry.lock:
                entry.running = True
                grace_s = entry.stop_grace_s
            if grace_s is not None:  # stopped while it was being created: now it can take
                self._terminate(entry, grace_s)  # a signal, and its grace period begins
        finally:
            entry.started.set()

    def _remove_stale(self, name: str) -> None:
        """A container of that name left by a crash before it was recorded: ours, so remove."""
        import docker

        try:
            old = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        if old.labels.get("aigrid.master") == self.master_id:
            old.remove(force=True, v=True)

    # -- stopping and watching --------------------------------------------------------------

    def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        entry = self._live.get(handle.replica_id)
        if entry is None:
            return
        with entry.lock:
            if entry.stop_grace_s is not None:  # asked again: the first deadline holds
                return
            entry.stop_grace_s = grace_s
            running = entry.running
        if running:  # else the start signals it once the container runs
            self._terminate(entry, grace_s)

    def _terminate(self, entry: _Container, grace_s: float) -> None:
        """SIGTERM the container, once: its SIGKILL is due ``grace_s`` from now."""
        if self._stops.ask(entry.handle.replica_id, grace_s):
            self._signal(entry, "SIGTERM")

    def _signal(self, entry: _Container, sig: str) -> None:
        import docker

        target = entry.container_id or entry.name
        with contextlib.suppress(docker.errors.DockerException):
            self.client.api.kill(target, signal=sig)

    def _ours(self) -> dict[str, Any]:
        """This master's containers, by replica id (one API call)."""
        found = self.client.containers.list(
            all=True, sparse=True, filters={"label": f"aigrid.master={self.master_id}"}
        )
        return {c.attrs.get("Labels", {}).get("aigrid.replica", ""): c for c in found}

    def started(self) -> list[str]:
        """Replicas whose containers have started since the last call."""
        out = []
        for replica_id, entry in self._live.items():
            if entry.started.is_set() and entry.start_error is None and not entry.reported:
                entry.reported = True
                out.append(replica_id)
        return out

    def poll(self) -> list[ReplicaExit]:
        # Only entries whose start had ended (and was reported) before the listing can be
        # judged by it.
        ready = [
            (r, e)
            for r, e in self._live.items()
            if e.started.is_set() and (e.reported or e.start_error is not None)
        ]
        if ready:
            try:
                containers = self._ours()
            except Exception as e:
                log.warning("AI Grid: cannot list containers on %s: %s", self.base_url, e)
                containers = None
            if containers is not None:
                due = set(self._stops.due())
                for replica_id, entry in ready:
                    if entry.start_error is not None:
                        write_atomic(Path(entry.handle.exit_path), str(START_FAILED).encode())
                        del self._live[replica_id]
                        self._stops.forget(replica_id)
                        self._exits.append(ReplicaExit(replica_id, START_FAILED))
                        continue
                    found = containers.get(replica_id)
                    state = found.attrs.get("State") if found is not None else None
                    if found is None or state in ("exited", "dead"):
                        self._finish(replica_id, entry, found)
                    elif replica_id in due:
                        self._signal(entry, "SIGKILL")
        exits, self._exits = self._exits, []
        return exits

    def _finish(self, replica_id: str, entry: _Container, container: Any) -> None:
        """Record the exit code and the last log lines; the container is removed after."""
        import docker

        code = read_exit_code(entry.handle.exit_path)
        if container is not None:
            try:
                state = self.client.api.inspect_container(container.id)["State"]
            except docker.errors.NotFound:
                state = None
            except Exception as e:
                log.warning("AI Grid: cannot inspect the container of %s: %s", replica_id, e)
                return
            if state is not None:
                code = int(state.get("ExitCode", 0))
                if state.get("OOMKilled"):
                    log.warning("AI Grid: replica %s was killed: out of memory", replica_id)
                    with contextlib.suppress(OSError), open(entry.stderr_path, "ab") as err:
                        err.write(b"AI Grid: killed: out of memory (memory_mb_per_replica)\n")
            if not entry.streams:  # it ended while no master was following it
                copy_remaining_logs(container, entry.stdout_path, entry.stderr_path)
            if code is not None:
                write_atomic(Path(entry.handle.exit_path), str(code).encode())
            drain(entry.streams, _LOG_DRAIN_S)
            # Removing copies of an image's files takes a while: not on the master's loop.
            self._workers.submit(_remove, container)
        del self._live[replica_id]
        self._stops.forget(replica_id)
        self._exits.append(ReplicaExit(replica_id, code))

    def reconcile(self, known: list[ReplicaHandle]) -> list[str]:
        try:
            containers = self._ours()
        except Exception as e:
            msg = f"cannot list containers on {self.base_url}: {e}"
            raise ExecutorError(msg) from e
        adopted = []
        wanted = set()
        for handle in known:
            wanted.add(handle.replica_id)
            if handle.replica_id in self._live:
                adopted.append(handle.replica_id)
                continue
            found = containers.get(handle.replica_id)
            names = found.attrs.get("Names") or [] if found is not None else []
            entry = _Container(
                handle,
                names[0].lstrip("/") if names else "",
                str(Path(handle.exit_path).with_suffix(".stdout")),
                str(Path(handle.exit_path).with_suffix(".stderr")),
                container_id=found.id if found is not None else None,
            )
            entry.started.set()
            state = found.attrs.get("State") if found is not None else None
            if state in ("running", "paused", "restarting", "removing"):
                entry.running = True
                entry.streams = follow_logs(
                    found, entry.name, entry.stdout_path, entry.stderr_path, resume=True
                )
                self._live[handle.replica_id] = entry
                adopted.append(handle.replica_id)
            elif state == "created" or (found is None and read_exit_code(handle.exit_path) is None):
                # The master died before starting it (while creating it, or before that): it
                # never ran, which is no failure of the job's.
                if found is not None:
                    _remove(found)
                self._exits.append(ReplicaExit(handle.replica_id, None, never_started=True))
            else:
                self._live[handle.replica_id] = entry
                self._finish(handle.replica_id, entry, found)
        # Containers of replicas the master no longer runs (it died before recording their
        # end): nothing will ever ask for them again.
        for replica_id, container in containers.items():
            if replica_id not in wanted and replica_id not in self._live:
                self._workers.submit(_remove, container)
        return adopted

    def close(self) -> None:
        # Containers being created are left to finish; a restarted master adopts them.
        self._workers.shutdown(wait=False, cancel_futures=False)
        with contextlib.suppress(Exception):
            self.client.close()


def _remove(container: Any) -> None:
    with contextlib.suppress(Exception):
        container.remove(force=True, v=True)
