"""Checkpoints on disk: the format, and what a job's runtime does with it (write a piece,
verify and load it, prune old ones, answer the master through control files).

One folder per checkpoint, one piece per rank, each piece with its own manifest::

    <root>/ckpt-<attempt>.<seq>/rank-<r>.pt     the state rank r saved
    <root>/ckpt-<attempt>.<seq>/rank-<r>.json   its manifest: sha256 and size of every file,
                                                the world size, the step, when
    <root>/.control/                            the master's requests and the ranks' answers
    <root>/.copies/ckpt-<attempt>.<seq>/...     copies of other nodes' pieces (the newest)

``root`` is a job's ``AIGRID_CHECKPOINT_DIR`` on one node. ``attempt`` is the attempt of the
gang that wrote it and ``seq`` counts on from the checkpoint that attempt restored: newer
means (attempt, seq) greater, so a piece of a line abandoned at a restore never pairs with one
of the line that replaced it, nor passes for newer. A piece exists once its manifest does: the
data file is written to a temp file, fsynced and renamed, and the manifest after it, the same
way. A checkpoint is complete when every rank's piece is there, and verified when every file
hashes to its manifest. The master's side (listing, staging, copies between nodes, requests)
is :mod:`jupyter_aigrid.server.checkpoint_transfer`. Only the standard library is used
(containers carry this module).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from . import safefs
from .safefs import create_new, hash_fd, open_inside, write_atomic

FORMAT = 1
CONTROL = ".control"
#: Where a node keeps the copies of other nodes' pieces (``checkpoint_transfer``).
COPIES = ".copies"
#: A checkpoint write is handed to the disk in slices this big as it is written.
SLICE = 64 * 1024 * 1024
#: Writes at least this big are hashed in a second thread while they are written.
PARALLEL_HASH = 1024 * 1024
_NAME = re.compile(r"ckpt-(\d{4,})\.(\d{6,})\Z")


class CheckpointError(Exception):
    """A checkpoint piece is missing, partial or does not match its manifest."""


def name_of(attempt: int, seq: int) -> str:
    return f"ckpt-{attempt:04d}.{seq:06d}"


def parse_name(name: str) -> tuple[int, int] | None:
    """(attempt, seq) of a checkpoint folder's name, which orders them; None for others."""
    m = _NAME.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def data_file(rank: int) -> str:
    return f"rank-{rank}.pt"


def manifest_file(rank: int) -> str:
    return f"rank-{rank}.json"


class HashingWriter:
    """The file object a checkpoint is written through: it hashes (sha256) and counts what
    is written, as it is written, and starts the disk on it straight away.

    A big write (a tensor's storage: torch writes each in one call) is hashed in a second
    thread while it is written (hashlib and file writes both release the GIL), in slices
    that the kernel starts writing back at once (``SYNC_FILE_RANGE_WRITE``), so hashing,
    copying into the page cache and the disk all work at the same time and the fsync at the
    end has little left to wait for. Hashing the file back afterwards costs a second pass.
    """

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0
        self._written_back = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if view.ndim != 1 or view.format not in ("B", "b", "c"):
            view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
        n = view.nbytes
        if n < PARALLEL_HASH:
            self.sha.update(view)
            self.f.write(view)
        else:
            hashing = threading.Thread(target=self.sha.update, args=(view,), name="aigrid-hash")
            hashing.start()
            try:
                for offset in range(0, n, SLICE):
                    self.f.write(view[offset : offset + SLICE])
                    self._write_back(self.size + min(offset + SLICE, n))
            finally:
                hashing.join()
        self.size += n
        return n

    def _write_back(self, end: int) -> None:
        call = safefs.writeback()
        if call is None or end - self._written_back < SLICE:
            return
        self.f.flush()
        if call(self.f.fileno(), self._written_back, end - self._written_back, 2) == 0:
            self._written_back = end

    def flush(self) -> None:
        self.f.flush()

    def digest(self) -> tuple[str, int]:
        return self.sha.hexdigest(), self.size


