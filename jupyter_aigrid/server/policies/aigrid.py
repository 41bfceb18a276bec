"""``aigrid``, the default: shortest estimated remaining GPU-seconds first, preemptive.

Measured on the reference trace (``slice-a.csv``, 16 x 8 GPUs, 40 s per preemption; see
``benchmarks/scheduler.py``) against FIFO, EASY backfill, fair share, Tiresias' 2D-LAS and
SRTF, this ordering, fed by :class:`~jupyter_aigrid.server.history.History`'s estimates
(recent finished siblings of a job first: a sweep's jobs run alike), gave the lowest average
completion time of any policy that does not know durations:

- a job's priority is its estimated remaining run time x its GPUs (the area it still needs),
  so short and small gangs go first; with no history at all (a new cluster) every job looks
  alike and the order is first come first served;
- gangs are placed best-fit and topology-aware (see ``placement``), never partly;
- a waiting job preempts (checkpoint, requeue) preemptible gangs with at least twice its
  estimated work left, the most first, when that lets it start now. ``preempt_factor`` (2):
  a preemption costs a checkpoint and a restore, and estimates are rough, so only clearly
  longer gangs are evicted; against plain SRTF ordering (factor 1) this cut preemptions by
  a third to two thirds on the Philly traces, at an equal or lower average JCT;
- a round looks at the 32 most served gangs as victims (``candidates``: the long ones, as
  run times are heavy-tailed); a gang runs ``min_run_s`` (60 s) before it may be preempted,
  so it is never evicted while still restoring.
"""

from __future__ import annotations

from typing import Any

from .srtf import SrtfPolicy

#: Where ``aigrid`` differs from plain ``srtf``; any of them may be overridden by options.
DEFAULTS = {"gpu_weight": 1.0, "candidates": 32, "preempt_factor": 2.0}


class AIGridPolicy(SrtfPolicy):
    name = "aigrid"

    def __init__(self, **options: Any) -> None:
        super().__init__(**{**DEFAULTS, **options})
