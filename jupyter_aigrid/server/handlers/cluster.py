"""``/cluster``: nodes, their GPUs, who holds each GPU, and live utilisation."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import AIGridHandler


class ClusterHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json(await self.master.cluster())
