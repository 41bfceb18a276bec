"""A discrete-event simulator that replays a trace through a policy object, unchanged.

Events are arrivals, completions and (for policies that ask for it) periodic ticks. After
the events of one instant, rounds of :func:`~jupyter_aigrid.server.policies.decide` (the
master's own round: inference resource choice, the policy, QoS preemption,
defragmentation) run until nothing more is decided: launches take resources at once; a
preempted gang gives them back at once and pays ``preempt_overhead_s`` (checkpoint +
restore) when it next starts, holding its GPUs without progress for that long; a migrated
gang moves at once and pays the same overhead on its new GPUs. Every preemptible gang is
taken to answer checkpoint requests (what the overhead models), so any may be moved.

Policies see :class:`Request` objects only: never a job's
true duration, except in ``oracle`` mode, which declares it as the job's time limit (and is
named as such in every output). Each job's record keeps the run time estimate the policy
saw when it first started (:meth:`History.predict`), and the result reports how far those
estimates were from the real run times (:func:`prediction_errors`).

With ``staging`` (:class:`~jupyter_aigrid.sim.data.Staging`), every job reads a dataset and
a gang placed on nodes that lack it also holds its GPUs without progress until its nodes
have copied it (and then for any restore); policies see where data is through the snapshot's
``data_on``, unless the staging is ``blind``. Without it, datasets play no part at all.
"""

from __future__ import annotations

import heapq
import itertools
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ..server.accuracy import PredictionError, prediction_errors
from ..server.history import History, Prediction
from ..server.inventory import simulated_gpus
from ..server.model import Node, Placement, Request
from ..server.policies import Context, Decisions, Policy, decide
from ..server.profiles import ProfileBook
from ..server.snapshot import Snapshot
from ..vocabulary import RUN_METRICS
from .data import NodeCaches, Staging, dataset_of
from .trace import TraceJob, check_fits

_FINISH, _ARRIVAL, _TICK = 0, 1, 2
METRICS = RUN_METRICS
#: The figures of a run with staging, after METRICS.
STAGING_METRICS = (
    ("staging_s", "staging (s)"),
    ("staging_gpu_s", "staging GPU-s"),
    ("staged_bytes", "staged bytes"),
    ("no_staging_fraction", "no staging"),
)
#: Rounds at one instant before the simulator moves on (a policy that keeps preempting).
MAX_ROUNDS_PER_INSTANT = 16


def make_nodes(count: int, gpus_per_node: int, model: str = "V100") -> list[Node]:
    """``count`` identical nodes; CPUs and memory never limit a trace's jobs."""
    return [
        Node(
            name=f"node-{i:04d}",
            gpus=tuple(
                replace(g, model=model) for g in simulated_gpus(f"node-{i:04d}", gpus_per_node)
            ),
            cpus=1 << 16,
            memory_mb=1 << 30,
        )
        for i in range(count)
    ]


@dataclass
class JobRecord:
    job: TraceJob
    request: Request
    remaining_s: float
    first_start: float | None = None
    finish: float | None = None
    preemptions: int = 0
    #: Defragmentation moves (each paid the preemption overhead on its new GPUs).
    moves: int = 0
    held_s: float = 0.0
    run_start: float = 0.0
    run_overhead_s: float = 0.0
    run_id: int = 0
    placements: list[Placement] = field(default_factory=list)
    #: The run time estimate the policy saw when the job first started, and its basis.
    prediction: Prediction | None = None


