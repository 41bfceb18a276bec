"""The nodes' files on a Ray cluster, reached through Ray alone (no shared filesystem).

Each node gets an agent (a Ray actor pinned to it, no CPU reserved, owned by the master):
:meth:`RayFiles.call` runs a function there, and copies between nodes go from the source's
agent to the destination's a chunk at a time (:data:`CHUNK`), a few chunks in flight: the
master names each chunk, and the destination's Ray pulls it from the source's object store,
so the bytes never pass through the master. What arrived is then verified on the
destination against the source's manifest (sha256 for checkpoint pieces, BLAKE3 for
datasets) before it is renamed into place, exactly as a local copy is.

A node that died (or does not answer in time: :data:`CONTROL_TIMEOUT_S`,
:data:`CHUNK_TIMEOUT_S`) raises :class:`~jupyter_aigrid.server.executors.nodefiles.NodeGone`;
an exception of the function itself is raised here as it was raised there.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ... import checkpoints as ck
from ... import contents
from ...safefs import create_new, open_inside
from .nodefiles import NodeFiles, NodeGone, adopt_copy, copy_target

#: Bytes per chunk of a copy between nodes, and chunks in flight at once.
CHUNK = 8 * 1024 * 1024
WINDOW = 4
#: Seconds a node has to answer a call the master's loop waits for (a control file), and
#: to move one chunk. Other calls (a verification, hashing a copy) take what they take:
#: only the node's death ends them early.
CONTROL_TIMEOUT_S = 30.0
CHUNK_TIMEOUT_S = 300.0


class _Agent:
    """Runs the master's file work on its node (Ray makes it a remote class)."""

    def __init__(self) -> None:
        self._open: dict[int, Any] = {}
        self._ids = itertools.count(1)

    def call(self, fn: Callable[..., Any], args: tuple) -> Any:
        return fn(*args)

    def open(self, opener: Callable[..., Any], args: tuple) -> int:
        """Open a file to read with ``opener(*args)`` (a file object or a descriptor)."""
        handle = next(self._ids)
        self._open[handle] = opener(*args)
        return handle

    def create(self, path: str) -> int:
        """A new file at ``path`` to write (never through a link, never an old one)."""
        handle = next(self._ids)
        self._open[handle] = create_new(path)
        return handle

    def _fd(self, handle: int) -> int:
        f = self._open[handle]
        return f if isinstance(f, int) else f.fileno()

    def read(self, handle: int, offset: int, size: int) -> bytes:
        return os.pread(self._fd(handle), size, offset)

    def write(self, handle: int, offset: int, data: bytes) -> int:
        fd, view, done = self._fd(handle), memoryview(data), 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)
        return done

    def close(self, handle: int) -> None:
        f = self._open.pop(handle, None)
        if isinstance(f, int):
            os.close(f)
        elif f is not None:
            f.close()


