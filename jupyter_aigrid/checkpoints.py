"""Checkpoints on disk, shared by the job's runtime (which writes and restores them) and the
master (which verifies them, moves them between nodes and asks for them).

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
hashes to its manifest. Only the standard library is used (containers carry this module).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import queue
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .durable import open_inside, write_atomic

FORMAT = 1
CONTROL = ".control"
#: Where a node keeps the copies of other nodes' pieces (see ``copies_holder``).
COPIES = ".copies"
CHUNK = 8 * 1024 * 1024
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


def _digest(
    f: BinaryIO, limit: int, sink: Callable[[bytes], None] | None = None
) -> tuple[str, int]:
    """sha256 and size of what ``f`` holds from its position, reading at most ``limit + 1``
    bytes into one reused buffer (page-cache speed), each chunk also to ``sink``."""
    sha, size = hashlib.sha256(), 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while size <= limit:
        n = f.readinto(view)
        if not n:
            break
        sha.update(view[:n])
        size += n
        if sink is not None and size <= limit:
            sink(bytes(view[:n]))
    return sha.hexdigest(), size


@functools.cache
def _writeback() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range(2)``: start writing a range of a file to disk without
    waiting for it. None where the C library has no such call."""
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


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
        call = _writeback()
        if call is None or end - self._written_back < SLICE:
            return
        self.f.flush()
        if call(self.f.fileno(), self._written_back, end - self._written_back, 2) == 0:
            self._written_back = end

    def flush(self) -> None:
        self.f.flush()

    def digest(self) -> tuple[str, int]:
        return self.sha.hexdigest(), self.size


def _create(path: Path) -> BinaryIO:
    """A new file at ``path`` (an old one, or a link planted there, is removed first)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "wb")


def _real_dir(path: Path) -> Path:
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
    _real_dir(folder)
    target = folder / data_file(rank)
    tmp = folder / f".{target.name}.{os.getpid()}.tmp"
    try:
        with _create(tmp) as f:
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


def _check(rank: int, expected: dict[str, Any], sha: str, size: int) -> None:
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
    try:
        with open_inside(folder / data_file(rank), root) as f:
            sha, size = _digest(f, expected["bytes"], sink)
    except FileNotFoundError:
        msg = f"rank {rank}'s data file {data_file(rank)} is missing"
        raise CheckpointError(msg) from None
    _check(rank, expected, sha, size)
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


def copy_verified(src: Path, src_root: Path, dst: Path, rank: int) -> int:
    """Copy rank ``rank``'s piece from folder ``src`` to folder ``dst`` and verify the copy;
    it is durable (and its manifest written) only once it matched. Returns bytes copied.

    The copy is hashed back as it is made (:func:`_copy_hashed`) and checked against the
    source's manifest."""
    manifest = read_manifest(src, rank, src_root)
    _real_dir(dst)
    tmp = dst / f".{data_file(rank)}.{os.getpid()}.copy"

    def copy(expected: dict[str, Any]) -> tuple[str, int]:
        try:
            source = open_inside(src / data_file(rank), src_root)
        except FileNotFoundError:
            msg = f"rank {rank}'s data file {data_file(rank)} is missing"
            raise CheckpointError(msg) from None
        with source, _create(tmp) as out:  # one byte more than expected shows a longer file
            return _copy_hashed(source.fileno(), out.fileno(), tmp, expected["bytes"] + 1)

    return _adopt(tmp, dst, rank, manifest, copy)


def _adopt(
    tmp: Path,
    dst: Path,
    rank: int,
    manifest: dict[str, Any],
    measure: Callable[[dict[str, Any]], tuple[str, int]],
) -> int:
    """Rename ``tmp`` to rank ``rank``'s data file in ``dst`` once ``measure(expected)``
    (which fills ``tmp`` or reads it back: its sha256 and size) matched the manifest, then
    write the manifest; ``tmp`` is gone either way. Returns the piece's size."""
    expected = manifest["files"][data_file(rank)]
    try:
        sha, size = measure(expected)
        _check(rank, expected, sha, size)
        os.replace(tmp, dst / data_file(rank))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    write_atomic(dst / manifest_file(rank), json.dumps(manifest).encode())
    return expected["bytes"]


def copy_target(dst: Path, rank: int) -> Path:
    """A fresh temp file's path in folder ``dst`` for rank ``rank``'s piece, copied there
    from another node a chunk at a time (then :func:`adopt_copy`)."""
    _real_dir(dst)
    return dst / f".{data_file(rank)}.{os.getpid()}.{time.monotonic_ns()}.copy"


