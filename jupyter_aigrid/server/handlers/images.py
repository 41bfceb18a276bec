"""``/images``: the base-image catalog. Everyone reads it; admins edit it."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..spec import SpecError, parse_body
from .base import AIGridHandler


class _AdminWrites(AIGridHandler):
    def require_admin(self) -> None:
        if not self.is_admin:
            raise web.HTTPError(403, "only admins may edit the image catalog")


class ImagesHandler(_AdminWrites):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json({"images": await self.master.catalog.images()})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Add an image: ``{"id", "ref", "framework", "framework_version", "cuda", "python",
        "description"}``; 201 with its Location."""
        self.require_admin()
        body = parse_body(self.request.body)
        image_id = body.get("id")
        if not isinstance(image_id, str):
            raise SpecError("'id' must be a string, e.g. pytorch-2.13-cuda12.8", field="id")
        image = await self.master.catalog.put_image(image_id, body, create=True)
        self.set_header("Location", f"{self.base_url.rstrip('/')}/aigrid/api/images/{image_id}")
        self.write_json(image, status=201)


class ImageHandler(_AdminWrites):
    @web.authenticated
    @authorized
    async def get(self, image_id: str) -> None:
        self.write_json(await self.master.catalog.image(image_id))

    @web.authenticated
    @authorized
    async def put(self, image_id: str) -> None:
        """Add or replace the image ``image_id`` (the body's ``id``, if any, must match)."""
        self.require_admin()
        body = parse_body(self.request.body)
        if body.get("id", image_id) != image_id:
            msg = f"the body's id {body.get('id')!r} differs from the path's {image_id!r}"
            raise SpecError(msg, field="id")
        self.write_json(await self.master.catalog.put_image(image_id, body))

    @web.authenticated
    @authorized
    async def delete(self, image_id: str) -> None:
        self.require_admin()
        await self.master.catalog.delete_image(image_id)
        self.write_json({"deleted": image_id})
