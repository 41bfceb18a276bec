"""What a running job imports: who am I, which device, set up torch.distributed, report.

Every replica gets torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT), so ``torch.distributed.init_process_group()`` works on its own;
these helpers add the right backend and device for real and for simulated GPUs.

In [1]: from jupyter_aigrid import runtime
In [2]: runtime.init_distributed()          # nccl on real GPUs, gloo on the CPU
In [3]: model.to(runtime.device())
In [4]: runtime.report(loss=0.12, step=100)  # shows in GET /jobs/{id}/result
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path
from typing import Any


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
    path = Path(out) / f"rank-{rank()}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.time(), **metrics}) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