def real_dir(path: Path) -> Path:
    """Create ``path`` if needed and insist it is a directory, not a link to one."""
    path.mkdir(parents=True, exist_ok=True)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        msg = f"{path} is not a directory"
        raise CheckpointError(msg)
    return path


def write_piece(
    folder: Path, rank: int, world_size: int, write: Callable[[Any], None], meta: dict[str, Any]
) -> dict[str, Any]:
    """Write rank ``rank``'s piece into ``folder``: ``write(f)`` writes the data (``f`` is a
    :class:`HashingWriter`: the sha256 is taken as it is written); the manifest (with
    ``meta``) follows once the data is durable. Returns the manifest."""
    real_dir(folder)
    target = folder / data_file(rank)
    tmp = folder / f".{target.name}.{os.getpid()}.tmp"
    try:
        with os.fdopen(create_new(tmp), "wb") as f:
            sink = HashingWriter(f)
            write(sink)
            f.flush()
            os.fsync(f.fileno())
            sha, size = sink.digest()
            if os.fstat(f.fileno()).st_size != size:
                msg = f"{target.name}: {size} bytes written, the file holds another size"
                raise CheckpointError(msg)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    manifest = {
        **meta,
        "format": FORMAT,
        "rank": rank,
        "world_size": world_size,
        "time": time.time(),
        "files": {target.name: {"sha256": sha, "bytes": size}},
    }
    write_atomic(folder / manifest_file(rank), json.dumps(manifest).encode())
    return manifest


def read_manifest(folder: Path, rank: int, root: Path) -> dict[str, Any]:
    """The manifest of ``rank``'s piece in ``folder`` (below ``root``), read without links."""
    path = folder / manifest_file(rank)
    try:
        with open_inside(path, root) as f:
            manifest = json.loads(f.read(1024 * 1024).decode("utf-8"))
    except FileNotFoundError:
        msg = f"rank {rank} has no manifest"
        raise CheckpointError(msg) from None
    except (OSError, ValueError) as e:
        msg = f"rank {rank}'s manifest cannot be read ({e})"
        raise CheckpointError(msg) from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (
        not isinstance(files, dict)
        or set(files) != {data_file(rank)}
        or not isinstance(files[data_file(rank)], dict)
        or not isinstance(files[data_file(rank)].get("sha256"), str)
        or not isinstance(files[data_file(rank)].get("bytes"), int)
        or manifest.get("rank") != rank
        or not isinstance(manifest.get("world_size"), int)
    ):
        msg = f"rank {rank}'s manifest is malformed"
        raise CheckpointError(msg)
    return manifest


def check_digest(rank: int, expected: dict[str, Any], sha: str, size: int) -> None:
    """CheckpointError naming how rank ``rank``'s data differs from its manifest."""
    if size != expected["bytes"]:
        more = " or more" if size > expected["bytes"] else ""
        msg = f"{data_file(rank)} has {size} bytes{more}, its manifest says {expected['bytes']}"
        raise CheckpointError(msg)
    if sha != expected["sha256"]:
        msg = f"{data_file(rank)} does not match its sha256 in the manifest"
        raise CheckpointError(msg)


def read_verified(
    folder: Path, rank: int, root: Path, sink: Callable[[bytes], None] | None = None
) -> dict[str, Any]:
    """Hash rank ``rank``'s data against its manifest, passing every chunk to ``sink``;
    CheckpointError names the first difference. Returns the manifest."""
    manifest = read_manifest(folder, rank, root)
    expected = manifest["files"][data_file(rank)]
    passed = 0

    def within(chunk: bytes) -> None:  # never more to ``sink`` than the manifest allows
        nonlocal passed
        if sink is not None and passed < expected["bytes"]:
            sink(chunk[: expected["bytes"] - passed])
        passed += len(chunk)

    try:
        with open_inside(folder / data_file(rank), root) as f:  # + 1: a longer file shows
            sha, size = hash_fd(f.fileno(), hashlib.sha256(), expected["bytes"] + 1, sink=within)
    except FileNotFoundError:
        msg = f"rank {rank}'s data file {data_file(rank)} is missing"
        raise CheckpointError(msg) from None
    check_digest(rank, expected, sha, size)
    return manifest


