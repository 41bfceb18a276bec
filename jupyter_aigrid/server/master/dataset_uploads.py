"""Uploads of new dataset versions: declared, sent in chunks (``server/uploads.py`` keeps the
sessions on disk), committed: hashed, recorded as a version, moved where it belongs on its
node, sealed and verified. Every user's datasets and unfinished uploads count against
``c.AIGridApp.dataset_quota_bytes``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ... import contents
from ..dataset_files import remove, seal
from ..dataset_rows import UNVERIFIED, VERIFIED
from ..errors import Conflict
from ..spec import SpecError
from ..uploads import UploadConflict, Uploads, declared_files
from ..validation import validate_body
from .core import Core, Part
from .datasets import Datasets


class DatasetUploads(Part):
    def __init__(
        self,
        core: Core,
        datasets: Datasets,
        sessions: Uploads,
        call: Callable[..., Awaitable[Any]],
        wake: Callable[[], None],
        quota_bytes: int = 0,
    ) -> None:
        super().__init__(core)
        self.datasets = datasets
        #: The upload sessions on disk (declared files, chunks received).
        self.sessions = sessions
        #: Runs a function on the master thread (the store's only user), from the event loop.
        self.call = call
        self.wake = wake
        #: Bytes each user may keep in datasets and unfinished uploads (0: no limit).
        self.quota_bytes = quota_bytes

    def _check_quota(self, owner: str, adding: int, besides: str | None = None) -> None:
        """``adding`` bytes more for ``owner``, counting their versions and their unfinished
        uploads (but upload ``besides``, the one being committed)."""
        used = self.store.bytes_owned(owner) + self.sessions.pending_bytes(owner, besides)
        if self.quota_bytes and used + adding > self.quota_bytes:
            msg = (
                f"this would put {owner}'s datasets at {used + adding} bytes, over the quota "
                f"of {self.quota_bytes} (c.AIGridApp.dataset_quota_bytes); delete "
                "some versions first"
            )
            raise SpecError(msg, "files", status=413)

    def _create_upload(self, body: dict[str, Any], user: str, admin: bool) -> dict[str, Any]:
        validate_body("UploadRequest", body, "the upload")
        try:
            name = contents.check_name(body.get("name"))
        except contents.ContentError as e:
            raise SpecError(e.message, e.field) from None
        self.datasets.may_write(name, user, admin)
        files = declared_files(body.get("files"))
        node = self.datasets.check_node(body.get("node"))
        self._check_quota(user, sum(f["size"] for f in files))
        return self.sessions.view(self.sessions.create(user, name, node, files))

    def _record_upload(
        self, meta: dict[str, Any], manifest: dict[str, Any]
    ) -> tuple[int, Path, bool]:
        """Store the version an upload makes and its location on the upload's node (to be
        verified once the tree is there). Returns (version, where it goes, must it move)."""
        name, node, owner = meta["name"], meta["node"], meta["owner"]
        with self.store.write():
            self.datasets.may_write(name, owner, admin=False)
            existing = self.store.dataset(name) is not None and any(
                v["root"] == manifest["root"] for v in self.store.dataset_versions(name)
            )
            if not existing:
                self._check_quota(owner, manifest["bytes"], besides=meta["id"])
            version, _ = self.store.add_dataset_version(name, owner, manifest)
            number = version["version"]
            loc = next(
                (x for x in self.store.dataset_locations(name, number) if x["node"] == node), None
            )
            if loc is not None and loc["state"] == VERIFIED:
                return number, self.datasets.location_path(loc), False
            path = self.datasets.managed_path(name, manifest["root"])
            self.store.put_location(name, number, node, path=path, managed=1, state=UNVERIFIED)
            return number, contents.contained(self.datasets.node_root(node), path), True

    async def create_upload(self, body: dict[str, Any], user: str, admin: bool) -> dict:
        return await self.call(self._create_upload, body, user, admin)

    async def upload(self, upload_id: str, user: str, admin: bool) -> dict[str, Any]:
        return self.sessions.view(self.sessions.meta(upload_id, None if admin else user))

    async def uploads_of(self, user: str) -> list[dict[str, Any]]:
        return [
            self.sessions.view(m) for m in await self.datasets.in_thread(self.sessions.all, user)
        ]

    async def delete_upload(self, upload_id: str, user: str, admin: bool) -> None:
        self.sessions.meta(upload_id, None if admin else user)
        await self.datasets.in_thread(self.sessions.remove, upload_id)

    async def commit_upload(self, upload_id: str, user: str, admin: bool) -> dict[str, Any]:
        """Hash the upload, store its version, move its tree where it belongs, verify it."""
        meta = self.sessions.meta(upload_id, None if admin else user)
        try:
            manifest = await self.datasets.in_thread(self.sessions.manifest, meta)
        except UploadConflict as e:
            raise SpecError(str(e), e.field, status=409) from None
        number, dest, move = await self.call(self._record_upload, meta, manifest.to_json())
        problems: list[str] = []
        if move:  # else a verified copy of these bytes is there already
            key = (meta["name"], number, meta["node"])
            self.datasets.placing.add(key)
            try:
                problems = await self.datasets.in_thread(
                    self._place_upload, upload_id, meta["node"], dest, manifest
                )
                await self.call(self.datasets.record_verified, *key, problems)
            finally:
                self.datasets.placing.discard(key)
        if problems:
            raise Conflict(f"the uploaded copy did not verify: {'; '.join(problems[:3])}")
        await self.datasets.in_thread(self.sessions.remove, upload_id)
        self.wake()
        return await self.call(self.datasets.dataset_view, meta["name"])

    def _place_upload(
        self, upload_id: str, node: str, dest: Path, manifest: contents.Manifest
    ) -> list:
        """Move the upload's tree to ``dest`` on ``node`` (through the executor's node
        files: a rename here, a verified copy to a remote node), sealed and verified."""
        files, data = self.node_files, self.sessions.data_dir(upload_id)
        if not files.put_tree(data, node, dest, manifest):
            # Already there: a commit retried after a crash, or the same bytes again.
            problems = files.verify_tree(node, dest, manifest)
            if not problems:
                return []
            files.call(node, remove, dest)
            files.put_tree(data, node, dest, manifest)
        files.call(node, seal, dest)
        return files.verify_tree(node, dest, manifest)
