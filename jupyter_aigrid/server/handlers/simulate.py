"""``/simulate``: what if the jobs that ran here had been scheduled by another policy?"""

from __future__ import annotations

import math

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..spec import SpecError, parse_fields
from .base import AIGridHandler


class SimulateHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Body ``{"policy": NAME, "options": {...}, "preempt_overhead_s": 40}``: the master's
        finished jobs replayed through the simulator under that policy, next to the live run.
        Admins only (it sums up every user's jobs)."""
        if not self.is_admin:
            raise web.HTTPError(403, "only admins may replay the cluster's job history")
        body = parse_fields(self.request.body, ("policy", "options", "preempt_overhead_s"))
        policy = body.get("policy")
        if not isinstance(policy, str) or not policy:
            raise SpecError("'policy' must be the name of a policy, e.g. fifo", field="policy")
        options = body.get("options", {})
        if not isinstance(options, dict):
            raise SpecError("'options' must be an object of policy options", field="options")
        overhead = body.get("preempt_overhead_s", 40.0)
        if (
            isinstance(overhead, bool)
            or not isinstance(overhead, (int, float))
            or not math.isfinite(overhead)
            or overhead < 0
        ):
            msg = f"'preempt_overhead_s' must be a number >= 0, got {overhead!r}"
            raise SpecError(msg, field="preempt_overhead_s")
        self.write_json(await self.master.replay.simulate(policy, options, float(overhead)))