def vouched_for(folder: Path, rank: int, root: Path, sha256: str) -> bool:
    """Does rank ``rank``'s piece still look like the one whose data was hashed to ``sha256``
    moments ago (by the master, as it staged it): its manifest names that digest and its data
    file (not a link) has the manifest's size? Then it need not be hashed again."""
    try:
        expected = read_manifest(folder, rank, root)["files"][data_file(rank)]
        with open_inside(folder / data_file(rank), root) as f:
            size = os.fstat(f.fileno()).st_size
    except (CheckpointError, OSError):
        return False
    return expected["sha256"] == sha256 and size == expected["bytes"]


def load_verified(folder: Path, rank: int, root: Path) -> tuple[dict[str, Any], bytes]:
    """Rank ``rank``'s manifest and data, the data verified as it was read (one pass)."""
    parts: list[bytes] = []
    manifest = read_verified(folder, rank, root, parts.append)
    return manifest, b"".join(parts)


def piece_names(root: Path) -> list[str]:
    """Checkpoint folders in ``root``, oldest first."""
    try:
        with os.scandir(root) as entries:
            names = [
                e.name for e in entries if parse_name(e.name) and e.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return []
    return sorted(names, key=lambda n: parse_name(n) or (0, 0))


def ranks_in(root: Path, name: str) -> set[int]:
    """Ranks whose manifest is in ``root/name`` (not verified)."""
    found = set()
    with contextlib.suppress(OSError), os.scandir(root / name) as entries:
        for e in entries:
            m = re.fullmatch(r"rank-(\d+)\.json", e.name)
            if m and e.is_file(follow_symlinks=False):
                found.add(int(m.group(1)))
    return found


def prune(root: Path, rank: int, keep: int, current: str) -> None:
    """Keep rank ``rank``'s ``keep`` newest finished pieces up to ``current``: older ones go,
    and so do its pieces of names after ``current`` (a line abandoned at a restore)."""
    names = piece_names(root)
    order = parse_name(current) or (0, 0)
    mine = [n for n in names if rank in ranks_in(root, n) and (parse_name(n) or (0, 0)) <= order]
    kept = mine[-keep:] if keep > 0 else []
    oldest = parse_name(kept[0]) or order if kept else order
    doomed = [
        n for n in names if n not in kept and not oldest <= (parse_name(n) or (0, 0)) <= order
    ]
    for name in doomed:
        folder = root / name
        for f in (manifest_file(rank), data_file(rank)):  # manifest first: never a torn piece
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / f)
        with contextlib.suppress(OSError):
            for leftover in folder.glob(f".rank-{rank}.pt.*.tmp"):
                leftover.unlink()
            folder.rmdir()  # only once every rank's piece is gone


# -- requests and answers between the master and the ranks -------------------------------------


def control_dir(root: Path) -> Path:
    return root / CONTROL


def listen_file(root: Path, attempt: int, rank: int) -> Path:
    return control_dir(root) / f"listen-{attempt}-{rank}"


def ack_file(root: Path, attempt: int, rank: int) -> Path:
    return control_dir(root) / f"ack-{attempt}-{rank}.json"


def restored_file(root: Path, attempt: int, rank: int) -> Path:
    return control_dir(root) / f"restored-{attempt}-{rank}.json"


def go_file(root: Path, attempt: int, rank: int) -> Path:
    """The master's word to a replica it started ahead of time (``AIGRID_RESTORE_WAIT``):
    the checkpoint to restore (``{"checkpoint": name or None, "sha256": ...}``)."""
    return control_dir(root) / f"go-{attempt}-{rank}.json"


def request_file(root: Path) -> Path:
    return control_dir(root) / "request.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    real_dir(path.parent)
    write_atomic(path, json.dumps(data).encode())


def read_json(path: Path, root: Path) -> dict[str, Any] | None:
    """A small JSON file the other side wrote, read without following links; None if absent
    or not (yet) valid."""
    try:
        with open_inside(path, root) as f:
            data = json.loads(f.read(65536).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
