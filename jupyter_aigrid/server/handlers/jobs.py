"""``/jobs``: submit, list, inspect and cancel jobs."""

from __future__ import annotations

import asyncio

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..model import JOB_STATES
from ..spec import SpecError, parse_submission
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
