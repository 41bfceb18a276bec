"""A round: the snapshot and the queue through ``decide()``, and its decisions applied.

``decide()`` (:mod:`..policies.decide`) makes every scheduling decision; this applies them,
exactly and in order: launches, preemptions, migrations. With ``record_rounds`` each round's
input and output is kept (:attr:`Round.recorded`), so a test can replay them through the
simulator and see it decide the same.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from ..model import ACTIVE_STATES, Migrate
from ..policies import Context, decide
from ..records import Job, Migration
from .core import Core, Part
from .inference import Inference
from .launcher import Launcher
from .lifecycle import Lifecycle
from .moves import Moves
from .queue import JobQueue
from .reads import Reads
from .requests import CheckpointRequests


class Round(Part):
    def __init__(
        self,
        core: Core,
        policy: Any,
        queue: JobQueue,
        reads: Reads,
        inference: Inference,
        launcher: Launcher,
        lifecycle: Lifecycle,
        requests: CheckpointRequests,
        moves: Moves,
        record: bool = False,
    ) -> None:
        super().__init__(core)
        self.policy = policy
        self.queue = queue
        self.reads = reads
        self.inference = inference
        self.launcher = launcher
        self.lifecycle = lifecycle
        self.requests = requests
        self.moves = moves
        #: (snapshot, queue, context, decisions) of every round, when ``record`` is set
        #: (tests and debugging; it grows without bound); None otherwise.
        self.rounds: list[tuple[Any, ...]] | None = [] if record else None

    def run(self) -> None:
        """One round: the snapshot and the queue, ``decide()``, and what it decided, applied."""
        now = time.time()
        queue = self.queue.ready(now)
        if not queue:
            return
        active = self.store.jobs(ACTIVE_STATES)  # one read for the snapshot and the context
        snapshot = self.reads.snapshot(active)
        context = self._context(active)
        if self.rounds is not None:  # the book changes as jobs end: keep it as it was
            context = replace(context, book=self.inference.book.copy())
        decided = decide(snapshot, queue, self.policy, context)
        self.inference.choices = dict(decided.choices)
        if self.rounds is not None:
            self.rounds.append((snapshot, tuple(queue), context, decided))
        for launch in decided.launches:
            self.launcher.apply(launch)
        for preempt in decided.preemptions:
            with self.store.write():
                self.lifecycle.preempt(preempt.job_id, preempt.reason)
        for move in decided.migrations:
            with self.store.write():
                self._migrate_for(move)
            self.moves.prestart(move.job_id)

    def _context(self, rows: list[Job]) -> Context:
        """What the round needs to know about running gangs (``rows``: the active jobs)
        beyond the snapshot."""
        settled = frozenset(r.id for r in rows if r.settled)
        return Context(
            book=self.inference.book,
            costs=self.inference.gpu_cost_per_hour,
            settled=settled,
            movable=frozenset(
                r.id
                for r in rows
                if r.id in settled and r.spec.get("preemptible") and self.requests.listening(r)
            ),
            moving=any(m.active for m in map(Migration.of, rows) if m),
        )

    def _migrate_for(self, move: Migrate) -> None:
        row = self.store.job(move.job_id)
        if row is None or not row.settled:
            return
        self.moves.begin_migration(row, move.placement, move.reason)
