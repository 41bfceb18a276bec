"""What a running job imports: who am I, which device, set up torch.distributed, report.

Every replica gets torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT), so ``torch.distributed.init_process_group()`` works on its own;
these helpers add the right backend and device for real and for simulated GPUs.

In [1]: from jupyter_aigrid import runtime
In [2]: runtime.init_distributed()          # nccl on real GPUs, gloo on the CPU
In [3]: model.to(runtime.device())
In [4]: runtime.report(loss=0.12, step=100)  # shows in GET /jobs/{id}/result

Checkpoints (the master restores them after a failure, a preemption or a migration)::

    state = runtime.restore()                 # None on a fresh start
    start = runtime.resume(state, model=model, optimizer=opt)["step"] if state else 0
    for step in range(start, steps):
        ...
        if runtime.should_checkpoint():       # asked by the master, or every interval
            runtime.checkpoint(runtime.capture(model=model, optimizer=opt, step=step + 1))

``checkpoint()`` and ``should_checkpoint()`` are collective in a gang: every rank calls them
at the same steps (``should_checkpoint()`` agrees across ranks by itself).
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import checkpoints as ck
from .checkpoints import CheckpointError
from .training_state import ResumableSampler, capture, resume, rng_state, set_rng_state

__all__ = [
    "CheckpointError",
    "ResumableSampler",
    "capture",
    "checkpoint",
    "checkpoints",
    "device",
    "init_distributed",
    "job_id",
    "local_rank",
    "rank",
    "report",
    "restore",
    "resume",
    "rng_state",
    "set_rng_state",
    "should_checkpoint",
    "simulated",
    "world_size",
]
#: How many finished checkpoints each rank keeps (``AIGRID_CHECKPOINT_KEEP`` overrides).
DEFAULT_KEEP = 3
#: How often a replica started ahead of time looks for the master's go.
GO_POLL_S = 0.005


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def job_id() -> str | None:
    return os.environ.get("AIGRID_JOB_ID")


def simulated() -> bool:
    """True when this replica's GPUs are simulated (CPU slots): run on the CPU."""
    return os.environ.get("AIGRID_SIMULATED_GPUS") == "1"


def device():
    """The torch device of this replica: its GPU when it has a real one, else the CPU."""
    import torch

    if not simulated() and torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(backend: str | None = None, timeout_s: float = 300.0):
    """Join the job's process group (idempotent) and return ``torch.distributed``.

    The backend defaults to nccl when this replica has a real GPU, gloo otherwise. The
    process group is destroyed at exit: a gloo group left alive aborts the interpreter's
    shutdown ("terminate called without an active exception"), failing a job that succeeded.
    """
    import datetime

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return dist
    dev = device()
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    atexit.register(_destroy_process_group)
    return dist


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def report(**metrics: Any) -> None:
    """Record metrics (JSON-serialisable values) for this rank; the master serves them."""
    out = os.environ.get("AIGRID_RESULT_DIR")
    if not out:
        return
    _await_go()
    path = Path(out) / f"rank-{rank()}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.time(), **metrics}) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


# -- checkpoints ---------------------------------------------------------------------------------


class _State:
    seq: int | None = None  # the checkpoint restored or written last
    last_at = time.monotonic()
    signalled = False
    listening = False
    answered: str | None = None  # the master's request answered last
    request_mtime = 0
    go: dict[str, Any] | None = None  # the master's go, for a replica started ahead of time


_state = _State()


def _attempt() -> int:
    return int(os.environ.get("AIGRID_ATTEMPT", "0"))


def checkpoint_dir() -> Path:
    """Where this rank's checkpoints go: ``AIGRID_CHECKPOINT_DIR`` (the node's scratch)."""
    return Path(os.environ.get("AIGRID_CHECKPOINT_DIR") or Path.cwd() / "checkpoints")


def _dumper(state: dict[str, Any]) -> tuple[str, Any]:
    if "torch" in sys.modules:
        return "torch", lambda f: _torch_save(state, f)
    return "pickle", lambda f: pickle.dump(state, f, protocol=5)


