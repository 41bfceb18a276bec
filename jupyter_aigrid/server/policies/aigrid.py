"""``aigrid``, the default: gang-aware least attained service with many geometric queues.

Measured on the reference trace (``slice-a.csv``, 16 x 8 GPUs, 40 s per preemption; see
``benchmarks/scheduler.py``), this beat every other policy that does not know durations:
FIFO, EASY backfill, fair share, history-estimated SRTF, and Tiresias' 2D-LAS with its
two-queue default. It needs no estimates, so it works from the first job on:

- a job's priority is the GPU-seconds it has attained (2D: small gangs and young jobs first),
  bucketed into queues at 100, 300, 900, ... GPU-seconds, first come first served within one;
- gangs are placed best-fit and topology-aware (see ``placement``), never partly;
- a waiting job preempts (checkpoint, requeue) preemptible gangs of later queues, latest
  started first, when that lets it start now; a gang runs ``min_run_s`` (60 s) before it may
  be preempted again, so it is never evicted while still restoring.
"""

from __future__ import annotations

from .las import LasPolicy

#: Queue boundaries in GPU-seconds: 100 x 3^k, up to about three GPU-years.
DEFAULT_THRESHOLDS = tuple(100.0 * 3**k for k in range(14))


class AIGridPolicy(LasPolicy):
    name = "aigrid"

    def __init__(
        self,
        thresholds_gpu_s: tuple[float, ...] | list[float] = DEFAULT_THRESHOLDS,
        starve_factor: float = 0.0,
        min_run_s: float = 60.0,
        tick_s: float | None = None,
    ) -> None:
        super().__init__(thresholds_gpu_s, starve_factor, min_run_s, tick_s)
