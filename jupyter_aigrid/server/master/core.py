"""What every component of the master shares: the store, the executor, the nodes, the journal.

A component is a class of its own file that takes a :class:`Core` and the components it
calls (see :mod:`.loop` for how they are wired). Nothing here decides anything; it is the
infrastructure the components run on, all on the master thread:

- :class:`Nodes`: the cluster's nodes as the executor reports them (they change on Ray), and
  where each node keeps a job's checkpoints;
- :class:`Journal`: events recorded inside the store's transaction and emitted once it has
  committed (never if it rolls back), and work to do after the commit;
- :class:`Core`: those two with the store, the executor, the job files, the per-job memory
  and the pool that works on the nodes' files in the background.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ... import checkpoints as ck
from .. import checkpoint_transfer as transfer
from ..executors.base import Executor
from ..executors.nodefiles import NodeFiles
from ..memory import Memory
from ..model import Node, Placement
from ..records import Job
from ..replicas import JobFiles

log = logging.getLogger(__name__)


class Nodes:
    """The nodes of the cluster now, and every node's scratch folder (those that left too)."""

    def __init__(self, nodes: list[Node]) -> None:
        self.all: list[Node] = list(nodes)
        self.by_name: dict[str, Node] = {n.name: n for n in nodes}
        self.scratch: dict[str, str] = {n.name: n.scratch for n in nodes}

    def update(self, nodes: list[Node]) -> tuple[list[str], list[str]]:
        """Take the executor's inventory; return the names that (left, joined)."""
        names = {n.name for n in nodes}
        gone = sorted(set(self.by_name) - names)
        new = sorted(names - set(self.by_name))
        self.all, self.by_name = list(nodes), {n.name: n for n in nodes}
        self.scratch.update((n.name, n.scratch) for n in nodes)
        return gone, new

    def simulated(self, node: str) -> bool:
        n = self.by_name.get(node)
        return bool(n and any(g.simulated for g in n.gpus))

    def present(self, placement: Placement) -> Placement:
        """``placement`` without its slots on nodes that left the cluster (they hold
        nothing: a gang placed there is on its way back to the queue)."""
        if all(s.node in self.by_name for s in placement.slots):
            return placement
        return Placement(tuple(s for s in placement.slots if s.node in self.by_name))


class Journal:
    """Events of the store's transactions, emitted on the event loop once committed.

    The store calls :meth:`committed` and :meth:`rolled_back`; the master emits what
    :meth:`take` returns after each call on its thread.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        #: Events of committed transactions, not yet emitted.
        self._outbox: collections.deque[tuple[str, dict]] = collections.deque()
        #: Events of the transaction in progress (master thread only); a rollback drops them.
        self._uncommitted: list[tuple[str, dict]] = []
        #: What to do once the transaction in progress commits (dropped on a rollback).
        self._after: list[Callable[[], None]] = []
        store.on_commit = self.committed
        store.on_rollback = self.rolled_back

    def record(self, schema_id: str, job_id: str | None, data: dict[str, Any]) -> None:
        """Keep an event in the store (inside the caller's transaction); it is emitted once
        that transaction has committed, and never if it rolls back."""
        self.store.record_event(schema_id, job_id, data)
        self._uncommitted.append((schema_id, data))

    def after_commit(self, action: Callable[[], None]) -> None:
        self._after.append(action)

    def committed(self) -> None:
        self._outbox.extend(self._uncommitted)
        self._uncommitted.clear()
        actions, self._after = self._after, []
        for action in actions:
            action()

    def rolled_back(self) -> None:
        self._uncommitted.clear()
        self._after.clear()

    def take(self) -> list[tuple[str, dict]]:
        """The committed events not yet emitted, oldest first (and forget them)."""
        out = list(self._outbox)
        self._outbox.clear()
        return out


class Core:
    """The infrastructure the master's components share (see the module docstring)."""

    def __init__(self, store: Any, executor: Executor, state_dir: Path) -> None:
        self.store = store
        self.executor = executor
        self.files = JobFiles(state_dir, store.cluster_id())
        self.nodes = Nodes(executor.nodes())
        self.journal = Journal(store)
        #: What is kept about each job in memory only (dropped when the job ends).
        self.memory = Memory()
        #: Work on the nodes' own files (checkpoints, datasets): on the node, not here.
        self.node_files: NodeFiles = executor.node_files
        #: Checkpoints and datasets being verified and copied where gangs start.
        self.stager = ThreadPoolExecutor(2, thread_name_prefix="aigrid-stage")
        #: May a replica be running? While one may, the loop looks for exits between ticks.
        self.live_replicas = False

    def roots(self, job_id: str) -> dict[str, Path]:
        """Node -> the job's checkpoint folder there (its ``AIGRID_CHECKPOINT_DIR``); nodes
        that left the cluster too (work there fails: ``NodeGone``)."""
        key = self.files.key(job_id)
        return {
            name: Path(scratch) / "checkpoints" / key
            for name, scratch in self.nodes.scratch.items()
        }

    def holders(self, job_id: str) -> dict[str, Path]:
        """Every folder that may hold the job's checkpoint pieces: each node's, and the
        copies each node keeps of other nodes' pieces (:mod:`.copies`)."""
        roots = self.roots(job_id)
        copies = {transfer.copies_holder(n): root / ck.COPIES for n, root in roots.items()}
        return {**roots, **copies}

    def drop_checkpoints(self, job_id: str) -> None:
        """Delete a job's checkpoints on every node, in the background (a job that succeeded
        or was cancelled never resumes; a failed job's stay, to be looked into)."""
        calls = [(node, transfer.remove_root, (root,)) for node, root in self.roots(job_id).items()]
        self.stager.submit(self.node_files.call_each, calls)

    def has_checkpoints(self, job_id: str) -> bool:
        calls = [
            (transfer.holder_node(h), ck.piece_names, (root,))
            for h, root in self.holders(job_id).items()
        ]
        return any(self.node_files.call_each(calls, []))

    def sync_inventory(self) -> None:
        """Take in the nodes that joined or left the cluster (executors whose inventory
        changes say so in ``nodes()``: Ray). A node that left holds nothing any more: its
        replicas are reported lost and their gangs recover elsewhere."""
        if not self.executor.capabilities.changing_inventory:
            return
        nodes = self.executor.nodes()
        if [n.name for n in nodes] == [n.name for n in self.nodes.all]:
            return
        gone, new = self.nodes.update(nodes)
        log.warning(
            "AI Grid: the cluster changed: %s left, %s joined",
            ", ".join(gone) or "none",
            ", ".join(new) or "none",
        )

    @staticmethod
    def rank_nodes(row: Job) -> dict[int, str]:
        return {s["rank"]: s["node"] for s in row.placement or []}

    def close(self) -> None:
        self.stager.shutdown(wait=True, cancel_futures=True)


class Part:
    """A component: the shared infrastructure under short names."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.store = core.store
        self.executor = core.executor
        self.files = core.files
        self.nodes = core.nodes
        self.journal = core.journal
        self.memory = core.memory
        self.node_files = core.node_files