class RayFiles(NodeFiles):
    """Work on the Ray nodes' files through an agent on each (see the module docstring)."""

    #: Ray nodes die on their own, disks and all: each running gang's newest checkpoint is
    #: also kept on another node.
    copies_checkpoints = True

    def __init__(self, ray: Any, node_ids: dict[str, str]) -> None:
        self._ray = ray
        self._node_ids = node_ids  # node name -> Ray node id (the executor's, kept current)
        self._agents: dict[str, Any] = {}
        self._agent_class = ray.remote(num_cpus=0, max_concurrency=16, max_restarts=0)(_Agent)

    def _agent(self, node: str) -> Any:
        agent = self._agents.get(node)
        if agent is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            node_id = self._node_ids.get(node)
            if node_id is None:
                msg = f"node {node} is not in the Ray cluster"
                raise NodeGone(msg)
            strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
            agent = self._agent_class.options(scheduling_strategy=strategy).remote()
            self._agents[node] = agent
        return agent

    def _get(self, ref: Any, node: str, timeout: float | None = CHUNK_TIMEOUT_S) -> Any:
        """The result of ``ref`` (work on ``node``): its own exception re-raised as it was,
        NodeGone if the node died or did not answer in time."""
        from ray import exceptions as rex

        try:
            return self._ray.get(ref, timeout=timeout)
        except rex.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except (rex.RayActorError, rex.GetTimeoutError, rex.ObjectLostError) as e:
            if isinstance(e, rex.RayActorError):
                self._agents.pop(node, None)  # a later call tries a new one (node back?)
            msg = f"node {node} did not answer: {type(e).__name__}"
            raise NodeGone(msg) from None

    def forget(self, node: str) -> None:
        """The node left the cluster: drop its agent."""
        agent = self._agents.pop(node, None)
        if agent is not None:
            with contextlib.suppress(Exception):
                self._ray.kill(agent)

    def close(self) -> None:
        for node in list(self._agents):
            self.forget(node)

    # -- NodeFiles -------------------------------------------------------------------------------

    def call(self, node: str, fn: Callable[..., Any], *args: Any) -> Any:
        return self._get(self._agent(node).call.remote(fn, args), node, None)

    def call_each(self, calls, failed: Any = None) -> list[Any]:
        refs = []
        for node, fn, args in calls:
            try:
                refs.append(self._agent(node).call.remote(fn, args))
            except NodeGone:
                refs.append(None)
        out = []
        for (node, _, _), ref in zip(calls, refs, strict=True):
            try:
                out.append(failed if ref is None else self._get(ref, node, CONTROL_TIMEOUT_S))
            except (OSError, ValueError, ck.CheckpointError):
                out.append(failed)
        return out

    def _send(
        self,
        src_node: str,
        opener: Callable[..., Any],
        args: tuple,
        dst_node: str,
        dst: Path,
        most: int,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Copy up to ``most`` bytes of the file ``opener(*args)`` opens on ``src_node`` into
        the new file ``dst`` on ``dst_node``; the bytes copied (not yet durable)."""
        src, target = self._agent(src_node), self._agent(dst_node)
        reading = self._get(src.open.remote(opener, args), src_node)
        try:
            writing = self._get(target.create.remote(str(dst)), dst_node)
            try:
                flight: collections.deque = collections.deque()
                done = 0
                for offset in range(0, most, CHUNK):
                    chunk = src.read.remote(reading, offset, min(CHUNK, most - offset))
                    flight.append(target.write.remote(writing, offset, chunk))
                    while len(flight) >= WINDOW or (flight and offset + CHUNK >= most):
                        n = self._get(flight.popleft(), dst_node)
                        done += n
                        if progress is not None and n:
                            progress(n)
                return done
            finally:
                with contextlib.suppress(Exception):
                    self._get(target.close.remote(writing), dst_node)
        finally:
            src.close.remote(reading)

    def copy_checkpoint(
        self, src_node: str, src: Path, src_root: Path, dst_node: str, dst: Path, rank: int
    ) -> int:
        manifest = self.call(src_node, ck.read_manifest, src, rank, src_root)
        size = manifest["files"][ck.data_file(rank)]["bytes"]
        tmp = self.call(dst_node, copy_target, dst, rank)
        try:
            data = (src / ck.data_file(rank), src_root)
            self._send(src_node, open_inside, data, dst_node, tmp, size + 1)
            return self.call(dst_node, adopt_copy, tmp, dst, rank, manifest)
        finally:
            self.call_each([(dst_node, contents.remove_tree, (tmp,))])

    def verify_tree(
        self,
        node: str,
        path: Path,
        manifest: contents.Manifest,
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        problems = self.call(node, contents.verify_tree, path, manifest)
        if progress is not None:  # hashed there in one call: counted when it is done
            progress(manifest.bytes)
        return problems

    def copy_tree(
        self,
        src_node: str,
        src: Path,
        dst_node: str,
        dst: Path,
        manifest: contents.Manifest,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        tmp = self.call(dst_node, contents.begin_copy, dst, manifest)
        try:
            for f in manifest.files:
                try:
                    self._send(
                        src_node, contents.open_below, (src, f.path), dst_node, tmp / f.path,
                        f.size + 1, progress,
                    )  # fmt: skip
                except FileNotFoundError:
                    msg = f"{f.path}: missing in the source, so the source is damaged"
                    raise contents.ContentError(msg) from None
            self.call(dst_node, contents.finish_copy, tmp, dst, manifest)
        finally:
            self.call_each([(dst_node, contents.remove_tree, (tmp,))])

    def put_tree(self, local: Path, dst_node: str, dst: Path, manifest: contents.Manifest) -> bool:
        """Send the master's folder ``local`` to ``dst`` on ``dst_node``, verified there;
        ``local`` is removed once it is. False if ``dst`` already exists there."""
        try:
            tmp = self.call(dst_node, contents.begin_copy, dst, manifest)
        except FileExistsError:
            return False
        target = self._agent(dst_node)
        try:
            for f in manifest.files:
                writing = self._get(target.create.remote(str(tmp / f.path)), dst_node)
                try:
                    with open(local / f.path, "rb") as source:
                        offset = 0
                        while chunk := source.read(CHUNK):
                            self._get(target.write.remote(writing, offset, chunk), dst_node)
                            offset += len(chunk)
                finally:
                    self._get(target.close.remote(writing), dst_node)
            self.call(dst_node, contents.finish_copy, tmp, dst, manifest)
        finally:
            self.call_each([(dst_node, contents.remove_tree, (tmp,))])
        contents.remove_tree(local)
        return True
