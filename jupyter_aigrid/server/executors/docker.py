"""Replicas as containers on a Docker host, one container per replica, through the docker SDK.

The Docker host (``c.AIGridApp.docker_base_url``; default: the environment's ``DOCKER_HOST``
or the local socket) is one node. Every container:

- runs the job's image (from the catalog, or the one the job named) as a non-root user, with
  every capability dropped, ``no-new-privileges``, a read-only root filesystem (a tmpfs at
  ``/tmp``), an init process, and limits on pids, memory and CPU. Nothing a job spec says can
  make it privileged, add a mount or a device, or change these;
- gets exactly the GPUs it was placed on, by UUID, through a DeviceRequest (never ``all``);
  simulated GPUs get none;
- sees only the paths the master hands it, bind-mounted at the same paths as on the host:
  its job's scratch directory (code, working directories) and results and checkpoint
  directories read-write; pushed inputs, datasets and the MPI hostfile read-only. Its
  environment is the job's alone: nothing of the server's leaks in;
- joins the network its template needs: the host's for gangs (NCCL and gloo talk across
  containers), the executor's default network otherwise;
- carries the labels ``aigrid.master`` (this master), ``aigrid.job_id``, ``aigrid.rank``,
  ``aigrid.attempt`` and ``aigrid.replica``, and a name unique per attempt. A restarted master
  finds its containers again by label;
- has its stdout and stderr streamed into the rank's log files as they come, and is removed
  once its exit code is recorded (in the rank's exit file, atomically).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...durable import write_atomic
from ..inventory import nvml_gpus, simulated_gpus
from ..model import LaunchRequest, Node, ReplicaExit, ReplicaHandle
from .base import ExecutorError
from .local import free_port, read_exit_code

log = logging.getLogger(__name__)

DEFAULT_SIMULATED_GPUS = 4
#: Containers' limits unless the job asks for more (memory) or the executor is told otherwise.
DEFAULT_PIDS_LIMIT = 4096
DEFAULT_SHM_MB = 1024
#: The exit code of a replica whose container could not be created or started (as docker run).
START_FAILED = 125
#: How long poll() waits for a finished container's last log lines.
_LOG_DRAIN_S = 10.0
_NAME = re.compile(r"[^a-zA-Z0-9_.-]")


@dataclass
class _Container:
    handle: ReplicaHandle
    name: str
    stdout_path: str
    stderr_path: str
    kill_at: float | None = None
    streams: list[threading.Thread] = field(default_factory=list)
    #: Set once the background start has ended, with ``start_error`` if it failed.
    started: threading.Event = field(default_factory=threading.Event)
    start_error: str | None = None
    container_id: str | None = None


def master_label(state_dir: str | Path) -> str:
    """The ``aigrid.master`` label of the containers of the master keeping ``state_dir``."""
    return hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:16]


def container_name(request: LaunchRequest) -> str:
    """``aigrid-<job key>-a<attempt>-r<rank>``: unique per attempt and rank."""
    key = request.job_key or request.job_id
    return _NAME.sub("-", f"aigrid-{key}-a{request.attempt}-r{request.rank}")


class DockerExecutor:
    """Every replica in its own container on one Docker host."""

    name = "docker"
    #: Replicas do not inherit the server's environment: they get the job's, and the image's.
    host_env = False

    def __init__(
        self,
        root: str | Path,
        base_url: str = "",
        simulated_gpus: int | None = None,
        user: str = "",
        network: str = "bridge",
        pids_limit: int = DEFAULT_PIDS_LIMIT,
        shm_mb: int = DEFAULT_SHM_MB,
        client: Any = None,
    ) -> None:
        import docker

        self.root = Path(root).resolve()
        self.base_url = (
            base_url or os.environ.get("DOCKER_HOST", "") or "unix:///var/run/docker.sock"
        )
        try:
            self.client = client or docker.DockerClient(base_url=self.base_url, timeout=60)
            info = self.client.info()
        except Exception as e:
            msg = f"cannot reach the Docker engine at {self.base_url}: {e}"
            raise ExecutorError(msg) from e
        self.user = user or _default_user()
        self.network = network
        self.pids_limit = pids_limit
        self.shm_mb = shm_mb
        #: Containers of this master carry this label (several masters may share an engine).
        self.master_id = master_label(self.root)
        self._node = self._declare(info, simulated_gpus)
        self._live: dict[str, _Container] = {}
        self._exits: list[ReplicaExit] = []
        self._starter = ThreadPoolExecutor(max_workers=4, thread_name_prefix="aigrid-docker")

    # -- inventory --------------------------------------------------------------------------

    def _declare(self, info: dict[str, Any], simulated: int | None) -> Node:
        name = _NAME.sub("-", f"docker-{info.get('Name') or 'host'}")
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
        host = re.sub(r"^\w+://", "", self.base_url).split(":")[0]
        return host, free_port()

    # -- launching --------------------------------------------------------------------------

    def launch(
        self, request: LaunchRequest, code: str | None, args: list[str], command: list[str] | None
    ) -> ReplicaHandle:
        from docker.types import DeviceRequest, Mount

        if request.node != self._node.name:
            msg = f"no node named {request.node!r} on the Docker executor"
            raise ExecutorError(msg)
        if not request.image:
            msg = "the job has no image: name one with 'image' or add one to the catalog"
            raise ExecutorError(msg)
        key = request.job_key or request.job_id
        job_dir = Path(self._node.scratch) / "jobs" / key
        rank_dir = job_dir / f"rank-{request.rank}"
        writable = [job_dir, rank_dir, *map(Path, request.read_write)]
        for path in writable:
            path.mkdir(parents=True, exist_ok=True)
            self._give(path)
        if code is not None:
            script = job_dir / f"main-{request.attempt}.py"
            tmp = script.with_name(f"{script.name}.{request.rank}.tmp")
            tmp.write_text(code, encoding="utf-8")
            tmp.replace(script)
            argv = ["python", "-u", "-m", "jupyter_aigrid.runner", str(script), *args]
        else:
            argv = list(command or [])
        mounts = [Mount(str(job_dir), str(job_dir), type="bind")]
        mounts += [
            Mount(str(p), str(p), type="bind")
            for p in map(Path, request.read_write)
            if not _within(p, job_dir)
        ]
        mounts += [
            Mount(p, p, type="bind", read_only=True) for p in request.read_only if os.path.exists(p)
        ]
        # The job's environment only, and never a variable that would widen its GPUs.
        env = {k: v for k, v in request.env.items() if not k.upper().startswith("NVIDIA_")}
        env.update(AIGRID_SCRATCH=str(job_dir), HOME=str(rank_dir))
        devices = (
            [DeviceRequest(device_ids=list(request.gpu_uuids), capabilities=[["gpu"]])]
            if request.gpu_uuids
            else []
        )
        for path in (request.stdout_path, request.stderr_path, request.exit_path):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(request.exit_path).unlink(missing_ok=True)
        name = container_name(request)
        options: dict[str, Any] = {
            "command": argv,
            "name": name,
            "detach": True,
            "labels": {
                "aigrid.master": self.master_id,
                "aigrid.job_id": request.job_id,
                "aigrid.rank": str(request.rank),
                "aigrid.attempt": str(request.attempt),
                "aigrid.replica": request.replica_id,
            },
            "environment": env,
            "user": self.user,
            "working_dir": request.workdir or str(rank_dir),
            "mounts": mounts,
            "network_mode": "host" if request.network == "host" else self.network,
            "privileged": False,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "read_only": True,
            "tmpfs": {"/tmp": "rw,nosuid,nodev,size=1g"},  # noqa: S108 - the container's own
            "init": True,
            "pids_limit": self.pids_limit,
            "shm_size": f"{self.shm_mb}m",
            "device_requests": devices,
        }
        if request.memory_mb:
            options["mem_limit"] = f"{request.memory_mb}m"
        if request.cpus:
            options["nano_cpus"] = int(request.cpus * 1e9)
        handle = ReplicaHandle(request.replica_id, None, None, request.exit_path)
        entry = _Container(handle, name, request.stdout_path, request.stderr_path)
        self._live[request.replica_id] = entry
        # Creating a container copies its image's files (and may pull it): seconds to
        # minutes. That happens in the background; poll() reports a start that failed.
        self._starter.submit(self._start, entry, request.image, options)
        return handle

    def _start(self, entry: _Container, image: str, options: dict[str, Any]) -> None:
        import docker

        why = f"image {image!r} is not on the Docker host and could not be pulled"
        try:
            try:
                self.client.images.get(image)
            except docker.errors.ImageNotFound:
                self.client.images.pull(image)
            why = "the container could not be started"
            self._remove_stale(entry.name)
            container = self.client.containers.run(image, **options)
        except Exception as e:  # every failure is the job's to see, in its stderr
            detail = getattr(e, "explanation", None) or str(e)
            entry.start_error = f"{why}: {detail}"
            with contextlib.suppress(OSError), open(entry.stderr_path, "ab") as err:
                err.write(f"AI Grid: {entry.start_error}\n".encode())
        else:
            entry.container_id = container.id
            self._follow(entry, container)
            if entry.kill_at is not None:  # stopped while it was being created
                self._signal(entry.name, "SIGTERM")
        finally:
            entry.started.set()

    def _give(self, path: Path) -> None:
        """Let the container's user write ``path`` (we are root, it is not)."""
        if os.geteuid() != 0:
            return
        uid, _, gid = self.user.partition(":")
        with contextlib.suppress(ValueError, OSError):
            os.chown(path, int(uid), int(gid or uid))

    def _remove_stale(self, name: str) -> None:
        """A container of that name left by a crash before it was recorded: ours, so remove."""
        import docker

        try:
            old = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        if old.labels.get("aigrid.master") == self.master_id:
            old.remove(force=True)

    def _follow(self, entry: _Container, container: Any) -> None:
        """Stream the container's stdout and stderr into the rank's files, from the start.

        After a master restart the files are written again from the container's first line:
        readers following them by offset see the same bytes."""
        for stream, path in (("stdout", entry.stdout_path), ("stderr", entry.stderr_path)):
            t = threading.Thread(
                target=_copy_logs,
                args=(container, stream, path),
                name=f"aigrid-logs-{entry.name}-{stream}",
                daemon=True,
            )
            t.start()
            entry.streams.append(t)

    # -- stopping and watching --------------------------------------------------------------

    def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        entry = self._live.get(handle.replica_id)
        if entry is None or entry.kill_at is not None:
            return
        entry.kill_at = time.monotonic() + grace_s
        self._signal(entry.name, "SIGTERM")

    def _signal(self, name: str, sig: str) -> None:
        import docker

        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            self.client.api.kill(name, signal=sig)

    def _ours(self) -> dict[str, Any]:
        """This master's containers, by replica id (one API call)."""
        found = self.client.containers.list(
            all=True, sparse=True, filters={"label": f"aigrid.master={self.master_id}"}
        )
        return {c.attrs.get("Labels", {}).get("aigrid.replica", ""): c for c in found}

    def poll(self) -> list[ReplicaExit]:
        if self._live:
            try:
                containers = self._ours()
            except Exception as e:
                log.warning("AI Grid: cannot list containers on %s: %s", self.base_url, e)
                containers = None
            if containers is not None:
                now = time.monotonic()
                for replica_id, entry in list(self._live.items()):
                    if not entry.started.is_set():
                        continue
                    if entry.start_error is not None:
                        write_atomic(Path(entry.handle.exit_path), str(START_FAILED).encode())
                        del self._live[replica_id]
                        self._exits.append(ReplicaExit(replica_id, START_FAILED))
                        continue
                    found = containers.get(replica_id)
                    state = found.attrs.get("State") if found is not None else None
                    if found is None or state in ("exited", "dead"):
                        self._finish(replica_id, entry, found)
                    elif entry.kill_at is not None and now >= entry.kill_at:
                        self._signal(entry.name, "SIGKILL")
        exits, self._exits = self._exits, []
        return exits

    def _finish(self, replica_id: str, entry: _Container, container: Any) -> None:
        """Record the exit code, wait for the last log lines, then remove the container."""
        code = read_exit_code(entry.handle.exit_path)
        if container is not None:
            try:
                state = self.client.api.inspect_container(container.id)["State"]
                code = int(state.get("ExitCode", 0))
                if state.get("OOMKilled"):
                    log.warning("AI Grid: replica %s was killed: out of memory", replica_id)
            except Exception as e:
                log.debug("AI Grid: cannot inspect the container of %s: %s", replica_id, e)
            if code is not None:
                write_atomic(Path(entry.handle.exit_path), str(code).encode())
            deadline = time.monotonic() + _LOG_DRAIN_S
            for t in entry.streams:
                t.join(max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(Exception):
                container.remove(force=True)
        del self._live[replica_id]
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
            stdout = str(Path(handle.exit_path).with_suffix(".stdout"))
            entry = _Container(
                handle,
                found.name if found is not None else "",
                stdout,
                str(Path(handle.exit_path).with_suffix(".stderr")),
            )
            entry.started.set()
            if found is not None and found.attrs.get("State") not in ("exited", "dead"):
                entry.container_id = found.id
                self._follow(entry, found)
                self._live[handle.replica_id] = entry
                adopted.append(handle.replica_id)
            else:
                self._live[handle.replica_id] = entry
                self._finish(handle.replica_id, entry, found)
        # Containers of replicas the master no longer runs (it died before recording their
        # end): nothing will ever ask for them again.
        for replica_id, container in containers.items():
            if replica_id not in wanted and replica_id not in self._live:
                with contextlib.suppress(Exception):
                    container.remove(force=True)
        return adopted

    def close(self) -> None:
        # Containers being created are left to finish; a restarted master adopts them.
        self._starter.shutdown(wait=False, cancel_futures=False)
        with contextlib.suppress(Exception):
            self.client.close()


def _copy_logs(container: Any, stream: str, path: str) -> None:
    try:
        chunks = container.logs(
            stdout=stream == "stdout", stderr=stream == "stderr", stream=True, follow=True
        )
        with open(path, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                out.flush()
    except Exception as e:
        log.debug("AI Grid: log stream of %s ended: %s", getattr(container, "name", "?"), e)


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _default_user() -> str:
    """The server's own user when that is not root (so files stay the user's), else 1000."""
    uid = os.geteuid()
    return f"{uid}:{os.getegid()}" if uid != 0 else "1000:1000"
