"""Work on a node's own files: its checkpoints, their control files and its datasets.

A job's checkpoints and its dataset copies live in the scratch folder of the node it runs on
(:attr:`~jupyter_aigrid.server.model.Node.scratch`). The master never opens them itself: it
asks its executor's :class:`NodeFiles` to run a function *on the node* (:meth:`call`), to
copy a checkpoint piece or a dataset from one node to another (:meth:`copy_checkpoint`,
:meth:`copy_tree`), or to put a folder of the master's own on a node (:meth:`put_tree`).

This default is for executors whose nodes' folders are on the master's machine (the local
and Docker executors): a call runs here, and copies are kernel copies. The Ray executor's
(:class:`~jupyter_aigrid.server.executors.ray_files.RayFiles`) runs each call in an agent
on the node and moves bytes between nodes through Ray, so that no filesystem is shared.

Functions passed to :meth:`call` must be importable module-level functions (they travel by
name) whose arguments and results are plain data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ... import checkpoints as ck
from ... import contents


class NodeGone(OSError):
    """A node's files could not be reached: the node left the cluster or does not answer."""


class NodeFiles(ck.Here):
    """The nodes' folders are on this machine (see the module docstring)."""

    #: Should each running gang's newest checkpoint be copied to a second node (nodes that
    #: die on their own take their disks with them)? Not here: one machine, one disk.
    copies_checkpoints = False

    # call(node, fn, *args), call_each(calls, failed) and copy_checkpoint(src_node, src,
    # src_root, dst_node, dst, rank) come from checkpoints.Here: they run here.

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
            if e.errno != 18:  # EXDEV: another file system
                raise
            contents.copy_tree(local, dst, manifest)
            contents.remove_tree(local)
        return True
