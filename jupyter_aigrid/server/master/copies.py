"""Each running gang's newest checkpoint kept on a second node, where nodes die on their own.

On an executor whose nodes can leave the cluster with their disks
(``node_files.copies_checkpoints``: Ray), the master looks at every running gang's
checkpoints every :data:`COPY_EVERY_S`. Once a newer complete checkpoint is there, each
rank's piece is copied to the node after its own in the inventory (another node whenever
there are two), into ``<root>/.copies``, verified against its manifest on the way; the older
copies there go. A gang whose node died then still finds every piece of that checkpoint on a
live node (``checkpoints.copies_holder``), and staging takes it from there as from any other
holder: the gang recovers from it elsewhere. A ``checkpoint`` event ``copied`` (and the job's
``checkpoint.copied``) says from when a checkpoint survives the loss of any one node.

:class:`CheckpointCopies` is the master's component for it; the copying runs on a thread of
its own.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ... import checkpoints as ck
from .. import checkpoint_transfer as transfer
from ..model import RUNNING
from .core import Core, Part
from .requests import checkpoint_event

log = logging.getLogger(__name__)
#: Seconds between two looks for newer checkpoints to copy.
COPY_EVERY_S = 2.0


def copy_newest(
    files: Any,
    roots: dict[str, Path],
    ranks: dict[int, str],
    partners: dict[str, str],
    last: str | None,
) -> str | None:
    """Copy the gang's newest complete checkpoint (newer than ``last``) to each rank's
    partner node and drop the older copies there; return its name (``last`` if there is
    nothing newer). ``ranks``: rank -> the node it runs on; ``files``: work on the nodes."""
    nodes = sorted(set(ranks.values()))
    listed = dict(
        zip(
            nodes,
            files.call_each([(n, transfer.listing, (roots[n],)) for n in nodes], {}),
            strict=True,
        )
    )
    names = {name for found in listed.values() for name in found}
    newest = next(
        (
            name
            for name in sorted(names, key=lambda n: ck.parse_name(n) or (0, 0), reverse=True)
            if all(rank in listed[node].get(name, ()) for rank, node in ranks.items())
        ),
        None,
    )
    if newest is None or newest == last:
        return last
    for rank, node in sorted(ranks.items()):
        partner = partners[node]
        dst = roots[partner] / ck.COPIES / newest
        files.copy_checkpoint(node, roots[node] / newest, roots[node], partner, dst, rank)
    for partner in sorted({partners[n] for n in nodes}):
        files.call(partner, transfer.keep_only, roots[partner] / ck.COPIES, newest)
    return newest


class CheckpointCopies(Part):
    """Copying running gangs' checkpoints to a second node (see the module docstring).

    What is under way and what was copied last is kept in each job's memory
    (``copying``, ``copied``)."""

    def __init__(self, core: Core) -> None:
        super().__init__(core)
        self._copier = ThreadPoolExecutor(1, thread_name_prefix="aigrid-copies")
        self._next_copy = 0.0

    def close(self) -> None:
        self._copier.shutdown(wait=True, cancel_futures=True)

    def tick(self) -> None:
        """Collect the copies that finished; start copying newer checkpoints."""
        if not self.node_files.copies_checkpoints:
            return
        for job_id, memory in self.memory.having("copying"):
            if memory.copying.done():
                future, memory.copying = memory.copying, None
                self._copy_done(job_id, future)
                self.memory.settle(job_id)
        now = time.monotonic()
        order = [n.name for n in self.nodes.all]
        if now < self._next_copy or len(order) < 2:
            return
        self._next_copy = now + COPY_EVERY_S
        partners = {n: order[(i + 1) % len(order)] for i, n in enumerate(order)}
        for row in self.store.jobs((RUNNING,)):
            ranks = self.core.rank_nodes(row)
            memory = self.memory(row.id)
            if memory.copying is not None or not ranks:
                continue
            if any(node not in partners for node in ranks.values()):
                continue  # a node of the gang left: its exit comes next
            # Copied already, unless the partners changed (one may have left with it).
            pairs = tuple(sorted((n, partners[n]) for n in set(ranks.values())))
            last, before = memory.copied or (None, ())
            memory.copied = (last if before == pairs else None, pairs)
            memory.copying = self._copier.submit(
                copy_newest,
                self.node_files,
                self.core.roots(row.id),
                ranks,
                partners,
                memory.copied[0],
            )

    def _copy_done(self, job_id: str, future: Future) -> None:
        try:
            name = future.result()
        except (OSError, ck.CheckpointError) as e:  # pruned under it, a node went: next time
            log.info("AI Grid: job %s: copying its checkpoint failed: %s", job_id, e)
            return
        memory = self.memory(job_id)
        last, partners = memory.copied or (None, ())
        if name is None or name == last:
            return
        memory.copied = (name, partners)
        with self.store.write():
            row = self.store.job(job_id)
            if row is None:
                return
            info = {**(row.checkpoint or {}), "copied": {"name": name, "at": time.time()}}
            self.store.update_job(job_id, checkpoint=info)
            checkpoint_event(self.journal, job_id, "copied", checkpoint=name)
