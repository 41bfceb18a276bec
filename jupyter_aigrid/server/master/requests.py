"""Checkpoints the master asks a running gang for, and the control files they go through.

A request is a control file on each node the gang runs on (and SIGUSR1 where the executor
can deliver it); every rank answers at its next step boundary, once it has written its
piece, with an ack file. A gang *listens* once every rank has called
``runtime.should_checkpoint()``. What a checkpoint was for (a migration, a preemption) is
:mod:`.moves`' business.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ... import checkpoints as ck
from .. import checkpoint_transfer as transfer
from .. import events
from ..errors import Conflict
from ..model import RUNNING
from ..records import Job
from ..views import move_blocker
from .core import Core, Journal, Part
from .reads import Reads

log = logging.getLogger(__name__)
#: What a finished request left: (the request, the checkpoint written or None, why not).
Answer = tuple[dict[str, Any], dict[str, Any] | None, str | None] | None


def checkpoint_event(journal: Journal, job_id: str, state: str, **data: Any) -> None:
    journal.record(
        events.JOB_CHECKPOINT,
        job_id,
        {"job_id": job_id, "state": state}
        | {k: data.get(k) for k in ("checkpoint", "bytes", "seconds", "reason")},
    )


class CheckpointRequests(Part):
    """Asking running gangs for checkpoints, and reading their answers."""

    def __init__(self, core: Core, reads: Reads, timeout_s: float = 120.0) -> None:
        super().__init__(core)
        self.reads = reads
        #: How long a gang has to answer a checkpoint request (and to restore one).
        self.timeout_s = timeout_s

    def listening(self, row: Job) -> bool:
        """Does every rank of the running attempt answer checkpoint requests (it called
        ``runtime.should_checkpoint()``)?"""
        if row.state != RUNNING:
            return False
        memory = self.memory.get(row.id)
        if memory is not None and memory.listening == row.attempt:
            return True
        roots, ranks = self.core.roots(row.id), self.core.rank_nodes(row)
        calls = [(n, transfer.is_listening, (roots[n], row.attempt, r)) for r, n in ranks.items()]
        listening = bool(ranks) and all(self.node_files.call_each(calls, False))
        if listening:  # for the rest of the attempt: not asked of every node again
            self.memory(row.id).listening = row.attempt
        return listening

    def check_can_move(self, row: Job, what: str) -> None:

        listening = row.state == RUNNING and self.listening(row)
        why = move_blocker(row, what, listening)
        if why is not None:
            raise Conflict(why)

    def checkpoint_now(self, job_id: str, user: str, admin: bool) -> dict[str, Any]:
        row = self.reads.visible(job_id, user, admin)
        self.check_can_move(row, "checkpoint")
        with self.store.write():
            self.request_checkpoint(row, f"requested by {user}")
        return self.reads.view(self.store.job(job_id))

    def request_checkpoint(self, row: Job, reason: str, then: str | None = None):
        """Ask every rank for a checkpoint at its next step boundary: a control file on each
        node the gang runs on, and SIGUSR1 where the executor can deliver it."""
        now = time.time()
        info = dict(row.checkpoint or {})
        count = int(info.get("requests") or 0) + 1
        request = {
            "id": f"{row.attempt}.{count}",
            "state": "pending",
            "requested_at": now,
            "deadline": now + self.timeout_s,
            "reason": reason,
            "then": then,
        }
        info.update(requests=count, request=request)
        self.store.update_job(row.id, checkpoint=info)
        checkpoint_event(self.journal, row.id, "requested", reason=reason)
        roots, ranks = self.core.roots(row.id), self.core.rank_nodes(row)
        nodes = sorted(set(ranks.values()))
        self.node_files.call_each(
            [(n, transfer.ask, ([roots[n]], request["id"], reason)) for n in nodes]
        )
        if self.executor.capabilities.checkpoint_signal:
            for rep in self.store.replicas(row.id, row.attempt):
                root = roots[rep.node]
                listener = self._read_control(rep.node, root, ck.listen_file, row, rep.rank)
                if listener and isinstance(listener.get("pid"), int):
                    self.executor.signal_checkpoint(rep.handle, listener["pid"])
        self.memory(row.id).watching = True

    def _read_control(self, node: str, root: Path, which, row: Job, rank: int):
        """One rank's control file (``which``: ``ck.listen_file``...), read on its node."""
        path = which(root, row.attempt, rank)
        return self.node_files.call_each([(node, ck.read_json, (path, root))])[0]

    def answers(self, row: Job, which) -> list[dict[str, Any] | None]:
        """Every rank's control file ``which`` of the running attempt, read on its node (all
        nodes at once), in rank order; None for those not (yet) there."""
        roots, ranks = self.core.roots(row.id), self.core.rank_nodes(row)
        calls = [
            (node, ck.read_json, (which(roots[node], row.attempt, rank), roots[node]))
            for rank, node in sorted(ranks.items())
        ]
        return self.node_files.call_each(calls)

    def check_answers(self, row: Job, request: dict[str, Any], now: float) -> Answer:
        """Record what the gang answered to ``request`` (every rank wrote it, or the deadline
        passed): the request as it ended, the checkpoint written (None on a timeout) and why
        not; None while the request is still open."""
        answers = self.answers(row, ck.ack_file)
        if answers and all(a and a.get("request") == request["id"] for a in answers):
            latest = {
                "name": answers[0].get("checkpoint"),
                "step": answers[0].get("step"),
                "bytes": sum(int(a.get("bytes") or 0) for a in answers),
                "at": now,
                "seconds": max(float(a.get("seconds") or 0) for a in answers),
            }
            request = {**request, "state": "written", "checkpoint": latest["name"]}
            info = {**(row.checkpoint or {}), "request": request, "latest": latest}
            self.store.update_job(row.id, checkpoint=info)
            checkpoint_event(
                self.journal,
                row.id,
                "written",
                checkpoint=latest["name"],
                bytes=latest["bytes"],
                seconds=latest["seconds"],
                reason=request["reason"],
            )
            return request, latest, None
        elif now > request["deadline"]:
            reason = f"the job did not checkpoint within {self.timeout_s:g} s"
            request = {**request, "state": "timeout"}
            info = {**(row.checkpoint or {}), "request": request}
            self.store.update_job(row.id, checkpoint=info)
            checkpoint_event(self.journal, row.id, "timeout", reason=reason)
            log.warning("AI Grid: job %s: %s", row.id, reason)
            return request, None, reason
        return None

    def clear(self, row: Job) -> None:
        """A new attempt must not take an earlier attempt's request for its own."""
        roots = self.core.roots(row.id)
        nodes = sorted(set(self.core.rank_nodes(row).values()))
        self.node_files.call_each([(n, transfer.clear_request, (roots[n],)) for n in nodes])
