"""What a job checkpoints besides its own values: the random generators, the model, the
optimizer and where the data loader was, captured into one dict and put back.

In [1]: state = runtime.capture(model=model, optimizer=opt, step=step, sampler=sampler)
In [2]: runtime.resume(state, model=model, optimizer=opt, sampler=sampler)["step"]

:mod:`jupyter_aigrid.runtime` re-exports every name here. torch and NumPy are only touched
when the job itself imported them.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any


def rng_state() -> dict[str, Any]:
    """The random generators' states: Python's, NumPy's, torch's on the CPU and on CUDA."""
    state: dict[str, Any] = {"python": random.getstate()}
    if "numpy" in sys.modules:
        import numpy as np

        state["numpy"] = np.random.get_state()
    if "torch" in sys.modules:
        import torch

        state["torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "torch" in state:
        import torch

        torch.set_rng_state(state["torch"].cpu())
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def capture(
    model: Any = None,
    optimizer: Any = None,
    step: int | None = None,
    sampler: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """A checkpoint state: model and optimizer ``state_dict()``s, every RNG state, the step,
    the sampler's position (anything with ``state_dict()``) and ``extra`` values of yours."""
    return {
        "step": step,
        "rng": rng_state(),
        "model": model.state_dict() if model is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "sampler": sampler.state_dict() if sampler is not None else None,
        "extra": extra,
    }


def resume(
    state: dict[str, Any], model: Any = None, optimizer: Any = None, sampler: Any = None
) -> dict[str, Any]:
    """Load a state made by :func:`capture` back into ``model``, ``optimizer`` and ``sampler`` and
    the RNGs; return ``{"step": ..., **extra}``."""
    if model is not None and state.get("model") is not None:
        model.load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if sampler is not None and state.get("sampler") is not None:
        sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"])
    return {"step": state.get("step"), **(state.get("extra") or {})}


class ResumableSampler:
    """Indices of a dataset for this rank, epoch by epoch, that resume mid-epoch.

    Like ``torch.utils.data.DistributedSampler`` (each rank a disjoint share, shuffled per
    epoch from ``seed``), with a position that :func:`capture` saves. Each index counts as
    consumed once it has been yielded, so use it in the loop itself or with a DataLoader
    whose ``num_workers=0``.
    """

    def __init__(
        self,
        length: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank_: int | None = None,
    ) -> None:
        self.length, self.shuffle, self.seed = length, shuffle, seed
        # torchrun's variables, as ``runtime.world_size()`` and ``runtime.rank()`` read them
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.num_replicas = world if num_replicas is None else num_replicas
        self.rank = int(os.environ.get("RANK", "0")) if rank_ is None else rank_
        self.epoch = 0
        self.position = 0

    def _order(self) -> list[int]:
        order = list(range(self.length))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)  # noqa: S311
        padding = len(self) * self.num_replicas - len(order)  # equal shares: repeat some
        if order and padding:
            order += (order * -(-padding // len(order)))[:padding]
        return order[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        return (self.length + self.num_replicas - 1) // self.num_replicas

    def __iter__(self):
        order = self._order()
        while self.position < len(order):
            self.position += 1
            yield order[self.position - 1]
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
