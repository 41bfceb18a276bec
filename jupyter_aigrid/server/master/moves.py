"""Migrations, and gangs resuming from their checkpoint (the requests: :mod:`.requests`).

A migration moves a running gang: ``checkpointing -> stopping -> transferring -> restoring ->
done``, or ``failed`` (the gang keeps running where it was, or resumes from its checkpoint).
A gang that starts again after a failure or a preemption takes the second half of the same
path (``transferring -> restoring``, kind ``resume``). Each step is stored on the job before
it is taken, so a master that dies in the middle picks it up where it was.

A migrating gang's replicas are started at its destination as soon as the migration begins
(``prestart``, where the executor can): they run the job's start-up (the interpreter, its
imports, the model) while the checkpoint is written and copied, and wait in
``runtime.restore()`` until the master names the checkpoint (a go file). If the migration
fails, they are stopped and their attempt number is never used again.

:class:`Moves` is the master's component for all of it (the master thread runs it); only the
copying and hashing of checkpoints runs on the core's pool.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from typing import Any

from ... import checkpoints as ck
from .. import checkpoint_transfer as transfer
from .. import events
from ..errors import Conflict
from ..model import RUNNING, STARTING, Placement
from ..records import Job, Migration, Prestart
from ..snapshot import Snapshot
from ..spec import SpecError
from ..states import MigrationState, PrestartState, Stop
from .core import Core, Part
from .ports import Ending, Launching, Staging
from .queue import request_of
from .reads import Reads
from .requests import CheckpointRequests, checkpoint_event

log = logging.getLogger(__name__)
#: ``pending_state`` of a gang stopping so that it can move.
MIGRATE = Stop.MIGRATE


class Moves(Part):
    """Asking for checkpoints, moving gangs, staging checkpoints where gangs resume."""

    #: Wired by the master (they call back here).
    lifecycle: Ending
    launcher: Launching
    data_staging: Staging

    def __init__(
        self,
        core: Core,
        reads: Reads,
        requests: CheckpointRequests,
        policy: Any,
        prestart: bool = True,
    ) -> None:
        super().__init__(core)
        self.reads = reads
        self.requests = requests
        self.policy = policy
        #: Start a migrating gang at its destination while its checkpoint is written (where
        #: the executor can: ``prestart``)?
        self.migration_prestart = prestart and core.executor.capabilities.prestart

    # -- checkpoints on request ---------------------------------------------------------------

    def _migration_event(self, job_id: str, migration: Migration) -> None:
        phase = migration.phases[-1] if migration.phases else None
        closed = [p for p in migration.phases if p.finished_at is not None]
        last = closed[-1] if closed else None
        self.journal.record(
            events.JOB_MIGRATION,
            job_id,
            {
                "job_id": job_id,
                "migration": migration.id,
                "kind": migration.kind,
                "state": str(migration.state),
                "phase": phase.phase if phase else None,
                "duration_s": last.duration_s if last else None,
                "bytes": last.bytes if last else None,
                "checkpoint": migration.checkpoint,
                "reason": migration.error or migration.reason,
            },
        )

    def _set_migration(self, job_id: str, migration: Migration, event: bool = True) -> None:
        """Write the job's migration (the store checks the change against its table), and
        record its event unless only its prestart changed."""
        self.store.update_job(job_id, migration=migration.to_json())
        if event:
            self._migration_event(job_id, migration)

    def watch(self) -> None:
        """Answers to checkpoint requests, restores, staging that finished, deadlines."""
        self._collect_staging()
        now = time.time()
        for job_id, memory in self.memory.having("watching"):
            row = self.store.job(job_id)
            request = (row.checkpoint or {}).get("request") if row else None
            migration = Migration.of(row)
            pending = bool(request) and request["state"] == "pending"
            restoring = migration is not None and migration.state == MigrationState.RESTORING
            if row is None or row.state not in (RUNNING, STARTING) or not (pending or restoring):
                memory.watching = False
                continue
            with self.store.write():
                answer = None
                if pending and row.state == RUNNING:
                    answer = self.requests.check_answers(row, request, now)
                elif restoring:
                    self._check_restored(row, migration, now)
                if answer is not None:
                    self._after_checkpoint(self.store.job(job_id), *answer)

    def _after_checkpoint(
        self,
        row: Job,
        request: dict[str, Any],
        latest: dict[str, Any] | None,
        error: str | None = None,
    ) -> None:
        """What the checkpoint was for: a migration goes on (or fails), a preemption stops
        the gang either way (a gang that cannot checkpoint loses its progress since the
        last one, as it would without us)."""
        then, now = request.get("then"), time.time()
        migration = Migration.of(row)
        if then == "migrate" and migration is not None and migration.active:
            if latest is None:
                error = f"{error}; it runs on"
                migration = self.without_prestart(row, migration, error)
                self._set_migration(row.id, migration.next("failed", now, error=error))
                return
            moved = migration.next("stopping", now, latest["bytes"], checkpoint=latest["name"])
            self._set_migration(row.id, moved)
            self.store.update_job(row.id, pending_state=MIGRATE)
            self.lifecycle.stop_replicas(row.id, row.attempt)
            self.lifecycle.settle_if_done(self.store.job(row.id))
        elif then == "preempt":
            self.lifecycle.stop_to_requeue(row.id, request["reason"])

    # -- migrations -----------------------------------------------------------------------------

    def migrate_now(self, job_id: str, user: str, admin: bool, node: str | None) -> dict[str, Any]:

        row = self.reads.visible(job_id, user, admin)
        if node is not None and node not in self.nodes.by_name:
            known = ", ".join(sorted(self.nodes.by_name))
            msg = f"no node named {node!r}; the nodes are: {known}"
            raise SpecError(msg, field="node")
        self.requests.check_can_move(row, "migrate")
        target = self._target(row, node)
        if target is None:
            where = f"on {node}" if node else "on other GPUs"
            msg = f"there is no room for job {job_id}'s gang {where} now"
            raise Conflict(msg)
        with self.store.write():
            self.begin_migration(row, target, f"requested by {user}")
        self.prestart(job_id)
        return self.reads.view(self.store.job(job_id))

    def _target(self, row: Job, node: str | None) -> Placement | None:
        """Where the gang could go now: on ``node``, or else on other nodes than its own
        if it can, else on other GPUs of its own nodes."""
        snapshot, request = self.reads.snapshot(), request_of(row)
        own = set(self.core.rank_nodes(row).values())
        choices = [{node}] if node else [set(self.nodes.by_name) - own, set(self.nodes.by_name)]
        for allowed in choices:
            views = tuple(v for v in snapshot.nodes if v.name in allowed)
            if views:
                placed = self.policy.place(request, Snapshot(nodes=views, now=snapshot.now))
                if placed is not None:
                    return placed
        return None

    def begin_migration(self, row: Job, target: Placement, reason: str) -> None:
        now = time.time()
        previous = Migration.of(row)
        migration = Migration(
            id=(previous.id if previous else 0) + 1,
            kind="migrate",
            state=MigrationState.CHECKPOINTING,
            started_at=now,
            reason=reason,
            from_nodes=tuple(sorted(set(self.core.rank_nodes(row).values()))),
            to=tuple(target.nodes),
            target=target.to_json(),
        )
        log.info("AI Grid: job %s migrates to %s (%s)", row.id, ", ".join(target.nodes), reason)
        self._set_migration(row.id, migration.next("checkpointing", now))
        self.requests.request_checkpoint(self.store.job(row.id), reason, then="migrate")

    def end_migration(self, row: Job, succeeded: bool) -> None:
        """A gang that ended (or went back to the queue) ends its migration too."""
        migration = Migration.of(row)
        if migration is None or not migration.active:
            return
        migration = self.without_prestart(row, migration, "the migration ended")
        if succeeded:
            self._set_migration(row.id, migration.next("done", time.time()))
        else:
            error = row.reason or "the gang stopped"
            self._set_migration(row.id, migration.next("failed", time.time(), error=error))

    # -- replicas started ahead of time at the destination ----------------------------------------

    def next_attempt(self, row: Job) -> int:
        """The job's next attempt number: after every attempt that ever had replicas (those
        of a dropped prestart included, so their replica ids and files are never reused)."""
        return max(row.attempt, self.store.last_attempt(row.id) or 0) + 1

    def prestart(self, job_id: str) -> None:
        """Start a migrating gang's replicas at its destination now, while its checkpoint is
        being written: they run the job's start-up and wait in ``runtime.restore()`` for the
        master's go (:meth:`resume`). Not for gangs whose datasets are staged first."""
        row = self.store.job(job_id)
        migration = Migration.of(row)
        if not (
            self.migration_prestart
            and row is not None
            and migration is not None
            and migration.state == MigrationState.CHECKPOINTING
            and migration.prestart is None
            and not self.data_staging.needs_data(row)
        ):
            return
        attempt = self.next_attempt(row)
        prestart = Prestart(attempt, PrestartState.WAITING)
        with self.store.write():
            self._set_migration(job_id, replace(migration, prestart=prestart), event=False)
        placed = replace(row, attempt=attempt, placement=migration.target)
        self.launcher.launch(placed, None, prestart=True)

    def without_prestart(self, row: Job, migration: Migration, why: str) -> Migration:
        """``migration`` with the replicas it started ahead of time (if they still wait)
        dropped: stopped, unless they are already the gang's own (its current attempt)."""
        prestart = migration.waiting
        if prestart is None:
            return migration
        if prestart.attempt != row.attempt:
            self.lifecycle.stop_replicas(row.id, prestart.attempt)
        dropped = replace(prestart, state=PrestartState.DROPPED, reason=why)
        return replace(migration, prestart=dropped)

    def drop_prestart(self, job_id: str, why: str) -> None:
        """The migration goes on without the replicas it started ahead of time."""
        row = self.store.job(job_id)
        migration = Migration.of(row)
        if row is not None and migration is not None:
            dropped = self.without_prestart(row, migration, why)
            self._set_migration(job_id, dropped, event=False)

    def resume(self, row: Job, restore: str | None) -> None:
        """Start the placed gang, restoring checkpoint ``restore`` if set; or, if its replicas
        were started ahead of time and wait, give them the go (the checkpoint's name and
        the digest staging verified) and the gang runs."""
        migration = Migration.of(row)
        prestart = migration.waiting if migration else None
        reps = self.store.replicas(row.id, row.attempt)
        if not (prestart is not None and prestart.attempt == row.attempt and reps):
            self.launcher.launch(row, restore)
            return
        self.requests.clear(row)
        roots, calls = self.core.roots(row.id), []
        for slot in Placement.from_json(row.placement).slots:
            env = self.restore_env(row, slot, restore) if restore else {}
            go = {"checkpoint": restore, "sha256": env.get("AIGRID_RESTORE_SHA256")}
            path = ck.go_file(roots[slot.node], row.attempt, slot.rank)
            calls.append((slot.node, ck.write_json, (path, go)))
        for (node, _, _), done in zip(calls, self.node_files.call_each(calls, False), strict=True):
            if done is False:  # a lost node's replicas are reported lost by the executor
                log.warning("AI Grid: job %s: could not tell %s to go", row.id, node)
        with self.store.write():  # after the go files: a restart before this says go again
            went = replace(prestart, state=PrestartState.GO)
            self._set_migration(row.id, replace(migration, prestart=went), event=False)
            ended = [r for r in reps if r.state == "exited"]
            failed = [r for r in ended if r.exit_code != 0]
            if failed:  # it died before the go, as it would have at a cold start
                reason = self.lifecycle.failure_reason(failed[0], failed[0].exit_code)
                self.lifecycle.fail_gang(row.id, reason, retry=True)
                return
            started = all(r.state in ("running", "exited") for r in reps)
            if not self.executor.capabilities.slow_starts or started:
                self.lifecycle.set_state(self.store.job(row.id), RUNNING)
            self.lifecycle.settle_if_done(self.store.job(row.id))

    # -- resuming from a checkpoint ------------------------------------------------------------

    def stage(self, row: Job) -> None:
        """Put the newest verified checkpoint on the gang's nodes, in the background; the
        replicas start once it is there (:meth:`_collect_staging`)."""
        now = time.time()
        migration = Migration.of(row)
        moving = migration is not None and migration.active
        if moving and migration.state == MigrationState.STOPPING:
            migration = migration.next("transferring", now)
        elif not (moving and migration.state == MigrationState.TRANSFERRING):
            migration = Migration(
                id=(migration.id if migration else 0) + 1,
                kind="resume",
                state=MigrationState.TRANSFERRING,
                started_at=now,
                reason=row.reason,
                to=tuple(Placement.from_json(row.placement).nodes),
            ).next("transferring", now)
        self._set_migration(row.id, migration)
        future = self.core.stager.submit(
            transfer.stage,
            self.core.holders(row.id),
            self.core.rank_nodes(row),
            row.replicas,
            self.node_files,
        )
        self.memory(row.id).checkpoint_staging = (row.attempt, future)

    def _collect_staging(self) -> None:
        for job_id, memory in self.memory.having("checkpoint_staging"):
            attempt, future = memory.checkpoint_staging
            if not future.done():
                continue
            memory.checkpoint_staging = None
            self.memory.settle(job_id)
            row = self.store.job(job_id)
            if row is None or row.state != STARTING or row.attempt != attempt:
                continue  # cancelled or requeued meanwhile
            try:
                staged = future.result()
            except Exception as e:
                log.exception("AI Grid: staging the checkpoint of job %s failed", job_id)
                staged = transfer.Staged(problems=[("", f"staging failed: {e}")])
            with self.store.write():
                self._staged(row, staged)
            # Its own transactions: each replica is on record before its process starts.
            self.resume(self.store.job(job_id), staged.name)

    def _staged(self, row: Job, staged: transfer.Staged) -> None:
        now = time.time()
        for name, problem in staged.problems:
            log.warning("AI Grid: job %s: checkpoint %s passed over: %s", row.id, name, problem)
            checkpoint_event(
                self.journal, row.id, "corrupt", checkpoint=name or None, reason=problem
            )
        migration = Migration.of(row)
        assert migration is not None, "a gang being staged has a migration"
        if staged.name is not None:
            migration = migration.next(
                "restoring",
                now,
                staged.copied,
                checkpoint=staged.name,
                bytes=staged.bytes,
                deadline=now + self.requests.timeout_s,
            )
            self.memory(row.id).watching = True
        else:
            error = "no verified checkpoint to restore"
            if staged.problems:
                error += ": " + "; ".join(f"{n} {p}" for n, p in staged.problems[:3])
            migration = migration.next("failed", now, staged.copied, error=error)
        self._set_migration(row.id, migration)

    def _check_restored(self, row: Job, migration: Migration, now: float) -> None:
        answers = self.requests.answers(row, ck.restored_file)
        if answers and all(a and a.get("checkpoint") == migration.checkpoint for a in answers):
            self._set_migration(row.id, migration.next("done", now, migration.bytes))
            checkpoint_event(
                self.journal,
                row.id,
                "restored",
                checkpoint=migration.checkpoint,
                bytes=migration.bytes,
            )
        elif now > (migration.deadline or now):
            error = (
                f"the job did not restore {migration.checkpoint} within "
                f"{self.requests.timeout_s:g} s (does it call runtime.restore()?)"
            )
            self._set_migration(row.id, migration.next("failed", now, error=error))

    def restore_env(self, row: Job, slot: Any, name: str) -> dict[str, str]:
        """``AIGRID_RESTORE`` (the checkpoint staged on the slot's node) and the sha256 that
        staging has just verified its piece of this rank against: ``runtime.restore()``
        need not hash the same bytes again while its manifest still says that digest."""
        root = self.core.roots(row.id)[slot.node]
        env = {"AIGRID_RESTORE": str(root / name)}
        with contextlib.suppress(ck.CheckpointError, OSError):
            manifest = self.node_files.call(
                slot.node, ck.read_manifest, root / name, slot.rank, root
            )
            env["AIGRID_RESTORE_SHA256"] = manifest["files"][ck.data_file(slot.rank)]["sha256"]
        return env
