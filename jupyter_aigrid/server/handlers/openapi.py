"""``/openapi.yaml``: the REST contract, served as it ships in the package."""

from __future__ import annotations

from importlib.resources import files

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import AIGridHandler


def openapi_text() -> str:
    return files("jupyter_aigrid.server").joinpath("schemas/openapi.yaml").read_text()


class OpenAPIHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(openapi_text(), set_content_type="application/yaml")
