"""Chunked, resumable dataset uploads, streamed to disk under ``<state_dir>/uploads``.

An upload declares its files (relative paths and sizes, optionally their BLAKE3 hashes), then
receives each file's bytes in chunks at explicit offsets. What a file has received is its
length on disk, fsynced before a chunk is acknowledged, so an interrupted upload (a dropped
connection, a restarted master) resumes where the last acknowledged chunk ended. Committing
hashes what arrived, compares it with what was declared, and hands the tree to the dataset
registry. Nothing here touches the store; the master checks names, owners and quotas.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from .. import contents
from ..safefs import write_atomic
from .errors import NotFound
from .spec import SpecError
from .views import iso

#: Most bytes one PUT may carry (the client sends 8 MiB).
CHUNK_LIMIT = 64 * 2**20
#: Most files one upload may declare (``maxItems`` of ``UploadRequest.files``: keep in step).
MAX_FILES = 100_000
_ID = re.compile(r"^[0-9a-f]{24}$")


class UploadConflict(RuntimeError):
    """A chunk at the wrong offset, a file written twice at once, or an incomplete commit;
    ``field`` names what the client must change."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _field_error(message: str, field: str) -> SpecError:
    return SpecError(message, field=field)


def declared_files(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``files`` of a new upload (already valid against ``UploadRequest`` in
    ``openapi.yaml``: a list of at most MAX_FILES ``{"path", "size", "hash"?}``), with the
    rules a schema cannot say: every path contained, listed once, and no file also a folder."""
    out, seen = [], set()
    for i, item in enumerate(files):
        where = f"files[{i}]"
        try:
            path = contents.check_relpath(item.get("path"), f"{where}.path")
        except contents.ContentError as e:
            raise _field_error(e.message, e.field or f"{where}.path") from None
        size, digest = item["size"], item.get("hash")
        if path in seen:
            raise _field_error(f"{where}.path {path!r} is listed twice", where)
        seen.add(path)
        out.append({"path": path, "size": size, "hash": digest})
    for path in seen:
        parts = path.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder in seen:
                raise _field_error(f"{folder!r} cannot be both a file and a folder", "files")
    return out


class Uploads:
    """The upload area. Thread-safe: handlers call it from the event loop and from threads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._busy: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    # -- reading ------------------------------------------------------------------------------

    def _dir(self, upload_id: str) -> Path:
        if not isinstance(upload_id, str) or not _ID.match(upload_id):
            raise NotFound(f"no upload {upload_id!r}")
        return self.root / upload_id

    def meta(self, upload_id: str, owner: str | None = None) -> dict[str, Any]:
        """The stored description of an upload; 404 if it does not exist or is not ``owner``'s
        (``owner`` None: anyone's)."""
        try:
            meta = json.loads((self._dir(upload_id) / "upload.json").read_text())
        except (OSError, ValueError):
            raise NotFound(f"no upload {upload_id!r}") from None
        if owner is not None and meta["owner"] != owner:
            raise NotFound(f"no upload {upload_id!r}")
        return meta

    def data_dir(self, upload_id: str) -> Path:
        return self._dir(upload_id) / "data"

    def received(self, upload_id: str, path: str) -> int:
        try:
            return os.stat(contents.contained(self.data_dir(upload_id), path)).st_size
        except FileNotFoundError:
            return 0

    def view(self, meta: dict[str, Any]) -> dict[str, Any]:
        files = [{**f, "received": self.received(meta["id"], f["path"])} for f in meta["files"]]
        return {
            "id": meta["id"],
            "name": meta["name"],
            "owner": meta["owner"],
            "node": meta["node"],
            "created_at": iso(meta["created_at"]),
            "bytes": sum(f["size"] for f in files),
            "received": sum(min(f["received"], f["size"]) for f in files),
            "complete": all(f["received"] == f["size"] for f in files),
            "files": files,
        }

    def all(self, owner: str | None = None) -> list[dict[str, Any]]:
        """Open uploads (``owner``'s, or everyone's), oldest first."""
        found = []
        for entry in sorted(self.root.iterdir()):
            if _ID.match(entry.name):
                try:
                    found.append(self.meta(entry.name, owner))
                except NotFound:
                    continue
        return sorted(found, key=lambda m: m["created_at"])

    def pending_bytes(self, owner: str, besides: str | None = None) -> int:
        """What ``owner``'s unfinished uploads (but ``besides``) declare."""
        return sum(
            sum(f["size"] for f in m["files"]) for m in self.all(owner) if m["id"] != besides
        )

    # -- writing ------------------------------------------------------------------------------

    def create(self, owner: str, name: str, node: str, files: list[dict[str, Any]]) -> dict:
        upload_id = secrets.token_hex(12)
        folder = self.root / upload_id
        (folder / "data").mkdir(parents=True)
        meta = {
            "id": upload_id,
            "name": name,
            "owner": owner,
            "node": node,
            "created_at": time.time(),
            "files": files,
        }
        write_atomic(folder / "upload.json", json.dumps(meta).encode())
        return meta

    def writer(self, upload_id: str, owner: str, path: str, offset: int) -> Writer:
        """A writer that appends to ``path`` from ``offset``, which must be what the file
        has received so far (else :class:`UploadConflict`, naming the offset to send from)."""
        meta = self.meta(upload_id, owner)
        declared = {f["path"]: f["size"] for f in meta["files"]}
        if path not in declared:
            raise _field_error(f"the upload does not declare a file {path!r}", "path")
        key = (upload_id, path)
        with self._lock:
            if key in self._busy:
                raise UploadConflict(f"{path!r} is being written by another request")
            self._busy.add(key)
        try:
            target = contents.contained(self.data_dir(upload_id), path)
            target.parent.mkdir(parents=True, exist_ok=True)
            contents.contained(self.data_dir(upload_id), path)  # no link planted meanwhile
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except BaseException:
            self._release(key)
            raise
        have = os.fstat(fd).st_size
        if offset != have:
            os.close(fd)
            self._release(key)
            raise UploadConflict(f"{path!r} has received {have} bytes; send from offset {have}")
        os.lseek(fd, have, os.SEEK_SET)
        return Writer(self, key, fd, have, declared[path])

    def _release(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._busy.discard(key)

    def check_complete(self, meta: dict[str, Any]) -> None:
        for f in meta["files"]:
            got = self.received(meta["id"], f["path"])
            if got != f["size"]:
                msg = f"{f['path']!r} has {got} of its {f['size']} bytes; send the rest first"
                raise UploadConflict(msg, field="offset")

    def manifest(self, meta: dict[str, Any], progress=None) -> contents.Manifest:
        """Hash what arrived; it must be exactly the declared files, with any declared hash."""
        self.check_complete(meta)
        manifest = contents.build_manifest(self.data_dir(meta["id"]), progress)
        declared = {f["path"]: f for f in meta["files"]}
        got = {f.path: f for f in manifest.files}
        if set(got) != set(declared):
            extra = sorted(set(got) ^ set(declared))[:3]
            raise UploadConflict(f"the upload's files differ from those declared: {extra}")
        for i, (path, f) in enumerate(declared.items()):
            if f.get("hash") and f["hash"] != got[path].hash:
                raise UploadConflict(
                    f"{path!r} arrived with BLAKE3 {got[path].hash[:16]}..., not the declared "
                    f"{f['hash'][:16]}...; delete the upload and send it again",
                    field=f"files[{i}].hash",
                )
        return manifest

    def remove(self, upload_id: str) -> None:
        folder = self._dir(upload_id)
        if folder.exists():
            contents.remove_tree(folder)


class Writer:
    """Appends one request's bytes to an upload's file; :meth:`close` fsyncs and says how
    much the file holds. Closing after a dropped connection keeps what arrived."""

    def __init__(self, uploads: Uploads, key: tuple[str, str], fd: int, have: int, size: int):
        self._uploads, self._key, self._fd = uploads, key, fd
        self.received, self.size = have, size

    def write(self, data: bytes) -> None:
        if self.received + len(data) > self.size:
            msg = (
                f"{self._key[1]!r} was declared as {self.size} bytes; this chunk goes past it "
                f"(it has {self.received})"
            )
            raise _field_error(msg, "offset")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.received += len(data)

    def close(self) -> int:
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1
                self._uploads._release(self._key)
        return self.received