def adopt_copy(tmp: Path, dst: Path, rank: int, manifest: dict[str, Any]) -> int:
    """Make the copy at ``tmp`` rank ``rank``'s piece in folder ``dst`` if it matches
    ``manifest`` (the source's): hashed, durable, renamed, then its manifest written.
    CheckpointError (and ``tmp`` gone) if it does not. Returns its size."""

    def read_back(expected: dict[str, Any]) -> tuple[str, int]:
        with open_inside(tmp, dst) as f:
            digest = _digest(f, expected["bytes"])
            os.fsync(f.fileno())
        return digest

    return _adopt(tmp, dst, rank, manifest, read_back)


def keep_only(root: Path, name: str) -> None:
    """Delete every checkpoint folder in ``root`` but ``name`` (the copies a node keeps of
    other nodes' pieces: only the newest is kept)."""
    for other in piece_names(root):
        if other != name:
            remove_root(root / other)


def _copy_hashed(source: int, target: int, path: Path, most: int) -> tuple[str, int]:
    """Copy up to ``most`` bytes from fd ``source`` to fd ``target`` (the file at ``path``)
    and make them durable; return the sha256 and size of the copy.

    The bytes move in the kernel (``copy_file_range``: a reflink where the filesystem can),
    a slice at a time; a second thread hashes each slice back from the copy (the page
    cache) as soon as it is there, and the disk starts writing it back at once, so copying,
    hashing and writing overlap instead of following one another."""
    sha, failed = hashlib.sha256(), []
    slices: queue.Queue[int | None] = queue.Queue()

    def hash_back() -> None:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        try:
            with open(path, "rb") as f:
                while (left := slices.get()) is not None:
                    while left > 0:
                        n = f.readinto(view[: min(left, CHUNK)])
                        if not n:
                            msg = f"{path.name} is shorter than what was copied into it"
                            raise CheckpointError(msg)
                        sha.update(view[:n])
                        left -= n
        except (OSError, CheckpointError) as e:
            failed.append(e)
            while slices.get() is not None:  # let the copier finish its puts
                pass

    hashing = threading.Thread(target=hash_back, name="aigrid-hash")
    hashing.start()
    size, writeback = 0, _writeback()
    try:
        while size < most:
            n = _copy_slice(source, target, min(SLICE, most - size))
            if n == 0:
                break
            slices.put(n)
            if writeback is not None:
                writeback(target, size, n, 2)  # SYNC_FILE_RANGE_WRITE: start, do not wait
            size += n
    finally:
        slices.put(None)
        hashing.join()
    if failed:
        raise failed[0]
    os.fsync(target)
    return sha.hexdigest(), size


def _copy_slice(source: int, target: int, most: int) -> int:
    """Copy up to ``most`` bytes between file descriptors at their positions; 0 at the end."""
    try:
        return os.copy_file_range(source, target, most)
    except OSError:  # not across these filesystems: a plain read and write
        chunk = os.read(source, min(most, CHUNK))
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view) :]
        return len(chunk)


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


@dataclass
class Found:
    """One checkpoint as seen across nodes: who holds each rank's piece."""

    name: str
    holders: dict[int, list[str]] = field(default_factory=dict)  # rank -> nodes

    def missing(self, world_size: int) -> list[int]:
        return [r for r in range(world_size) if r not in self.holders]


def listing(root: Path) -> dict[str, list[int]]:
    """Every checkpoint folder in ``root``, with the ranks whose manifest is there (not
    verified): what one node reports of a job's checkpoints."""
    return {name: sorted(ranks_in(root, name)) for name in piece_names(root)}


