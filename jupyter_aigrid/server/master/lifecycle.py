"""The job lifecycle: submit, start, exit, finish, requeue, fail, cancel and preempt.

:class:`Lifecycle` is the only writer of a job's ``state``: :meth:`Lifecycle.set_state`
records the change in the store (the store checks it against :mod:`..states`), records its
event, keeps the queue in memory in step and drops the job's memory when it ends. A gang's
end goes through :meth:`Lifecycle.finish`, which reads ``pending_state`` (what the gang was
stopped for: a restart, a requeue, a preemption, a migration, a failure, a cancel) and takes
the job where that says.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from dataclasses import replace
from typing import Any

from .. import events
from ..admission import check_admissible
from ..errors import Conflict
from ..images import resolve_image
from ..model import (
    ACTIVE_STATES,
    CANCELLED,
    FAILED,
    FINAL_STATES,
    PREEMPTED,
    QUEUED,
    RUNNING,
    STARTING,
    SUCCEEDED,
    JobState,
    Placement,
    ReplicaExit,
)
from ..records import Job, Migration, Replica
from ..states import LIVE_REPLICA, Stop
from ..templating import choose, describe, templates
from ..views import cancel_blocker
from .core import Core, Part
from .datasets import Datasets
from .inference import Inference
from .ports import Launching, Moving
from .queue import JobQueue
from .reads import Reads
from .requests import CheckpointRequests

log = logging.getLogger(__name__)
#: Restarts a gang gets beyond its ``max_restarts`` when a node it ran on left the cluster.
NODE_LOSS_RESTARTS = 3
#: ``pending_state`` of a gang going back to the queue through no fault of its own (the
#: master died while starting it): a new attempt, not a restart. Never a job's state.
REQUEUE = Stop.REQUEUE
#: ``pending_state`` of a gang stopping so that it can move.
MIGRATE = Stop.MIGRATE


class Lifecycle(Part):
    """Every change of a job's state (see the module docstring)."""

    #: Wired by the master (they call back here).
    launcher: Launching
    moves: Moving

    def __init__(
        self,
        core: Core,
        queue: JobQueue,
        reads: Reads,
        datasets: Datasets,
        inference: Inference,
        requests: CheckpointRequests,
        *,
        stop_grace_s: float = 10.0,
        restart_backoff_s: float = 1.0,
        allow_uncatalogued_images: bool = False,
    ) -> None:
        super().__init__(core)
        self.queue = queue
        self.reads = reads
        self.datasets = datasets
        self.inference = inference
        self.requests = requests
        #: SIGTERM, then SIGKILL this long after.
        self.stop_grace_s = stop_grace_s
        #: The first restart after a failure waits this long; each next one twice as long.
        self.restart_backoff_s = restart_backoff_s
        #: May a job name an image reference that is not in the catalog (pulled with the
        #: server's registry credentials, run on the cluster's hosts)?
        self.allow_uncatalogued_images = allow_uncatalogued_images
        #: Replicas that ended while the master was down (set by recovery).
        self.lost_on_restart: set[str] = set()

    def submit(self, spec: dict[str, Any], owner: str, inputs: dict[str, bytes]) -> dict[str, Any]:
        spec = self.datasets.resolve_datasets(spec)
        check_admissible(spec, self.nodes.all, self.executor.name)
        image = None
        if not self.executor.capabilities.host_env:  # replicas run in an image
            framework = templates()[spec.get("template") or choose(spec)].framework
            image = resolve_image(
                spec.get("image"), framework, self.store.images(), self.allow_uncatalogued_images
            )
        with self.store.write():
            row = self.store.insert_job(
                {
                    "name": spec["name"],
                    "owner": owner,
                    "kind": spec["kind"],
                    "state": QUEUED,
                    "priority": spec["priority"],
                    "gpus": spec["gpus"],
                    "replicas": spec["replicas"],
                    "spec": spec,
                    "description": describe(spec, image),
                    "submitted_at": time.time(),
                }
            )
            self.files.write_inputs(row.id, inputs)
            self.event_state(row, None)
        self.queue.track(row)
        return self.reads.view(row)

    def cancel(self, job_id: str, user: str, admin: bool) -> dict[str, Any]:
        row = self.reads.visible(job_id, user, admin)
        why = cancel_blocker(row)
        if why is not None:
            raise Conflict(why)
        reason = f"cancelled by {user}"
        with self.store.write():
            unstarted = row.state == STARTING and not self.store.replicas(job_id, row.attempt)
            if row.state in (QUEUED, PREEMPTED) or unstarted:  # unstarted: still staging
                self.set_state(row, CANCELLED, reason=reason, finished_at=time.time())
                self.moves.end_migration(self.store.job(job_id), succeeded=False)
            elif row.pending_state in (None, QUEUED, PREEMPTED, REQUEUE, MIGRATE):
                # A gang on its way back to the queue ends instead; one already failing for
                # good keeps its failure as the reason.
                self.store.update_job(job_id, pending_state=CANCELLED, reason=reason)
                self.stop_replicas(job_id, row.attempt)
        return self.reads.view(self.store.job(job_id))

    def handle_starts(self) -> None:
        """Executors that start replicas in the background (containers) say when each has
        started: a gang is running once all of its replicas are."""
        if not self.executor.capabilities.slow_starts:
            return
        jobs = set()
        with self.store.write():
            for replica_id in self.executor.started():
                rep = self.store.replica(replica_id)
                if rep is not None and rep.state == "launching":
                    self.store.update_replica(replica_id, state="running", started_at=time.time())
                    jobs.add((rep.job_id, rep.attempt))
            for job_id, attempt in jobs:
                row = self.store.job(job_id)
                reps = self.store.replicas(job_id, attempt)
                if (
                    row is not None
                    and row.state == STARTING
                    and row.attempt == attempt
                    and not row.pending_state
                    and all(r.state == "running" for r in reps)
                ):
                    self.set_state(row, RUNNING)

    def handle_exits(self, exits: list[ReplicaExit]) -> None:
        for exit_ in exits:
            with self.store.write():
                self.on_exit(exit_.replica_id, exit_.exit_code, exit_.never_started)
        self.core.live_replicas = bool(self.store.replicas_in(LIVE_REPLICA))

    def preempt(self, job_id: str, reason: str) -> None:
        """Checkpoint a running gang if it can, then stop it and requeue it: it resumes
        from that checkpoint when it runs again."""
        row = self.store.job(job_id)
        if row is None or row.state not in ACTIVE_STATES or row.pending_state:
            return  # ended, or already on its way out: nothing to do
        request = (row.checkpoint or {}).get("request")
        migration = Migration.of(row)
        if (request and request["state"] == "pending") or (migration and migration.active):
            return  # checkpointing already; it stops once that is done
        if self.requests.listening(row):
            log.info("AI Grid: job %s checkpoints, then it is %s", job_id, reason)
            self.requests.request_checkpoint(row, reason, then="preempt")
            return
        self.stop_to_requeue(job_id, reason)

    def stop_to_requeue(self, job_id: str, reason: str) -> None:
        """Stop a gang (SIGTERM, then SIGKILL after the grace) and requeue it once stopped."""
        row = self.store.job(job_id)
        if row is None or row.state not in ACTIVE_STATES or row.pending_state:
            return
        log.info("AI Grid: job %s %s", job_id, reason)
        self.store.update_job(job_id, pending_state=PREEMPTED, reason=reason)
        self.stop_replicas(job_id, row.attempt)
        self.settle_if_done(self.store.job(job_id))

    def stop_replicas(self, job_id: str, attempt: int) -> None:
        """SIGTERM every live replica of the attempt, SIGKILL after the grace period.

        Replicas already stopping are asked again: after a master restart the executor has
        forgotten the first request and its deadline.
        """
        for rep in self.store.replicas(job_id, attempt):
            if rep.state in LIVE_REPLICA:
                if rep.state != "stopping":
                    self.store.update_replica(rep.id, state="stopping")
                self.executor.stop(rep.handle, self.stop_grace_s)

    def on_exit(self, replica_id: str, code: int | None, never_started: bool = False) -> None:
        rep = self.store.replica(replica_id)
        if rep is None or rep.state not in LIVE_REPLICA:
            return
        self.store.update_replica(
            replica_id, state="exited", exit_code=code, finished_at=time.time()
        )
        row = self.store.job(rep.job_id)
        if row is None or row.state in FINAL_STATES or row.attempt != rep.attempt:
            return
        if never_started and row.pending_state is None:
            reason = (
                f"the master restarted while starting rank {rep.rank} on {rep.node}; "
                "starting the job again"
            )
            self.store.update_job(row.id, pending_state=REQUEUE, reason=reason)
            self.stop_replicas(row.id, row.attempt)
            self.settle_if_done(self.store.job(row.id))
        elif code != 0 and row.pending_state is None:
            # Stops the rest of the gang, and settles the job if nothing else runs.
            node_lost = code is None and rep.node not in self.nodes.by_name
            reason = self.failure_reason(rep, code)
            self.fail_gang(row.id, reason, retry=True, node_lost=node_lost)
        else:
            self.settle_if_done(row)

    def settle_if_done(self, row: Job) -> None:
        """Finish the job once every replica of its current attempt has exited."""
        reps = self.store.replicas(row.id, row.attempt)
        if reps and all(r.state == "exited" for r in reps):
            self.finish(row, {str(r.rank): r.exit_code for r in reps})

    def failure_reason(self, rep: Replica, code: int | None) -> str:
        where = f"rank {rep.rank} on {rep.node}"
        if code is None:
            if rep.node not in self.nodes.by_name:
                return f"{where} was lost: its node left the cluster"
            if rep.id in self.lost_on_restart:
                return f"{where} was lost on restart: its process ended while the master was down"
            return f"{where} was lost: its process ended without recording an exit status"
        text = f"{where} exited with code {code}"
        if code > 128:
            with contextlib.suppress(ValueError):
                text += f" ({signal.Signals(code - 128).name})"
        tail = self.files.stderr_tail(rep.job_id, rep.attempt, rep.rank)
        return text + (f"; last stderr lines:\n{tail}" if tail else "")

    def fail_gang(self, job_id: str, reason: str, retry: bool, node_lost: bool = False) -> None:
        """Stop the gang; it goes back to the queue if it may restart (``max_restarts``; a
        gang whose node left the cluster, up to NODE_LOSS_RESTARTS more: not its fault)."""
        row = self.store.job(job_id)
        most = row.spec.get("max_restarts", 0) + (NODE_LOSS_RESTARTS if node_lost else 0)
        again = retry and row.restarts < most
        self.store.update_job(job_id, pending_state=QUEUED if again else FAILED, reason=reason)
        self.stop_replicas(job_id, row.attempt)
        self.settle_if_done(self.store.job(job_id))

    def finish(self, row: Job, codes: dict[str, int | None]) -> None:
        pending = row.pending_state
        now = time.time()
        ran_s = max(0.0, now - (row.started_at or now))
        memory = self.memory(row.id)  # the attempt is over: what it was known for goes
        memory.listening = memory.copied = None
        if row.inference:
            clean = pending is None and all(c == 0 for c in codes.values())
            self.inference.learn(row, clean, ran_s)
        earlier = row.attained_gpu_s or 0.0
        attained = earlier + ran_s * max(row.gpus, 1)  # as Request.slots counts it
        if pending == MIGRATE:  # stopped to move: the gang starts where it goes
            migration = Migration.of(row)
            assert migration is not None, "a gang stopped to move has a migration"
            assert migration.target, "a migration has a target"
            waiting = migration.waiting  # started there already
            self.launcher.place(
                row,
                Placement.from_json(migration.target),
                exit_codes=codes,
                attempt=waiting.attempt if waiting else self.moves.next_attempt(row),
                attained_gpu_s=attained,
                reason=f"migrating: {migration.reason}",
            )
            self.launcher.start_or_stage(self.store.job(row.id))
            return
        clean = pending is None and all(c == 0 for c in codes.values())
        self.moves.end_migration(row, succeeded=clean)
        row = self.store.job(row.id)
        if pending in (QUEUED, REQUEUE):
            # QUEUED: a restart after a failure; REQUEUE: the master's doing, not counted.
            failed = pending == QUEUED
            retry_at = now + min(self.restart_backoff_s * 2**row.restarts, 60.0) * failed
            self.set_state(
                row,
                QUEUED,
                exit_codes=codes,
                placement=None,
                pending_state=None,
                restarts=row.restarts + failed,
                attempt=self.moves.next_attempt(row),
                started_at=None,
                attained_gpu_s=attained,
                retry_at=retry_at if failed else None,
                reason=f"{'restarting after' if failed else 'requeued'}: {row.reason}",
            )
            if failed:
                self.memory(row.id).not_before = retry_at
        elif pending == PREEMPTED:
            self.set_state(row, PREEMPTED, exit_codes=codes, attained_gpu_s=attained)
            self.set_state(
                self.store.job(row.id),
                QUEUED,
                placement=None,
                pending_state=None,
                attempt=self.moves.next_attempt(row),
                started_at=None,
                reason=f"requeued: {row.reason}",
            )
        elif pending in (FAILED, CANCELLED):
            self.set_state(row, pending, exit_codes=codes, finished_at=now)
        elif all(c == 0 for c in codes.values()):
            # Whatever it went through on the way (a restart, a move) is in its events.
            self.set_state(row, SUCCEEDED, exit_codes=codes, finished_at=now, reason=None)
            # Run time in all: earlier runs (known as slot-seconds) and this one.
            run_s = earlier / max(row.gpus, 1) + ran_s
            self.queue.succeeded(row, run_s)
            guess = row.prediction
            if guess:
                known = guess.get("run_s") is not None and run_s > 0
                error = round(abs(guess["run_s"] - run_s) / run_s, 6) if known else None
                self.store.update_job(
                    row.id, prediction={**guess, "actual_s": run_s, "error": error}
                )
        else:  # pragma: no cover - a non-zero exit always sets pending_state first
            self.set_state(row, FAILED, exit_codes=codes, finished_at=now)

    def enforce_time_limits(self, now: float) -> None:
        for row in self.store.jobs((RUNNING,)):
            limit = row.spec.get("time_limit_s")
            started = row.started_at
            if limit and started and not row.pending_state and now - started > limit:
                with self.store.write():
                    self.fail_gang(row.id, f"time limit of {limit:g} s exceeded", retry=False)

    def set_state(self, row: Job, state: str, **fields: Any) -> None:
        with self.store.write():
            self.store.update_job(row.id, state=state, **fields)
            new = replace(row, **fields, state=JobState(state))
            self.event_state(new, str(row.state) if row.state != state else None)
            if state in (SUCCEEDED, CANCELLED):  # it never resumes: its checkpoints go
                self.journal.after_commit(lambda: self.core.drop_checkpoints(row.id))
        self.queue.track(new)
        if state in FINAL_STATES:
            self.memory.end(row.id)

    def event_state(self, row: Job, previous: str | None) -> None:
        data = {
            "job_id": row.id,
            "name": row.name,
            "owner": row.owner,
            "state": str(row.state),
            "previous_state": previous,
            "reason": row.reason,
            "gpus": row.gpus,
            "attempt": row.attempt or 0,
        }
        self.journal.record(events.JOB_STATE, row.id, data)
