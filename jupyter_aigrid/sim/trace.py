"""Job traces: the CSV files of ``traces/``, checked row by row, and synthetic ones.

A trace has one row per job with at least ``job_id``, ``submit_time_s``, ``duration_s`` and
``num_gpus``; ``job_type`` and ``user`` (or ``vc``) are used when present. Every problem is a
:class:`TraceError` that names the file, the row (counting the header as row 1) and the job.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

from ..server.model import Request

REQUIRED = ("job_id", "submit_time_s", "duration_s", "num_gpus")


class TraceError(ValueError):
    """A trace cannot be replayed; the message names the row and what is wrong with it."""


@dataclass(frozen=True)
class TraceJob:
    job_id: str
    submit_s: float
    duration_s: float
    gpus: int
    job_type: str = ""
    user: str = "user"
    #: The CSV row (header = 1), for errors found later.
    row: int = 0
    #: The job's full resource request, when replaying the master's own history.
    request: Request | None = None


def _number(text: str, column: str, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        msg = f"{where}: {column} must be a number, got {text!r}"
        raise TraceError(msg) from None
    if not math.isfinite(value) or value < 0:
        msg = f"{where}: {column} must be a finite number >= 0, got {text!r}"
        raise TraceError(msg)
    return value


def load_trace(path: str | Path) -> list[TraceJob]:
    """Read and check a CSV trace; jobs come back in submission order."""
    path = Path(path)
    try:
        f = path.open(newline="", encoding="utf-8")
    except OSError as e:
        msg = f"cannot read trace {path}: {e.strerror}"
        raise TraceError(msg) from e
    jobs: list[TraceJob] = []
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            msg = (
                f"{path} row 1 (the header): missing column(s) {', '.join(missing)}; a trace "
                f"needs {', '.join(REQUIRED)}"
            )
            raise TraceError(msg)
        seen: set[str] = set()
        for row_no, row in enumerate(reader, start=2):
            job_id = (row.get("job_id") or "").strip()
            where = f"{path} row {row_no} (job {job_id or '?'})"
            if not job_id:
                msg = f"{where}: job_id is empty"
                raise TraceError(msg)
            if job_id in seen:
                msg = f"{where}: job_id {job_id!r} appears twice"
                raise TraceError(msg)
            seen.add(job_id)
            gpus = _number(row.get("num_gpus"), "num_gpus", where)
            if gpus < 1 or not gpus.is_integer():
                msg = f"{where}: num_gpus must be a whole number >= 1, got {row['num_gpus']!r}"
                raise TraceError(msg)
            jobs.append(
                TraceJob(
                    job_id=job_id,
                    submit_s=_number(row.get("submit_time_s"), "submit_time_s", where),
                    duration_s=_number(row.get("duration_s"), "duration_s", where),
                    gpus=int(gpus),
                    job_type=(row.get("job_type") or "").strip(),
                    user=(row.get("user") or row.get("vc") or "user").strip(),
                    row=row_no,
                )
            )
    if not jobs:
        msg = f"{path}: the trace has no jobs"
        raise TraceError(msg)
    jobs.sort(key=lambda j: (j.submit_s, j.row))
    return jobs


def check_fits(jobs: list[TraceJob], total_gpus: int, source: str = "trace") -> None:
    """Refuse a job that asks for more GPUs than the whole cluster has."""
    for job in jobs:
        if job.gpus > total_gpus:
            msg = (
                f"{source} row {job.row} (job {job.job_id}): asks for {job.gpus} GPUs, but the "
                f"cluster has {total_gpus}; use more --nodes or --gpus-per-node"
            )
            raise TraceError(msg)


#: GPUs per job and their weights, roughly those of the Philly trace.
_GPU_MIX = ((1, 0.62), (2, 0.12), (4, 0.12), (8, 0.09), (16, 0.03), (32, 0.015), (64, 0.005))
_TYPES = ("ResNet-50", "Transformer", "LM", "Recommendation", "CycleGAN", "A3C")


def synthetic_trace(
    jobs: int, total_gpus: int, load: float = 0.9, seed: int = 0, users: int = 20
) -> list[TraceJob]:
    """``jobs`` jobs with Philly-like GPU counts and heavy-tailed (log-normal, at most a day)
    durations, arriving as a Poisson process that offers ``load`` of ``total_gpus``."""
    rng = random.Random(seed)  # noqa: S311 (a workload, not a secret)
    sizes = [g for g, _ in _GPU_MIX if g <= total_gpus]
    weights = [w for g, w in _GPU_MIX if g <= total_gpus]
    drawn = []
    for i in range(jobs):
        gpus = rng.choices(sizes, weights)[0]
        duration = min(rng.lognormvariate(7.0, 1.5), 86400.0)
        drawn.append((gpus, round(duration, 1), rng.choice(_TYPES), f"u{i % users}"))
    mean_work = sum(g * d for g, d, _, _ in drawn) / jobs
    rate = load * total_gpus / mean_work  # jobs per second
    t = 0.0
    out = []
    for i, (gpus, duration, job_type, user) in enumerate(drawn):
        out.append(TraceJob(f"syn-{i}", round(t, 1), duration, gpus, job_type, user, row=i + 2))
        t += rng.expovariate(rate)
    return out
