"""``/datasets`` and ``/uploads``: datasets by version, their copies, and chunked uploads.

Everyone reads every dataset and may use it in a job; its owner (and admins) add versions
and delete it; admins register data already on a node. An upload is its owner's alone.
"""

from __future__ import annotations

import asyncio

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import ensure_async
from tornado import web

from ... import contents
from ..spec import SpecError, parse_body
from ..uploads import CHUNK_LIMIT, UploadConflict
from .base import AIGridHandler, query_int

API = "/aigrid/api"


def _name(name: str) -> str:
    try:
        return contents.check_name(name)
    except contents.ContentError as e:
        raise SpecError(e.message, field="name") from None


class DatasetsHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json({"datasets": await self.master.data.datasets()})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Register data already on a node (admins): ``{"name", "node", "path"}``."""
        body = parse_body(self.request.body)
        dataset = await self.master.data.register_dataset(body, self.owner, self.is_admin)
        self.set_header("Location", f"{self.base_url.rstrip('/')}{API}/datasets/{dataset['name']}")
        self.write_json(dataset, status=201)


class DatasetHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        self.write_json(await self.master.data.dataset(_name(name)))

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        """Delete the dataset, or one ``?version=N``; 409 while an unfinished job uses it."""
        version = query_int(self, "version", minimum=1)
        self.write_json(
            await self.master.data.delete_dataset(_name(name), version, self.owner, self.is_admin)
        )


class VerifyHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def post(self, name: str) -> None:
        """Hash every copy now; each one's state and verified_at are in the answer."""
        self.write_json(
            await self.master.data.verify_dataset(_name(name), self.owner, self.is_admin)
        )


class UploadsHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        """The caller's unfinished uploads (to resume one)."""
        self.write_json({"uploads": await self.master.uploads.uploads_of(self.owner)})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Begin an upload: ``{"name", "files": [{"path", "size", "hash"?}], "node"?}``."""
        body = parse_body(self.request.body)
        upload = await self.master.uploads.create_upload(body, self.owner, self.is_admin)
        self.set_header("Location", f"{self.base_url.rstrip('/')}{API}/uploads/{upload['id']}")
        self.write_json(upload, status=201)


class UploadHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self, upload_id: str) -> None:
        self.write_json(await self.master.uploads.upload(upload_id, self.owner, self.is_admin))

    @web.authenticated
    @authorized
    async def delete(self, upload_id: str) -> None:
        await self.master.uploads.delete_upload(upload_id, self.owner, self.is_admin)
        self.write_json({"deleted": upload_id})


class CommitHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def post(self, upload_id: str) -> None:
        """Hash what arrived and make it a version of the dataset (201, the dataset)."""
        dataset = await self.master.uploads.commit_upload(upload_id, self.owner, self.is_admin)
        self.set_header("Location", f"{self.base_url.rstrip('/')}{API}/datasets/{dataset['name']}")
        self.write_json(dataset, status=201)


@web.stream_request_body
class UploadDataHandler(AIGridHandler):
    """``PUT /uploads/{id}/data?path=P&offset=N``: the body (at most 64 MiB) is appended to
    file P, which must have received exactly N bytes so far; it goes to disk as it arrives."""

    _writer = None
    _error: SpecError | None = None

    async def prepare(self) -> None:
        await super().prepare()
        if self._finished:
            return
        # The body streams in before put() runs, so authentication and authorization come
        # first, here, rather than through the decorators.
        if self.current_user is None:
            raise web.HTTPError(403)
        allowed = await ensure_async(
            self.authorizer.is_authorized(self, self.current_user, "write", self.auth_resource)
        )
        if not allowed:
            raise web.HTTPError(403, f"not authorized to write {self.auth_resource}")
        if self.request.method != "PUT":
            return
        length = int(self.request.headers.get("Content-Length") or 0)
        if length > CHUNK_LIMIT:
            msg = f"a chunk may be at most {CHUNK_LIMIT} bytes, this one is {length}"
            raise SpecError(msg, field="Content-Length", status=413)
        self.request.connection.set_max_body_size(CHUNK_LIMIT)
        path = self.get_query_argument("path", None)
        offset = query_int(self, "offset")
        if path is None or offset is None:
            raise SpecError("query arguments 'path' and 'offset' are required", field="path")
        try:
            path = contents.check_relpath(path, "path")
        except contents.ContentError as e:
            raise SpecError(e.message, field="path") from None
        try:
            self._writer = self.master.uploads.sessions.writer(
                self.path_kwargs["upload_id"], self.owner, path, offset
            )
        except UploadConflict as e:
            raise SpecError(str(e), field="offset", status=409) from None

    def data_received(self, chunk: bytes) -> None:
        if self._writer is not None and self._error is None:
            try:
                self._writer.write(chunk)
            except SpecError as e:
                self._error = e  # answered once the body is in (put)

    @web.authenticated  # checked in prepare() too, before any byte is written
    @authorized
    async def put(self, upload_id: str) -> None:
        writer, self._writer = self._writer, None
        if self._error is not None:
            writer.close()
            raise self._error
        received = await asyncio.get_running_loop().run_in_executor(None, writer.close)
        self.write_json({"path": self.get_query_argument("path"), "received": received})

    def on_finish(self) -> None:
        self._close()

    def on_connection_close(self) -> None:
        self._close()
        super().on_connection_close()

    def _close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()  # keeps what arrived: the client resumes after it
