"""The base-image catalog (``/images``): what jobs run in, by id."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import Conflict, NotFound
from ..images import check_image
from ..views import image_view
from .core import Core, Part


class Catalog(Part):
    def __init__(self, core: Core, call: Callable[..., Awaitable[Any]]) -> None:
        super().__init__(core)
        #: Runs a function on the master thread (the store's only user), from the event loop.
        self.call = call

    async def images(self) -> list[dict[str, Any]]:
        return [image_view(r) for r in await self.call(self.store.images)]

    async def image(self, image_id: str) -> dict[str, Any]:
        row = await self.call(self.store.image, image_id)
        if row is None:
            msg = f"no image {image_id!r} in the catalog"
            raise NotFound(msg)
        return image_view(row)

    async def put_image(
        self, image_id: str, body: dict[str, Any], create: bool = False
    ) -> dict[str, Any]:
        """Add (``create``: refuse an existing id) or replace a catalog entry."""
        entry = check_image(image_id, body)
        if create and await self.call(self.store.image, image_id) is not None:
            msg = (
                f"image {image_id!r} is already in the catalog; PUT /images/{image_id} replaces it"
            )
            raise Conflict(msg)
        await self.call(self.store.put_image, entry)
        return await self.image(image_id)

    async def delete_image(self, image_id: str) -> None:
        if not await self.call(self.store.delete_image, image_id):
            msg = f"no image {image_id!r} in the catalog"
            raise NotFound(msg)
