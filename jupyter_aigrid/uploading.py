"""Uploading a local file or folder as a dataset version: hashed here, sent in chunks, resumed.

>>> upload = DatasetUpload(client, "data/mnist", "mnist")
>>> upload.hash()                 # BLAKE3 of every file, as the master will check them
>>> upload.start()                # an unfinished upload of the same files, or a new one
>>> upload.send(progress=print)   # what the master has not acknowledged, chunk by chunk
>>> dataset = upload.commit()     # the master hashes what arrived: a new version

:meth:`Client.upload_dataset <jupyter_aigrid.client.Client.upload_dataset>` does all four.
What a file has received is what the master has fsynced, so an upload cut short (Ctrl-C, a
dropped connection, a restarted master) is resumed by running it again: the files are hashed
again, the unfinished upload with the same name and the same files is found, and each file
continues from the offset the master reports.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import contents
from .wire import CHUNK_BYTES, AIGridError


class Client(Protocol):
    """What an upload needs of :class:`jupyter_aigrid.client.Client` (which it is, in use)."""

    def dataset(self, name: str) -> dict[str, Any]: ...
    def create_upload(
        self, name: str, files: list[dict[str, Any]], node: str | None = None
    ) -> dict[str, Any]: ...
    def uploads(self) -> list[dict[str, Any]]: ...
    def upload(self, upload_id: str) -> dict[str, Any]: ...
    def delete_upload(self, upload_id: str) -> dict[str, Any]: ...
    def put_chunk(self, upload_id: str, path: str, offset: int, body: Any) -> int: ...
    def commit_upload(self, upload_id: str) -> dict[str, Any]: ...


#: Failures in a row (dropped connections, offset conflicts) after which a send gives up.
MAX_RETRIES = 5
RETRY_S = 1.0

Progress = Callable[[int, int], object]


class UploadError(AIGridError):
    """What is to be uploaded cannot be: a link, a missing path, a file that changed."""

    def __init__(self, message: str, field: str | None = "path") -> None:
        super().__init__(message, 0, field)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class LocalFile:
    """One file to send: its path in the dataset, where it is here, its size and BLAKE3."""

    path: str
    source: Path
    size: int
    hash: str | None = None

    def declared(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "hash": self.hash}


def local_files(path: str | os.PathLike[str]) -> list[LocalFile]:
    """The files under folder ``path``, or the file ``path`` alone (named by its basename),
    not yet hashed. A link anywhere, or anything but regular files and folders, is refused."""
    root = Path(path).expanduser()
    try:
        mode = os.lstat(root).st_mode
    except FileNotFoundError:
        raise UploadError(f"{path}: no such file or folder") from None
    except OSError as e:
        raise UploadError(f"{path}: {e.strerror}") from None
    if stat.S_ISLNK(mode):
        msg = f"{path} is a symlink; datasets hold no links: upload what it points to instead"
        raise UploadError(msg)
    if stat.S_ISREG(mode):
        try:
            name = contents.check_relpath(root.name)
        except contents.ContentError as e:
            raise UploadError(e.message) from None
        return [LocalFile(name, root, root.stat().st_size)]
    if not stat.S_ISDIR(mode):
        raise UploadError(f"{path} is neither a regular file nor a folder")
    try:
        found = contents.walk(root)
    except contents.ContentError as e:
        raise UploadError(f"cannot upload {path}: {e.message}") from None
    except OSError as e:
        raise UploadError(f"cannot read {path}: {e}") from None
    if not found:
        raise UploadError(f"{path} holds no files: there is nothing to upload")
    return [LocalFile(rel, root.joinpath(*rel.split("/")), size) for rel, size in found]


class _Chunk:
    """``length`` bytes of an open file from ``offset``, read as requests sends them: the
    body of one PUT streams from disk instead of sitting in memory."""

    def __init__(self, fd: int, offset: int, length: int, label: str) -> None:
        self._fd, self._offset, self._left, self._label = fd, offset, length, label
        self._length = length

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        want = self._left if size is None or size < 0 else min(size, self._left)
        if want <= 0:
            return b""
        data = os.pread(self._fd, want, self._offset)
        if not data:
            raise UploadError(f"{self._label} got shorter while it was uploaded; run it again")
        self._offset += len(data)
        self._left -= len(data)
        return data

    def __iter__(self):
        while data := self.read(1 << 20):
            yield data


class DatasetUpload:
    """An upload of ``path`` (a file or a folder) as the next version of dataset ``name``
    (see the module docstring). ``node`` is where the first copy goes (default: the master's
    choice). ``chunk_bytes`` is what one request carries (the master takes up to 64 MiB)."""

    def __init__(
        self,
        client: Client,
        path: str | os.PathLike[str],
        name: str,
        node: str | None = None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        try:
            self.name = contents.check_name(name)
        except contents.ContentError as e:
            raise UploadError(e.message, "name") from None
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be at least 1")
        self.client = client
        self.node = node
        self.chunk_bytes = chunk_bytes
        self.files = local_files(path)
        self.total = sum(f.size for f in self.files)
        #: The master's view of the upload (``GET /uploads/{id}``) once started.
        self.upload: dict[str, Any] | None = None
        #: Bytes the master already had when this upload was resumed (0 when new).
        self.resumed = 0
        #: Bytes this object has sent (what a resumed upload did not need again).
        self.sent = 0
        self._received: dict[str, int] = {}

    @property
    def hashed(self) -> bool:
        return all(f.hash is not None for f in self.files)

    @property
    def root(self) -> str:
        """The root hash the dataset version will have (see :mod:`jupyter_aigrid.contents`)."""
        if not self.hashed:
            self.hash()
        return contents.Manifest.of(
            contents.FileEntry(f.path, f.size, f.hash or "") for f in self.files
        ).root

    @property
    def received(self) -> int:
        """Bytes the master has acknowledged, all files together."""
        return sum(self._received.values())

    def hash(self, progress: Progress | None = None) -> None:
        """BLAKE3 every file; ``progress(hashed, total)`` as the bytes go by."""
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, self.total)

        hashed = []
        for f in self.files:
            try:
                digest = contents.hash_file(f.source, step)
            except contents.ContentError as e:
                raise UploadError(f"cannot upload {f.source}: {e.message}") from None
            except OSError as e:
                raise UploadError(f"cannot read {f.source}: {e.strerror}") from None
            hashed.append(LocalFile(f.path, f.source, f.size, digest))
        self.files = hashed

    def existing(self) -> dict[str, Any] | None:
        """The version of the dataset that already holds exactly these files, with a
        verified copy (on ``node``, if one was asked for); None if there is none."""
        try:
            dataset = self.client.dataset(self.name)
        except AIGridError as e:
            if e.status == 404:
                return None
            raise
        root = self.root
        for version in dataset["versions"]:
            copies = [c for c in version["locations"] if c["state"] == "verified"]
            if version["root"] == root and any(self.node in (None, c["node"]) for c in copies):
                return version
        return None

    def start(self) -> dict[str, Any]:
        """Resume this user's unfinished upload of the same name and files (the one the
        master holds most of), or begin one. Unfinished uploads of the name with other files
        can never be resumed, and count against the quota: they are deleted."""
        if not self.hashed:
            self.hash()
        wanted = [f.declared() for f in self.files]
        same, stale = [], []
        for upload in self.client.uploads():
            if upload["name"] != self.name:
                continue
            files = [{k: f.get(k) for k in ("path", "size", "hash")} for f in upload["files"]]
            matches = sorted(files, key=lambda f: f["path"]) == wanted
            if matches and self.node in (None, upload["node"]):
                same.append(upload)
            elif not matches:
                stale.append(upload)
        for upload in stale:
            self.client.delete_upload(upload["id"])
        if same:
            self.upload = max(same, key=lambda u: u["received"])
            self.resumed = self.upload["received"]
        else:
            self.upload = self.client.create_upload(self.name, wanted, self.node)
        self._take(self.upload)
        return self.upload

    def _take(self, upload: dict[str, Any]) -> None:
        self.upload = upload
        self._received = {f["path"]: min(f["received"], f["size"]) for f in upload["files"]}

    def _refresh(self) -> None:
        assert self.upload is not None
        self._take(self.client.upload(self.upload["id"]))

    def send(self, progress: Progress | None = None) -> None:
        """Send every file's bytes from what the master has received, ``chunk_bytes`` per
        request; ``progress(received, total)`` first, then after each acknowledged chunk.

        A 409 (the master holds more or less of a file than this thought: a chunk whose
        answer was lost) or a dropped connection makes it read the upload again and go on
        from there; :data:`MAX_RETRIES` such failures in a row end it.
        """
        if self.upload is None:
            self.start()
        if progress is not None:
            progress(self.received, self.total)
        for f in self.files:
            if self._received[f.path] < f.size:
                self._send_file(f, progress)

    def _send_file(self, f: LocalFile, progress: Progress | None) -> None:
        assert self.upload is not None
        try:
            fd = os.open(f.source, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            raise UploadError(f"cannot read {f.source}: {e.strerror}") from None
        failures = 0
        try:
            while (offset := self._received[f.path]) < f.size:
                if os.fstat(fd).st_size != f.size:
                    msg = f"{f.source} changed size since it was hashed; run the upload again"
                    raise UploadError(msg)
                length = min(self.chunk_bytes, f.size - offset)
                body = _Chunk(fd, offset, length, str(f.source))
                try:
                    got = self.client.put_chunk(self.upload["id"], f.path, offset, body)
                except AIGridError as e:
                    if isinstance(e, UploadError) or e.status not in (0, 409):
                        raise
                    failures = self._recover(e, failures)
                    continue
                failures = 0
                self.sent += got - offset
                self._received[f.path] = got
                if progress is not None:
                    progress(self.received, self.total)
        finally:
            os.close(fd)

    def _recover(self, error: AIGridError, failures: int) -> int:
        """After a failed chunk, wait a little and read where the master really is; the
        failures in a row so far. Raises ``error`` (or the latest) after MAX_RETRIES."""
        while True:
            failures += 1
            if failures > MAX_RETRIES:
                raise error
            # A dropped connection may be a master restarting; a conflict, the previous
            # request's writer still closing.
            time.sleep(RETRY_S * failures if error.status == 0 else 0.1 * failures)
            try:
                self._refresh()
            except AIGridError as e:
                if e.status != 0:
                    raise
                error = e
                continue
            return failures

    def commit(self) -> dict[str, Any]:
        """Make the upload a version of the dataset; the dataset (``GET /datasets/{name}``).

        If the master finds a file other than it was declared (it changed while it was
        sent), the upload is deleted, so that running it again starts afresh.
        """
        assert self.upload is not None
        try:
            return self.client.commit_upload(self.upload["id"])
        except AIGridError as e:
            if e.status == 409 and "declared" in e.message:
                self.client.delete_upload(self.upload["id"])
                self.upload = None
                msg = f"{e.message}. The upload was discarded; run it again"
                raise UploadError(msg, None) from e
            raise

    def run(self, progress: Progress | None = None) -> dict[str, Any]:
        """Hash, start (or resume), send, commit; the dataset. Nothing is sent when a version
        of the dataset already holds these files."""
        self.hash()
        if self.existing() is not None:
            if progress is not None:
                progress(self.total, self.total)
            return self.client.dataset(self.name)
        self.start()
        self.send(progress)
        return self.commit()


def upload_dataset(
    client: Client,
    path: str | os.PathLike[str],
    name: str,
    node: str | None = None,
    progress: Progress | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, Any]:
    """See :meth:`jupyter_aigrid.client.Client.upload_dataset`."""
    return DatasetUpload(client, path, name, node, chunk_bytes).run(progress)
