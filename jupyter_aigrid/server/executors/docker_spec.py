"""What a replica's container is: its options for the docker SDK, its name, labels and folders.

Every container:

- runs the job's image (from the catalog, or the one the job named) as a non-root user, with
  every capability dropped, ``no-new-privileges``, a read-only root filesystem (a tmpfs at
  ``/tmp``), an init process, and limits on pids, memory and CPU. Nothing a job spec says can
  make it privileged, add a mount or a device, or change these;
- gets exactly the GPUs it was placed on, by UUID, through a DeviceRequest (never ``all``);
  simulated GPUs get none;
- sees only the paths the master hands it, bind-mounted at the same paths as on the host:
  its job's scratch directory (code, working directories) and results and checkpoint
  directories read-write; its script, pushed inputs, datasets and the MPI hostfile
  read-only. Its environment is the job's alone: nothing of the server's leaks in;
- joins the network its template needs: the host's for gangs (NCCL and gloo talk across
  containers), the executor's default network otherwise;
- carries the labels ``aigrid.master`` (this master), ``aigrid.job_id``, ``aigrid.rank``,
  ``aigrid.attempt`` and ``aigrid.replica``, and a name unique per attempt. A restarted master
  finds its containers again by label.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model import LaunchRequest
from .base import ExecutorError

#: Containers' limits unless the job asks for more (memory) or the executor is told otherwise.
DEFAULT_PIDS_LIMIT = 4096
DEFAULT_SHM_MB = 1024
_NAME = re.compile(r"[^a-zA-Z0-9_.-]")
_USER = re.compile(r"[1-9][0-9]*:[1-9][0-9]*")


@dataclass(frozen=True)
class ContainerSettings:
    """What the executor sets on every container, whatever the job asks."""

    #: ``uid:gid``, never root's.
    user: str
    #: The ``aigrid.master`` label (see :func:`master_label`).
    master_id: str
    #: The network of containers that do not ask for the host's.
    network: str
    pids_limit: int
    shm_mb: int
    #: The memory limit of a container whose job names none.
    memory_mb: int


def safe_name(text: str) -> str:
    """``text`` with every character Docker refuses in a name replaced by ``-``."""
    return _NAME.sub("-", text)


def master_label(state_dir: str | Path) -> str:
    """The ``aigrid.master`` label of the containers of the master keeping ``state_dir``."""
    return hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:16]


def container_name(request: LaunchRequest) -> str:
    """``aigrid-<job key>-a<attempt>-r<rank>``: unique per attempt and rank."""
    key = request.job_key or request.job_id
    return safe_name(f"aigrid-{key}-a{request.attempt}-r{request.rank}")


def container_user(user: str) -> str:
    """The containers' ``uid:gid``: ``user``, or the server's own user when that is not root
    (so files stay the user's), else 1000:1000. ExecutorError for root or a name."""
    if not user:
        uid = os.geteuid()
        user = f"{uid}:{os.getegid()}" if uid != 0 else "1000:1000"
    if not _USER.fullmatch(user):
        msg = (
            f"the containers' user must be a numeric uid:gid other than root's, such as "
            f"1000:1000, got {user!r}"
        )
        raise ExecutorError(msg)
    return user


def container_options(
    settings: ContainerSettings,
    request: LaunchRequest,
    argv: list[str],
    job_dir: Path,
    script: Path | None,
) -> dict[str, Any]:
    """The keyword arguments of ``containers.create`` for the replica ``request`` names.

    ``job_dir`` is the job's scratch folder (mounted read-write: the ranks' working
    directories), ``script`` the job's code (mounted read-only), if it has code.
    """
    from docker.types import DeviceRequest, Mount

    rank_dir = job_dir / f"rank-{request.rank}"
    mounts = [Mount(str(job_dir), str(job_dir), type="bind")]
    if script is not None:
        mounts.append(Mount(str(script), str(script), type="bind", read_only=True))
    mounts += [
        Mount(p, p, type="bind") for p in request.read_write if not _within(Path(p), job_dir)
    ]
    mounts += [
        Mount(p, p, type="bind", read_only=True) for p in request.read_only if os.path.exists(p)
    ]
    # The job's environment only. NVIDIA_VISIBLE_DEVICES is ours: exactly the placed GPUs,
    # or "void", so that an image's own "all" cannot hand a container every GPU.
    env = {k: v for k, v in request.env.items() if not k.upper().startswith("NVIDIA_")}
    env.update(
        AIGRID_SCRATCH=str(job_dir),
        HOME=str(rank_dir),
        NVIDIA_VISIBLE_DEVICES=",".join(request.gpu_uuids) or "void",
    )
    devices = (
        [DeviceRequest(device_ids=list(request.gpu_uuids), capabilities=[["gpu"]])]
        if request.gpu_uuids
        else []
    )
    memory_mb = request.memory_mb or settings.memory_mb
    options: dict[str, Any] = {
        "command": argv,
        "name": container_name(request),
        "labels": {
            "aigrid.master": settings.master_id,
            "aigrid.job_id": request.job_id,
            "aigrid.rank": str(request.rank),
            "aigrid.attempt": str(request.attempt),
            "aigrid.replica": request.replica_id,
        },
        "environment": env,
        "user": settings.user,
        "working_dir": str(rank_dir),
        "mounts": mounts,
        "network_mode": "host" if request.network == "host" else settings.network,
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "tmpfs": {"/tmp": "rw,nosuid,nodev,size=1g"},  # noqa: S108 - the container's own
        "init": True,
        "pids_limit": settings.pids_limit,
        "shm_size": f"{settings.shm_mb}m",
        "device_requests": devices,
        "mem_limit": f"{memory_mb}m",
        "memswap_limit": f"{memory_mb}m",
    }
    if request.cpus:
        options["nano_cpus"] = int(request.cpus * 1e9)
    return options


def real_dir(root: Path, path: Path, user: str) -> None:
    """Make ``path`` a directory under ``root`` that the container's ``user`` owns, refusing
    a symlink anywhere below ``root`` (a container may plant one where it can write)."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(root)
    except ValueError:
        msg = f"{path} is outside the master's state directory {root}"
        raise ExecutorError(msg) from None
    current = root
    for part in rel.parts:
        current = current / part
        with contextlib.suppress(FileExistsError):
            os.mkdir(current, 0o755)
        st = os.lstat(current)
        if not stat.S_ISDIR(st.st_mode):
            msg = f"{current} is not a directory (a link left by a job?): refusing to use it"
            raise ExecutorError(msg)
    if os.geteuid() == 0:  # we are root, the container's user is not
        uid, _, gid = user.partition(":")
        os.chown(current, int(uid), int(gid or uid), follow_symlinks=False)


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
