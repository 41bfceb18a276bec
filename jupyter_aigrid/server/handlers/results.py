"""``/jobs/{id}/result``: how the job ended, and the metrics its ranks reported."""

from __future__ import annotations

import asyncio
import os

from jupyter_server.auth.decorator import authorized
from tornado import web

from ...safefs import open_inside
from .base import AIGridHandler


class ResultHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        self.write_json(await self.master.result(job_id, self.owner, self.is_admin))


class OutputHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str, name: str) -> None:
        """Rank 0's global ``name`` as pickled by the runner (``outputs`` of the JobSpec)."""
        path = await self.master.output_path(job_id, name, self.owner, self.is_admin)
        try:
            # From the results folder down: the job may have made ``outputs`` a link.
            f = await asyncio.to_thread(open_inside, path, path.parent.parent)
        except OSError as e:  # replaced by a link since it was listed: not an output
            raise web.HTTPError(404, f"job {job_id} has no output {name!r}") from e
        self.set_header("Content-Type", "application/vnd.python.pickle")
        self.set_header("Content-Length", str(os.fstat(f.fileno()).st_size))
        try:
            while chunk := await asyncio.to_thread(f.read, 1 << 20):
                self.write(chunk)
                await self.flush()
        finally:
            f.close()
        self.finish()
