"""Recovery: a new master picks up where the last one left off.

Every step of a job is stored before it is taken, so the store says what was under way.
:meth:`Recovery.recover` reloads the queue, adopts the replicas that still run (the
executor reconciles them), settles those that ended while no master was there, sweeps
dataset copies nothing names, and takes every active job on from the step it was at:
a gang placed but not started starts, a checkpoint request or restore is followed again, a
gang stopping for a reason is stopped again (the executor forgot the first request).
"""

from __future__ import annotations

import logging

from ..model import ACTIVE_STATES, RUNNING, STARTING
from ..records import Migration
from ..states import LIVE_REPLICA, MigrationState
from .core import Core, Part
from .datasets import Datasets
from .launcher import Launcher
from .lifecycle import Lifecycle
from .moves import Moves
from .queue import JobQueue

log = logging.getLogger(__name__)


class Recovery(Part):
    def __init__(
        self,
        core: Core,
        queue: JobQueue,
        lifecycle: Lifecycle,
        launcher: Launcher,
        moves: Moves,
        datasets: Datasets,
    ) -> None:
        super().__init__(core)
        self.queue = queue
        self.lifecycle = lifecycle
        self.launcher = launcher
        self.moves = moves
        self.datasets = datasets
        #: Why picking up after the last master failed; None once it has succeeded.
        self.error: str | None = "not started"

    def recover(self) -> None:
        """Pick up where a previous master left off: adopt live replicas, settle the rest."""
        self.queue.load()
        self.queue.load_history()
        live = self.store.replicas_in(LIVE_REPLICA)
        adopted = set(self.executor.reconcile([r.handle for r in live]))
        lost = self.lifecycle.lost_on_restart = {r.id for r in live} - adopted
        self.core.live_replicas = bool(live)
        if live:
            log.info(
                "AI Grid master restart: %d replica(s) adopted, %d ended while it was down",
                len(adopted),
                len(lost),
            )
        self.memory.clear("checkpoint_staging")
        self.memory.clear("data_staging")
        self.datasets.sweep()
        for row in self.store.jobs(ACTIVE_STATES):
            request = (row.checkpoint or {}).get("request")
            migration = Migration.of(row)
            restoring = migration is not None and migration.state == MigrationState.RESTORING
            if (request and request["state"] == "pending") or restoring:
                self.memory(row.id).watching = True
            unstarted = not self.store.replicas(row.id, row.attempt)
            prestart = migration.waiting if migration else None
            if (
                prestart is not None
                and prestart.attempt == row.attempt
                and row.pending_state is None
            ):
                if restoring:  # staged and verified: say go
                    self.moves.resume(row, migration.checkpoint)
                    continue
                unstarted = True  # started ahead of time, still waiting for the go
            if row.state == STARTING and unstarted and row.pending_state is None:
                # It died between placing the gang and starting it (or while staging).
                self.launcher.start_or_stage(row)
                continue
            with self.store.write():
                if row.pending_state is not None:
                    self.lifecycle.stop_replicas(row.id, row.attempt)
                elif row.state == STARTING and not self.executor.capabilities.slow_starts:
                    # It died after starting every replica, before saying the job runs.
                    reps = self.store.replicas(row.id, row.attempt)
                    if reps and all(r.state == "running" for r in reps):
                        self.lifecycle.set_state(row, RUNNING)
                # A crash between the last exit and the job's end leaves nothing to wait for.
                self.lifecycle.settle_if_done(self.store.job(row.id))
