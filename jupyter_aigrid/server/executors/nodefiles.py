"""Work on a node's own files: its checkpoints, their control files and its datasets.

A job's checkpoints and its dataset copies live in the scratch folder of the node it runs on
(:attr:`~jupyter_aigrid.server.model.Node.scratch`). The master never opens them itself: it
asks its executor's :class:`NodeFiles` to run a function *on the node* (:meth:`call`), to
copy a checkpoint piece or a dataset from one node to another (:meth:`copy_checkpoint`,
:meth:`copy_tree`), or to put a folder of the master's own on a node (:meth:`put_tree`).

This default is for executors whose nodes' folders are on the master's machine (the local
and Docker executors): a call runs here, and copies are kernel copies, hashed as they land
(:func:`jupyter_aigrid.safefs.copy_hashed`). The Ray executor's
(:class:`~jupyter_aigrid.server.executors.ray_files.RayFiles`) runs each call in an agent
on the node and moves bytes between nodes through Ray, so that no filesystem is shared.

Functions passed to :meth:`call` must be importable module-level functions (they travel by
name) whose arguments and results are plain data: :func:`copy_target` and
:func:`adopt_copy` below are two.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ... import checkpoints as ck
from ... import contents
from ...safefs import copy_hashed, create_new, hash_fd, open_inside, write_atomic


class NodeGone(OSError):
    """A node's files could not be reached: the node left the cluster or does not answer."""


class NodeFiles:
    """The nodes' folders are on this machine (see the module docstring)."""

    #: Should each running gang's newest checkpoint be copied to a second node (nodes that
    #: die on their own take their disks with them)? Not here: one machine, one disk.
    copies_checkpoints = False

    def call(self, node: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` run on ``node``; its result, or its exception raised here."""
        return fn(*args)

    def call_each(self, calls: list[tuple[str, Callable[..., Any], tuple]], failed=None) -> list:
        """Each ``(node, fn, args)`` of ``calls`` run on its node; their results in order,
        ``failed`` for those that could not be done (not there, unreadable, node gone)."""
        out = []
        for node, fn, args in calls:
            try:
                out.append(self.call(node, fn, *args))
            except (OSError, ValueError, ck.CheckpointError):
                out.append(failed)
        return out

    def copy_checkpoint(
        self, src_node: str, src: Path, src_root: Path, dst_node: str, dst: Path, rank: int
    ) -> int:
        """Copy rank ``rank``'s piece from folder ``src`` (below ``src_root``) on
        ``src_node`` to folder ``dst`` on ``dst_node``, verified (:func:`copy_verified`);
        the bytes copied."""
        return copy_verified(src, src_root, dst, rank)

    def verify_tree(
        self,
        node: str,
        path: Path,
        manifest: contents.Manifest,
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        """How the dataset copy at ``path`` on ``node`` differs from ``manifest``, hashed
        there (:func:`jupyter_aigrid.contents.verify_tree`); ``progress`` counts bytes."""
        return contents.verify_tree(path, manifest, progress)

    def copy_tree(
        self,
        src_node: str,
        src: Path,
        dst_node: str,
        dst: Path,
        manifest: contents.Manifest,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Copy a dataset's files from ``src`` on ``src_node`` to the new folder ``dst`` on
        ``dst_node``, verified (:func:`jupyter_aigrid.contents.copy_tree`)."""
        contents.copy_tree(src, dst, manifest, progress)

    def put_tree(self, local: Path, dst_node: str, dst: Path, manifest: contents.Manifest) -> bool:
        """Move the folder ``local`` of the master's machine to ``dst`` on ``dst_node`` (a
        rename; a verified copy across filesystems). False if ``dst`` already exists."""
        if os.path.lexists(dst):
            return False
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(local, dst)
        except OSError as e:
            if e.errno != errno.EXDEV:  # another file system: copy it
                raise
            contents.copy_tree(local, dst, manifest)
            contents.remove_tree(local)
        return True


# -- one checkpoint piece from one folder to another (run on the destination's node) ------------


def copy_verified(src: Path, src_root: Path, dst: Path, rank: int) -> int:
    """Copy rank ``rank``'s piece from folder ``src`` to folder ``dst`` and verify the copy;
    it is durable (and its manifest written) only once it matched. Returns bytes copied.

    The copy is hashed back as it is made (:func:`~jupyter_aigrid.safefs.copy_hashed`) and
    checked against the source's manifest."""
    manifest = ck.read_manifest(src, rank, src_root)
    ck.real_dir(dst)
    tmp = dst / f".{ck.data_file(rank)}.{os.getpid()}.copy"

    def copy(expected: dict[str, Any]) -> tuple[str, int]:
        try:
            source = open_inside(src / ck.data_file(rank), src_root)
        except FileNotFoundError:
            msg = f"rank {rank}'s data file {ck.data_file(rank)} is missing"
            raise ck.CheckpointError(msg) from None
        with source:
            out = create_new(tmp)
            try:  # one byte more than expected shows a longer file
                return copy_hashed(source.fileno(), out, hashlib.sha256(), expected["bytes"] + 1)
            finally:
                os.close(out)

    return _adopt(tmp, dst, rank, manifest, copy)


def copy_target(dst: Path, rank: int) -> Path:
    """A fresh temp file's path in folder ``dst`` for rank ``rank``'s piece, copied there
    from another node a chunk at a time (then :func:`adopt_copy`)."""
    ck.real_dir(dst)
    return dst / f".{ck.data_file(rank)}.{os.getpid()}.{time.monotonic_ns()}.copy"


def adopt_copy(tmp: Path, dst: Path, rank: int, manifest: dict[str, Any]) -> int:
    """Make the copy at ``tmp`` rank ``rank``'s piece in folder ``dst`` if it matches
    ``manifest`` (the source's): hashed, durable, renamed, then its manifest written.
    CheckpointError (and ``tmp`` gone) if it does not. Returns its size."""

    def read_back(expected: dict[str, Any]) -> tuple[str, int]:
        with open_inside(tmp, dst) as f:
            digest = hash_fd(f.fileno(), hashlib.sha256(), expected["bytes"] + 1)
            os.fsync(f.fileno())
        return digest

    return _adopt(tmp, dst, rank, manifest, read_back)


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
    expected = manifest["files"][ck.data_file(rank)]
    try:
        sha, size = measure(expected)
        ck.check_digest(rank, expected, sha, size)
        os.replace(tmp, dst / ck.data_file(rank))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    write_atomic(dst / ck.manifest_file(rank), json.dumps(manifest).encode())
    return expected["bytes"]
