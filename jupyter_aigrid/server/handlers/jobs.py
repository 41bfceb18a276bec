"""``/jobs``: submit, list, inspect and cancel jobs."""

from __future__ import annotations

import asyncio

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..model import JOB_STATES
from ..spec import SpecError, parse_fields, parse_submission
from .base import AIGridHandler


class JobsHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        state = self.get_query_argument("state", None) or None
        if state is not None and state not in JOB_STATES:
            msg = f"unknown state {state!r}; use one of: {', '.join(JOB_STATES)}"
            raise SpecError(msg, field="state")
        owner = self.get_query_argument("owner", None) or None
        jobs = await self.master.jobs(self.owner, self.is_admin, state=state, owner=owner)
        self.write_json({"jobs": jobs})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        spec, inputs = await asyncio.to_thread(parse_submission, self.request.body)
        job = await self.master.submit(spec, self.owner, inputs)
        self.set_header("Location", self.reverse_url_for(job["id"]))
        self.write_json(job, status=201)

    def reverse_url_for(self, job_id: str) -> str:
        return f"{self.base_url.rstrip('/')}/aigrid/api/jobs/{job_id}"


class JobHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        self.write_json(await self.master.job(job_id, self.owner, self.is_admin))

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        """Cancel: a queued job ends at once, a running gang is stopped (SIGTERM, then KILL)."""
        self.write_json(await self.master.cancel(job_id, self.owner, self.is_admin), status=202)


class CheckpointHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        """Ask a running job for a checkpoint; it answers at its next step boundary."""
        parse_fields(self.request.body, ())
        job = await self.master.checkpoint(job_id, self.owner, self.is_admin)
        self.write_json(job, status=202)


class MigrateHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        """Move a running job: checkpoint, stop, transfer, restore (``node`` optional)."""
        node = parse_fields(self.request.body, ("node",)).get("node")
        if node is not None and (not isinstance(node, str) or not node or len(node) > 253):
            msg = "'node' must be the name of a node of the cluster (GET /cluster lists them)"
            raise SpecError(msg, field="node")
        job = await self.master.migrate(job_id, self.owner, self.is_admin, node)
        self.write_json(job, status=202)
