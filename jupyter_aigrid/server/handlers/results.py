"""``/jobs/{id}/result``: how the job ended, and the metrics its ranks reported."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import AIGridHandler


class ResultHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        self.write_json(await self.master.result(job_id, self.owner, self.is_admin))