def _torch_save(state: dict[str, Any], f: Any) -> None:
    """``torch.save`` without its per-record CRC-32: the manifest's sha256 covers every byte
    (and is checked before any restore), so a second checksum only costs time."""
    import torch

    options = torch.serialization
    if not hasattr(options, "set_crc32_options"):
        torch.save(state, f)
        return
    previous = options.get_crc32_options()
    options.set_crc32_options(False)
    try:
        torch.save(state, f)
    finally:
        options.set_crc32_options(previous)


def checkpoint(state: dict[str, Any], keep: int | None = None) -> str:
    """Write this rank's ``state`` as the next checkpoint; return its name.

    The write is atomic and durable (temp file, fsync, rename, fsync of the folder), and a
    manifest with its sha256 and size follows it. Only the ``keep`` newest checkpoints stay.
    If the master asked for this checkpoint, it is told once the write is done.
    """
    if not isinstance(state, dict):
        msg = f"checkpoint() takes a dict, got {type(state).__name__}"
        raise TypeError(msg)
    _await_go()
    began = time.monotonic()
    root = checkpoint_dir()
    seq = (_state.seq or 0) + 1  # on from the checkpoint restored, if any
    name = ck.name_of(_attempt(), seq)
    serializer, write = _dumper(state)
    step = state.get("step")
    manifest = ck.write_piece(
        root / name,
        rank(),
        world_size(),
        write,
        {"seq": seq, "attempt": _attempt(), "step": step if isinstance(step, int) else None}
        | {"serializer": serializer, "job_id": job_id()},
    )
    _state.seq = seq
    _state.last_at = time.monotonic()
    _state.signalled = False
    keep = int(os.environ.get("AIGRID_CHECKPOINT_KEEP", DEFAULT_KEEP)) if keep is None else keep
    ck.prune(root, rank(), max(keep, 1), name)
    request = ck.read_json(ck.request_file(root), root)
    if request and request.get("id") != _state.answered:
        size = manifest["files"][ck.data_file(rank())]["bytes"]
        ck.write_json(
            ck.ack_file(root, _attempt(), rank()),
            {
                "request": request.get("id"),
                "checkpoint": name,
                "step": manifest["step"],
                "bytes": size,
                "seconds": round(time.monotonic() - began, 6),
            },
        )
        _state.answered = request.get("id")
    return name


def checkpoints() -> list[str]:
    """This rank's finished checkpoints, oldest first: those whose piece of this rank has
    its manifest (a piece killed mid-write never appears)."""
    root = checkpoint_dir()
    return [n for n in ck.piece_names(root) if rank() in ck.ranks_in(root, n)]


def _load(folder: Path, root: Path, vouched: str | None = None) -> dict[str, Any]:
    """Rank's state from ``folder``, verified against its manifest first; ``vouched`` is the
    sha256 the master verified this piece against as it staged it (then it is not hashed
    twice, as long as the manifest still names that digest and the size matches)."""
    manifest = ck.read_manifest(folder, rank(), root)
    if manifest.get("serializer") == "torch":
        import torch

        if not (vouched and ck.vouched_for(folder, rank(), root, vouched)):
            ck.read_verified(folder, rank(), root)  # then loaded from the page cache, mapped
        path = str(folder / ck.data_file(rank()))
        if device().type == "cuda":
            return torch.load(path, map_location=device(), weights_only=False)
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    _, data = ck.load_verified(folder, rank(), root)
    return pickle.loads(data)  # noqa: S301 (this job's own checkpoint, verified)


