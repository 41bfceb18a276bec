"""``/cluster``: nodes, their GPUs, who holds each GPU, and live utilisation."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..spec import SpecError
from .base import AIGridHandler


class ClusterHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json(await self.master.cluster())


class ProfilesHandler(AIGridHandler):
    """``/profiles[?model=M]``: what the master has learnt of each model on each resource
    type, and the resource types with their cost and free GPUs."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        model = self.get_query_argument("model", None)
        if model is not None and not (0 < len(model) <= 256 and model.isprintable()):
            msg = "query argument 'model' must be 1 to 256 printable characters"
            raise SpecError(msg, field="model")
        self.write_json(await self.master.profiles(model))
