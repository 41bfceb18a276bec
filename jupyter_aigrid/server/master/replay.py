"""What-if: the jobs that ran here replayed through the simulator under another policy.

``POST /simulate`` asks it; the simulator (:mod:`jupyter_aigrid.sim`) runs the same
``decide()`` as the master, on a trace made from this cluster's own finished jobs, and the
live figures of those jobs come alongside for comparison.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ...sim.engine import Simulator, summarize
from ...sim.trace import TraceJob
from .. import events
from ..errors import Conflict
from ..model import FINAL_STATES, PREEMPTED
from ..policies import load_policy
from ..spec import SpecError
from .core import Core, Part
from .queue import request_of, run_time_s


class Replay(Part):
    def __init__(self, core: Core, call: Callable[..., Awaitable[Any]], live_policy: Any) -> None:
        super().__init__(core)
        #: Runs a function on the master thread (the store's only user), from the event loop.
        self.call = call
        self.live_policy = live_policy

    def jobs(self) -> tuple[list[Any], list[dict[str, Any]]]:
        """The jobs that ran here, as a trace for the simulator (each with its full request,
        its submit time and how long it ran), and their rows."""
        jobs, rows = [], []
        for row in self.store.jobs(FINAL_STATES):
            if not row.started_at or not row.finished_at:
                continue  # ended before it ever ran
            ran = run_time_s(row)
            request = request_of(row)
            jobs.append(
                TraceJob(
                    job_id=row.id,
                    submit_s=row.submitted_at,
                    duration_s=ran,
                    gpus=row.gpus,
                    job_type=request.job_type,
                    user=row.owner,
                    row=row.seq,
                    request=request,
                )
            )
            rows.append(row)
        return jobs, rows

    async def simulate(
        self, policy: str, options: dict[str, Any], overhead_s: float
    ) -> dict[str, Any]:
        """Replay the jobs that ran here under ``policy``; the live figures come alongside."""
        jobs, rows = await self.call(self.jobs)
        if not jobs:
            msg = "no job has run to the end here yet: there is no history to replay"
            raise Conflict(msg)
        try:
            chosen = load_policy(policy, **options)
        except (ValueError, TypeError) as e:
            raise SpecError(str(e), field="options" if options else "policy") from e
        sim = Simulator(jobs, self.nodes.all, chosen, overhead_s, source="the job history")
        result = await asyncio.to_thread(sim.run)
        ran = {j.job_id: j.duration_s for j in jobs}
        preempted = await self.call(self.store.count_events, events.JOB_STATE, PREEMPTED)
        live = summarize(
            [(r.submitted_at, r.finished_at, ran[r.id]) for r in rows],
            sum(ran[r.id] * r.gpus for r in rows),
            sum(len(n.gpus) for n in self.nodes.all),
            preempted,
        )
        return {
            "policy": result.policy,
            "live_policy": self.live_policy.name,
            "preempt_overhead_s": overhead_s,
            "simulated": result.metrics,
            "live": live,
            "placements": {
                r.job.job_id: r.placements[0].to_json() for r in result.records if r.placements
            },
        }