def restore() -> dict[str, Any] | None:
    """This rank's state from the checkpoint to resume from, verified against its manifest
    first; None when the job starts afresh.

    Under the master, ``AIGRID_RESTORE`` names that checkpoint: the master chose the newest
    one that every rank has and that verifies, and put it on this node. A replica the master
    started ahead of time (a migrating gang, at its destination) waits here for the master to
    name it (``AIGRID_RESTORE_WAIT``): its start-up overlaps the checkpoint's write. Run by
    hand (no master), the newest verified checkpoint in ``checkpoint_dir()`` is used, falling
    back to older ones with a warning.
    """
    waited = _await_go()
    began = time.monotonic()
    chosen, vouched = os.environ.get("AIGRID_RESTORE"), os.environ.get("AIGRID_RESTORE_SHA256")
    if _state.go is not None:  # started ahead of time: the master named it once it was there
        name, vouched = _state.go.get("checkpoint"), _state.go.get("sha256")
        if name and not (isinstance(name, str) and ck.parse_name(name)):
            msg = f"the master's go names no checkpoint: {name!r}"
            raise CheckpointError(msg)
        chosen = str(checkpoint_dir() / name) if name else ""
    if chosen:
        folder = Path(chosen)
        state = _load(folder, folder.parent, vouched if isinstance(vouched, str) else None)
    elif job_id() is None:
        root, state, folder = checkpoint_dir(), None, None
        for name in reversed(ck.piece_names(root)):
            try:
                state = _load(root / name, root)
            except (CheckpointError, OSError, pickle.UnpicklingError) as e:
                sys.stderr.write(f"aigrid: checkpoint {name} skipped: {e}\n")
                continue
            folder = root / name
            break
        if folder is None:
            return None
    else:
        return None
    _state.seq = (ck.parse_name(folder.name) or (0, 0))[1]
    _state.last_at = time.monotonic()
    if job_id() is not None:
        ck.write_json(
            ck.restored_file(checkpoint_dir(), _attempt(), rank()),
            {
                "checkpoint": folder.name,
                "seconds": round(time.monotonic() - began, 6),
                "waited_s": waited,
            },
        )
    return state


def _await_go() -> float | None:
    """A replica the master started ahead of its turn (``AIGRID_RESTORE_WAIT``: a migrating
    gang is started at its destination while its checkpoint is still being written and
    copied) waits here, at its first call into the runtime that restores, checkpoints or
    reports, until the master names the checkpoint to restore. Returns the seconds waited
    (None when this replica was not started ahead)."""
    if _state.go is not None or os.environ.get("AIGRID_RESTORE_WAIT") != "1":
        return None
    root, began = checkpoint_dir(), time.monotonic()
    path = ck.go_file(root, _attempt(), rank())
    while (go := ck.read_json(path, root)) is None:
        time.sleep(GO_POLL_S)
    _state.go = go
    return round(time.monotonic() - began, 6)


def _on_signal(signum, frame) -> None:
    _state.signalled = True


def _listen() -> None:
    """Tell the master this rank answers checkpoint requests; take SIGUSR1 as a nudge."""
    _state.listening = True
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGUSR1)

        def handler(signum, frame):
            _on_signal(signum, frame)
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGUSR1, handler)
    if job_id() is not None:
        path = ck.listen_file(checkpoint_dir(), _attempt(), rank())
        ck.write_json(path, {"pid": os.getpid()})


def _requested() -> bool:
    """Is there a request of the master that this rank has not answered?"""
    path = ck.request_file(checkpoint_dir())
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return _state.signalled
    if mtime != _state.request_mtime:
        _state.request_mtime = mtime
        request = ck.read_json(path, checkpoint_dir())
        if request and request.get("id") != _state.answered:
            _state.signalled = True
    return _state.signalled


def should_checkpoint() -> bool:
    """Should the job checkpoint at this step? True when the master asks (to migrate or
    preempt the job, or on a user's request) and every ``checkpoint_interval_s`` of the
    spec. In a gang, every rank gets the same answer (one tiny all-reduce)."""
    _await_go()
    if not _state.listening:
        _listen()
    due = _requested()
    interval = float(os.environ.get("AIGRID_CHECKPOINT_INTERVAL_S") or 0)
    if interval and time.monotonic() - _state.last_at >= interval:
        due = True
    if world_size() > 1 and "torch" in sys.modules:
        import torch
        import torch.distributed as dist

        if dist.is_initialized():
            on = device() if dist.get_backend() == "nccl" else torch.device("cpu")
            flag = torch.tensor([int(due)], device=on)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            due = bool(flag.item())
    return due