class Here:
    """Work on nodes' files where the nodes' folders are on this machine: what :func:`scan`
    and :func:`stage` use unless told otherwise (the master passes its executor's
    ``NodeFiles``, which has the same methods)."""

    @staticmethod
    def call(node: str, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def call_each(self, calls, failed=None) -> list[Any]:
        """Each ``(node, fn, args)`` of ``calls`` run on its node; their results in order,
        ``failed`` for those that could not be done."""
        out = []
        for node, fn, args in calls:
            try:
                out.append(self.call(node, fn, *args))
            except (OSError, ValueError, CheckpointError):  # not there, unreadable
                out.append(failed)
        return out

    @staticmethod
    def copy_checkpoint(src_node, src, src_root, dst_node, dst, rank) -> int:
        return copy_verified(src, src_root, dst, rank)


HERE = Here()


def copies_holder(node: str) -> str:
    """The holder name of the copies kept on ``node`` of other nodes' pieces (in
    ``<root>/.copies``), beside ``node`` itself for the pieces its ranks wrote."""
    return f"{node}#copies"


def holder_node(holder: str) -> str:
    """The node a holder's folder is on."""
    return holder.partition("#")[0]


def scan(roots: dict[str, Path], files=HERE) -> list[Found]:
    """Every checkpoint folder in the holders' ``roots`` (holder -> root: a node, or the
    copies kept on one), newest first; holders that cannot be reached are left out."""
    holders = list(roots)
    listed = files.call_each([(holder_node(h), listing, (roots[h],)) for h in holders], {})
    by_name: dict[str, Found] = {}
    for holder, names in zip(holders, listed, strict=True):
        for name, ranks in names.items():
            found = by_name.setdefault(name, Found(name))
            for rank in ranks:
                found.holders.setdefault(rank, []).append(holder)
    return sorted(by_name.values(), key=lambda f: parse_name(f.name) or (0, 0), reverse=True)


def complete(roots: dict[str, Path], world_size: int) -> list[str]:
    """Names of the checkpoints whose every piece has a manifest, newest first (a listing:
    nothing is hashed; partial checkpoints never appear)."""
    return [f.name for f in scan(roots) if not f.missing(world_size)]


@dataclass
class Staged:
    """The outcome of :func:`stage`: the checkpoint chosen (None: there is none to restore),
    its step and size, the bytes copied, and what was wrong with newer ones."""

    name: str | None = None
    step: int | None = None
    bytes: int = 0
    copied: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)


def stage(roots: dict[str, Path], ranks: dict[int, str], world_size: int, files=HERE) -> Staged:
    """Put the newest verified checkpoint where the ranks will run: ``ranks`` maps each rank
    to its node, ``roots`` each holder (a node, or the copies kept on one) to its folder. A
    piece already on its rank's node is verified in place; any other is copied there and
    verified on the way (``files.copy_checkpoint``; ``files`` runs work on the nodes). A
    checkpoint that is partial or does not verify is passed over for the one before it, and
    reported."""
    result = Staged()
    for found in scan(roots, files):
        missing = found.missing(world_size)
        if missing:
            what = ", ".join(str(r) for r in missing[:8])
            result.problems.append((found.name, f"incomplete: no manifest for rank {what}"))
            continue
        try:
            total = copied = 0
            step = None
            for rank, node in sorted(ranks.items()):
                manifest, size, moved = _place_piece(found, rank, node, roots, files)
                copied += moved
                if manifest.get("world_size") != world_size:
                    msg = f"written by a gang of {manifest.get('world_size')}, not {world_size}"
                    raise CheckpointError(msg)
                total += size
                step = manifest.get("step") if step is None else step
        except (CheckpointError, OSError) as e:
            result.problems.append((found.name, str(e)))
            result.copied += copied
            continue
        result.name, result.step, result.bytes = found.name, step, total
        result.copied += copied
        break
    return result


def _place_piece(
    found: Found, rank: int, node: str, roots: dict[str, Path], files
) -> tuple[dict[str, Any], int, int]:
    """Rank ``rank``'s piece of ``found`` verified on ``node``: the copy already there if it
    verifies, else one copied from the first holder whose piece verifies. Returns the
    manifest, the piece's size and the bytes copied; CheckpointError if no copy is good."""
    dst = roots[node] / found.name
    holders = sorted(found.holders[rank], key=lambda h: h != node)  # its own node first
    errors = []
    for holder in holders:
        try:
            if holder == node:
                manifest = files.call(node, read_verified, dst, rank, roots[node])
                return manifest, manifest["files"][data_file(rank)]["bytes"], 0
            src = roots[holder] / found.name
            size = files.copy_checkpoint(holder_node(holder), src, roots[holder], node, dst, rank)
            return files.call(node, read_manifest, dst, rank, roots[node]), size, size
        except (CheckpointError, OSError) as e:
            errors.append(f"{e}" if len(holders) == 1 else f"{e} (on {holder})")
    raise CheckpointError("; ".join(errors))


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


def remove_root(root: Path) -> None:
    """Delete a job's checkpoint folder on one node (links in it are removed, never
    followed); nothing if it is not there."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(root).st_mode):
            shutil.rmtree(root, ignore_errors=True)


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


def is_listening(root: Path, attempt: int, rank: int) -> bool:
    """Has rank ``rank`` of ``attempt`` said it answers checkpoint requests?"""
    return listen_file(root, attempt, rank).exists()


def clear_request(root: Path) -> None:
    """Take back the master's request (a new attempt must not take it for its own)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(request_file(root))


def write_json(path: Path, data: dict[str, Any]) -> None:
    _real_dir(path.parent)
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


def ask(roots: Iterable[Path], request_id: str, reason: str) -> None:
    """The master's side: ask every rank under ``roots`` for a checkpoint."""
    for root in roots:
        write_json(request_file(root), {"id": request_id, "time": time.time(), "reason": reason})
