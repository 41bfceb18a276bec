"""``/templates``: the job templates a request can name (or the master picks)."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..templating import templates
from .base import AIGridHandler


class TemplatesHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json({"templates": [t.view() for t in templates().values()]})