@dataclass
class SimResult:
    policy: str
    metrics: dict[str, Any]
    records: list[JobRecord]
    #: (time, GPUs allocated) at every change.
    timeline: list[tuple[float, int]]
    #: Run time prediction errors (see :func:`prediction_errors`): ``all``, then per basis.
    prediction: dict[str, PredictionError] = field(default_factory=dict)
    #: Defragmentation moves made (each also in its job's record as ``moves``).
    migrations: int = 0


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Simulator:
    def __init__(
        self,
        jobs: list[TraceJob],
        nodes: list[Node],
        policy: Policy,
        preempt_overhead_s: float = 40.0,
        oracle: bool = False,
        source: str = "trace",
        staging: Staging | None = None,
        book: ProfileBook | None = None,
        costs: dict[str, float] | None = None,
    ) -> None:
        self.nodes = nodes
        total = sum(len(n.gpus) for n in nodes)
        check_fits(jobs, total, source)
        self.policy = policy
        self.overhead = preempt_overhead_s
        self.oracle = oracle
        self.staging = staging
        self.records = {j.job_id: self._record(j, seq) for seq, j in enumerate(jobs)}
        self.tick_s: float | None = policy.tick_s
        #: What every round knows beyond the snapshot: the profiles inference jobs are
        #: placed by (None: placed as they ask). Running gangs all count as settled.
        self.context = Context(book=book, costs=dict(costs or {}))

    def round(
        self, snapshot: Snapshot, queue: list[Request], context: Context | None = None
    ) -> Decisions:
        """One round, decided exactly as the master decides it (``context``: facts about
        running gangs that a trace does not carry; the simulator's own by default)."""
        return decide(snapshot, queue, self.policy, context or self.context)

    def _record(self, job: TraceJob, seq: int) -> JobRecord:
        if job.request is not None:
            request = replace(
                job.request,
                submitted_at=job.submit_s,
                seq=seq,
                attained_gpu_s=0.0,
                time_limit_s=job.duration_s if self.oracle else job.request.time_limit_s,
            )
            if self.staging is not None and not request.datasets:
                request = replace(request, datasets=(dataset_of(job.job_type),))
            return JobRecord(job, request, job.duration_s)
        request = Request(
            job_id=job.job_id,
            owner=job.user,
            replicas=job.gpus,
            gpus_per_replica=1,
            cpus_per_replica=0.0,
            memory_mb_per_replica=0,
            submitted_at=job.submit_s,
            seq=seq,
            preemptible=True,
            time_limit_s=job.duration_s if self.oracle else None,
            job_type=job.job_type,
            datasets=(dataset_of(job.job_type),) if self.staging is not None else (),
        )
        return JobRecord(job, request, job.duration_s)

    def run(self) -> SimResult:
        started = time.perf_counter()
        events: list[tuple[float, int, int, str, int]] = []
        seq = 0
        for rec in self.records.values():
            events.append((rec.job.submit_s, _ARRIVAL, seq, rec.job.job_id, 0))
            seq += 1
        heapq.heapify(events)
        snapshot = Snapshot.empty(self.nodes)
        caches = self._caches()
        shown = caches is not None and not caches.staging.blind
        if shown:
            snapshot = snapshot.with_data(caches.data_on, caches.sizes)
        history = History()
        queue: dict[str, Request] = {}
        timeline: list[tuple[float, int]] = [(0.0, 0)]
        used = decisions = preemptions = migrations = rounds = 0
        next_tick = None
        now = 0.0

        def begin(rec: JobRecord, placement: Placement, overhead_s: float) -> None:
            """Start a run of ``rec`` on ``placement`` now (the snapshot holds it already):
            it holds its GPUs without progress for ``overhead_s`` and any staging first."""
            nonlocal snapshot, seq
            rec.run_start = now
            rec.run_overhead_s = overhead_s
            rec.placements.append(placement)
            if caches is not None:
                rec.run_overhead_s += caches.stage(rec.request, placement.nodes, now)
                if shown:
                    snapshot = snapshot.with_data(caches.data_on)
            end = now + rec.run_overhead_s + rec.remaining_s
            heapq.heappush(events, (end, _FINISH, seq, rec.job.job_id, rec.run_id))
            seq += 1

        def end_run(rec: JobRecord) -> None:
            """Stop ``rec``'s run now (preempted or moved) and give back what it held."""
            nonlocal snapshot
            self._stop(rec, now)
            snapshot = snapshot.release(rec.job.job_id)
            if caches is not None:
                caches.release(rec.request, rec.placements[-1].nodes)

        while events:
            now = events[0][0]
            while events and events[0][0] == now:
                _, kind, _, job_id, run_id = heapq.heappop(events)
                rec = self.records.get(job_id)
                if kind == _ARRIVAL and rec is not None:
                    queue[job_id] = rec.request
                elif kind == _FINISH and rec is not None and run_id == rec.run_id:
                    snapshot = snapshot.release(job_id)
                    if caches is not None:
                        caches.release(rec.request, rec.placements[-1].nodes)
                    used -= rec.request.gpus
                    rec.held_s += now - rec.run_start
                    rec.finish = now
                    if not self.oracle:  # an oracle knows every duration already
                        history = history.add(rec.request, rec.job.duration_s)
                    timeline.append((now, used))
                elif kind == _TICK:
                    next_tick = None
            snapshot = snapshot.at(now).with_history(history)
            for _ in range(MAX_ROUNDS_PER_INSTANT):
                if not queue:
                    break
                result = self.round(snapshot, list(queue.values()))
                rounds += 1
                snapshot = result.snapshot
                for launch in result.launches:
                    rec = self.records[launch.job_id]
                    del queue[launch.job_id]
                    rec.run_id += 1
                    if rec.first_start is None:
                        rec.first_start = now
                        rec.prediction = snapshot.history.predict(rec.request)
                    begin(rec, launch.placement, self.overhead if rec.preemptions else 0.0)
                    used += rec.request.gpus
                for pre in result.preemptions:
                    rec = self.records[pre.job_id]
                    end_run(rec)
                    rec.preemptions += 1
                    used -= rec.request.gpus
                    queue[pre.job_id] = rec.request
                for move in result.migrations:
                    rec = self.records[move.job_id]
                    end_run(rec)
                    rec.moves += 1
                    snapshot = snapshot.allocate(rec.request, move.placement, started_at=now)
                    begin(rec, move.placement, self.overhead)
                decisions += len(result.launches) + len(result.preemptions)
                decisions += len(result.migrations)
                preemptions += len(result.preemptions)
                migrations += len(result.migrations)
                if result.launches or result.preemptions:
                    timeline.append((now, used))
                if not result.preemptions and not result.migrations:
                    break
            # Ticks matter only while gangs run (their service grows); with nothing running
            # and nothing else to come, a job that can never be placed must not tick forever.
            if self.tick_s and queue and snapshot.running and next_tick is None:
                next_tick = now + self.tick_s
                heapq.heappush(events, (next_tick, _TICK, seq, "", 0))
                seq += 1
        wall = time.perf_counter() - started
        metrics = self._metrics(wall, decisions, preemptions, rounds, timeline)
        if caches is not None:
            metrics.update(caches.metrics())
        name = self.policy.name + ("+oracle" if self.oracle else "")
        if caches is not None and caches.staging.blind:
            name += "+data-blind"
        records = list(self.records.values())
        errors = prediction_errors(
            (r.prediction, r.job.duration_s) for r in records if r.prediction is not None
        )
        return SimResult(name, metrics, records, timeline, errors, migrations)

    @staticmethod
    def _stop(rec: JobRecord, now: float) -> None:
        """Stop a running gang at ``now`` (preempted or moved): what it did counts, and its
        finish event no longer does."""
        ran = now - rec.run_start
        rec.remaining_s -= max(0.0, ran - rec.run_overhead_s)
        rec.held_s += ran
        rec.run_id += 1
        rec.request = replace(
            rec.request, attained_gpu_s=rec.request.attained_gpu_s + ran * rec.request.slots
        )

    def _caches(self) -> NodeCaches | None:
        if self.staging is None:
            return None
        datasets = dict.fromkeys(k for r in self.records.values() for k in r.request.datasets)
        return NodeCaches(self.staging, (n.name for n in self.nodes), datasets)

    def _metrics(
        self,
        wall: float,
        decisions: int,
        preemptions: int,
        rounds: int,
        timeline: list[tuple[float, int]],
    ) -> dict[str, Any]:
        done = [r for r in self.records.values() if r.finish is not None]
        unfinished = len(self.records) - len(done)
        if unfinished:
            msg = f"{unfinished} job(s) never finished under {self.policy.name}"
            raise RuntimeError(msg)
        busy = sum(g * (t1 - t0) for (t0, g), (t1, _) in itertools.pairwise(timeline))
        metrics = summarize(
            [(r.job.submit_s, r.finish, r.held_s) for r in done],
            busy,
            sum(len(n.gpus) for n in self.nodes),
            preemptions,
        )
        metrics["wall_s"] = round(wall, 3)
        metrics["decisions_per_s"] = round(decisions / wall, 1) if wall else 0.0
        return metrics


def summarize(
    jobs: list[tuple[float, float, float]], busy_gpu_s: float, total_gpus: int, preemptions: int
) -> dict[str, Any]:
    """The figures of a run from (submitted, finished, seconds holding GPUs) per job."""
    jct = [end - start for start, end, _ in jobs]
    queued = [end - start - held for start, end, held in jobs]
    makespan = max(end for _, end, _ in jobs) - min(start for start, _, _ in jobs)
    return {
        "avg_jct_s": round(statistics.fmean(jct), 1),
        "median_jct_s": round(statistics.median(jct), 1),
        "p99_jct_s": round(_percentile(jct, 99), 1),
        "avg_queue_s": round(statistics.fmean(queued), 1),
        "p99_queue_s": round(_percentile(queued, 99), 1),
        "makespan_s": round(makespan, 1),
        "gpu_utilization": round(busy_gpu_s / (total_gpus * makespan), 4) if makespan else 0.0,
        "preemptions": preemptions,
        "jobs": len(jobs),
    }
