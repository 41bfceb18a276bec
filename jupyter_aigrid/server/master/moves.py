"""Checkpoints the master asks for, migrations, and gangs resuming from their checkpoint.

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
from pathlib import Path
from typing import Any

from ... import checkpoints as ck
from .. import events
from ..errors import Conflict
from ..model import RUNNING, STARTING, Placement
from ..snapshot import Snapshot
from ..spec import SpecError
from ..states import Stop, migration_active
from ..views import move_blocker
from .core import Core, Journal, Part, handle_of
from .ports import Ending, Launching, Staging
from .queue import request_of
from .reads import Reads

log = logging.getLogger(__name__)
#: ``pending_state`` of a gang stopping so that it can move.
MIGRATE = Stop.MIGRATE
ENDED = ("done", "failed")


def next_phase(
    migration: dict[str, Any], state: str, now: float, nbytes: int | None = None, **fields: Any
) -> dict[str, Any]:
    """``migration`` with its open phase closed (with ``nbytes`` moved, if known) and
    ``state`` begun: a new phase, or the end (``done``/``failed``)."""
    phases = [dict(p) for p in migration["phases"]]
    if phases and phases[-1]["finished_at"] is None:
        last = phases[-1]
        last["finished_at"] = now
        last["duration_s"] = round(now - last["started_at"], 6)
        if nbytes is not None:
            last["bytes"] = nbytes
    if state not in ENDED:
        phases.append(
            {
                "phase": state,
                "started_at": now,
                "finished_at": None,
                "duration_s": None,
                "bytes": None,
            }
        )
    out = {**migration, **fields, "state": state, "phases": phases}
    if state in ENDED:
        out["finished_at"] = now
    return out


def checkpoint_event(journal: Journal, job_id: str, state: str, **data: Any) -> None:
    journal.record(
        events.JOB_CHECKPOINT,
        job_id,
        {"job_id": job_id, "state": state}
        | {k: data.get(k) for k in ("checkpoint", "bytes", "seconds", "reason")},
    )


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
        policy: Any,
        checkpoint_timeout_s: float = 120.0,
        prestart: bool = True,
    ) -> None:
        super().__init__(core)
        self.reads = reads
        self.policy = policy
        #: How long a gang has to answer a checkpoint request (and to restore one).
        self.checkpoint_timeout_s = checkpoint_timeout_s
        #: Start a migrating gang at its destination while its checkpoint is written (where
        #: the executor can: ``prestart``)?
        self.migration_prestart = prestart and core.executor.capabilities.prestart

    def listening(self, row: dict[str, Any]) -> bool:
        """Does every rank of the running attempt answer checkpoint requests (it called
        ``runtime.should_checkpoint()``)?"""
        if row["state"] != RUNNING:
            return False
        memory = self.memory.get(row["id"])
        if memory is not None and memory.listening == row["attempt"]:
            return True
        roots, ranks = self.core.roots(row["id"]), self.core.rank_nodes(row)
        calls = [(n, ck.is_listening, (roots[n], row["attempt"], r)) for r, n in ranks.items()]
        listening = bool(ranks) and all(self.node_files.call_each(calls, False))
        if listening:  # for the rest of the attempt: not asked of every node again
            self.memory(row["id"]).listening = row["attempt"]
        return listening

    # -- checkpoints on request ---------------------------------------------------------------

    def _check_can_move(self, row: dict[str, Any], what: str) -> None:

        listening = row["state"] == RUNNING and self.listening(row)
        why = move_blocker(row, what, listening)
        if why is not None:
            raise Conflict(why)

    def checkpoint_now(self, job_id: str, user: str, admin: bool) -> dict[str, Any]:
        row = self.reads.visible(job_id, user, admin)
        self._check_can_move(row, "checkpoint")
        with self.store.write():
            self.request_checkpoint(row, f"requested by {user}")
        return self.reads.view(self.store.job(job_id))

    def request_checkpoint(self, row: dict[str, Any], reason: str, then: str | None = None):
        """Ask every rank for a checkpoint at its next step boundary: a control file on each
        node the gang runs on, and SIGUSR1 where the executor can deliver it."""
        now = time.time()
        info = dict(row.get("checkpoint") or {})
        count = int(info.get("requests") or 0) + 1
        request = {
            "id": f"{row['attempt']}.{count}",
            "state": "pending",
            "requested_at": now,
            "deadline": now + self.checkpoint_timeout_s,
            "reason": reason,
            "then": then,
        }
        info.update(requests=count, request=request)
        self.store.update_job(row["id"], checkpoint=info)
        checkpoint_event(self.journal, row["id"], "requested", reason=reason)
        roots, ranks = self.core.roots(row["id"]), self.core.rank_nodes(row)
        nodes = sorted(set(ranks.values()))
        self.node_files.call_each([(n, ck.ask, ([roots[n]], request["id"], reason)) for n in nodes])
        if self.executor.capabilities.checkpoint_signal:
            for rep in self.store.replicas(row["id"], row["attempt"]):
                root = roots[rep["node"]]
                listener = self._read_control(rep["node"], root, ck.listen_file, row, rep["rank"])
                if listener and isinstance(listener.get("pid"), int):
                    self.executor.signal_checkpoint(handle_of(rep), listener["pid"])
        self.memory(row["id"]).watching = True

    def _migration_event(self, job_id: str, migration: dict[str, Any]) -> None:
        phase = migration["phases"][-1] if migration["phases"] else None
        closed = [p for p in migration["phases"] if p["finished_at"] is not None]
        last = closed[-1] if closed else None
        self.journal.record(
            events.JOB_MIGRATION,
            job_id,
            {
                "job_id": job_id,
                "migration": migration["id"],
                "kind": migration["kind"],
                "state": migration["state"],
                "phase": phase["phase"] if phase else None,
                "duration_s": last["duration_s"] if last else None,
                "bytes": last["bytes"] if last else None,
                "checkpoint": migration.get("checkpoint"),
                "reason": migration.get("error") or migration.get("reason"),
            },
        )

    def _set_migration(self, job_id: str, migration: dict[str, Any] | None) -> None:
        self.store.update_job(job_id, migration=migration)
        if migration is not None:
            self._migration_event(job_id, migration)

    def watch(self) -> None:
        """Answers to checkpoint requests, restores, staging that finished, deadlines."""
        self._collect_staging()
        now = time.time()
        for job_id, memory in self.memory.having("watching"):
            row = self.store.job(job_id)
            request = (row.get("checkpoint") or {}).get("request") if row else None
            migration = row.get("migration") if row else None
            pending = bool(request) and request["state"] == "pending"
            restoring = bool(migration) and migration["state"] == "restoring"
            if row is None or row["state"] not in (RUNNING, STARTING) or not (pending or restoring):
                memory.watching = False
                continue
            with self.store.write():
                if pending and row["state"] == RUNNING:
                    self._check_answers(row, request, now)
                elif restoring:
                    self._check_restored(row, migration, now)

    def _read_control(self, node: str, root: Path, which, row: dict[str, Any], rank: int):
        """One rank's control file (``which``: ``ck.listen_file``...), read on its node."""
        path = which(root, row["attempt"], rank)
        return self.node_files.call_each([(node, ck.read_json, (path, root))])[0]

    def _answers(self, row: dict[str, Any], which) -> list[dict[str, Any] | None]:
        """Every rank's control file ``which`` of the running attempt, read on its node (all
        nodes at once), in rank order; None for those not (yet) there."""
        roots, ranks = self.core.roots(row["id"]), self.core.rank_nodes(row)
        calls = [
            (node, ck.read_json, (which(roots[node], row["attempt"], rank), roots[node]))
            for rank, node in sorted(ranks.items())
        ]
        return self.node_files.call_each(calls)

    def _check_answers(self, row: dict[str, Any], request: dict[str, Any], now: float) -> None:
        answers = self._answers(row, ck.ack_file)
        if answers and all(a and a.get("request") == request["id"] for a in answers):
            latest = {
                "name": answers[0].get("checkpoint"),
                "step": answers[0].get("step"),
                "bytes": sum(int(a.get("bytes") or 0) for a in answers),
                "at": now,
                "seconds": max(float(a.get("seconds") or 0) for a in answers),
            }
            request = {**request, "state": "written", "checkpoint": latest["name"]}
            info = {**(row.get("checkpoint") or {}), "request": request, "latest": latest}
            self.store.update_job(row["id"], checkpoint=info)
            checkpoint_event(
                self.journal,
                row["id"],
                "written",
                checkpoint=latest["name"],
                bytes=latest["bytes"],
                seconds=latest["seconds"],
                reason=request["reason"],
            )
            self._after_checkpoint(self.store.job(row["id"]), request, latest)
        elif now > request["deadline"]:
            reason = f"the job did not checkpoint within {self.checkpoint_timeout_s:g} s"
            request = {**request, "state": "timeout"}
            info = {**(row.get("checkpoint") or {}), "request": request}
            self.store.update_job(row["id"], checkpoint=info)
            checkpoint_event(self.journal, row["id"], "timeout", reason=reason)
            log.warning("AI Grid: job %s: %s", row["id"], reason)
            self._after_checkpoint(self.store.job(row["id"]), request, None, reason)

    def _after_checkpoint(
        self,
        row: dict[str, Any],
        request: dict[str, Any],
        latest: dict[str, Any] | None,
        error: str | None = None,
    ) -> None:
        """What the checkpoint was for: a migration goes on (or fails), a preemption stops
        the gang either way (a gang that cannot checkpoint loses its progress since the
        last one, as it would without us)."""
        then, now = request.get("then"), time.time()
        migration = row.get("migration")
        if then == "migrate" and migration_active(migration):
            if latest is None:
                error = f"{error}; it runs on"
                migration = self.without_prestart(row, migration, error)
                self._set_migration(row["id"], next_phase(migration, "failed", now, error=error))
                return
            moved = next_phase(migration, "stopping", now, latest["bytes"])
            self._set_migration(row["id"], {**moved, "checkpoint": latest["name"]})
            self.store.update_job(row["id"], pending_state=MIGRATE)
            self.lifecycle.stop_replicas(row["id"], row["attempt"])
            self.lifecycle.settle_if_done(self.store.job(row["id"]))
        elif then == "preempt":
            self.lifecycle.stop_to_requeue(row["id"], request["reason"])

    # -- migrations -----------------------------------------------------------------------------

    def migrate_now(self, job_id: str, user: str, admin: bool, node: str | None) -> dict[str, Any]:

        row = self.reads.visible(job_id, user, admin)
        if node is not None and node not in self.nodes.by_name:
            known = ", ".join(sorted(self.nodes.by_name))
            msg = f"no node named {node!r}; the nodes are: {known}"
            raise SpecError(msg, field="node")
        self._check_can_move(row, "migrate")
        target = self._target(row, node)
        if target is None:
            where = f"on {node}" if node else "on other GPUs"
            msg = f"there is no room for job {job_id}'s gang {where} now"
            raise Conflict(msg)
        with self.store.write():
            self.begin_migration(row, target, f"requested by {user}")
        self.prestart(job_id)
        return self.reads.view(self.store.job(job_id))

    def _target(self, row: dict[str, Any], node: str | None) -> Placement | None:
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

    def begin_migration(self, row: dict[str, Any], target: Placement, reason: str) -> None:
        now = time.time()
        previous = row.get("migration") or {}
        migration = {
            "id": int(previous.get("id") or 0) + 1,
            "kind": "migrate",
            "reason": reason,
            "state": "checkpointing",
            "from": sorted(set(self.core.rank_nodes(row).values())),
            "to": list(target.nodes),
            "target": target.to_json(),
            "checkpoint": None,
            "phases": [],
            "error": None,
            "started_at": now,
            "finished_at": None,
        }
        log.info("AI Grid: job %s migrates to %s (%s)", row["id"], ", ".join(target.nodes), reason)
        self._set_migration(row["id"], next_phase(migration, "checkpointing", now))
        self.request_checkpoint(self.store.job(row["id"]), reason, then="migrate")

    def end_migration(self, row: dict[str, Any], succeeded: bool) -> None:
        """A gang that ended (or went back to the queue) ends its migration too."""
        migration = row.get("migration")
        if not migration_active(migration):
            return
        migration = self.without_prestart(row, migration, "the migration ended")
        if succeeded:
            self._set_migration(row["id"], next_phase(migration, "done", time.time()))
        else:
            error = row.get("reason") or "the gang stopped"
            self._set_migration(
                row["id"], next_phase(migration, "failed", time.time(), error=error)
            )

    # -- replicas started ahead of time at the destination ----------------------------------------

    def next_attempt(self, row: dict[str, Any]) -> int:
        """The job's next attempt number: after every attempt that ever had replicas (those
        of a dropped prestart included, so their replica ids and files are never reused)."""
        return max(row["attempt"], self.store.last_attempt(row["id"]) or 0) + 1

    def prestart(self, job_id: str) -> None:
        """Start a migrating gang's replicas at its destination now, while its checkpoint is
        being written: they run the job's start-up and wait in ``runtime.restore()`` for the
        master's go (:meth:`resume`). Not for gangs whose datasets are staged first."""
        row = self.store.job(job_id)
        migration = row.get("migration") if row else None
        if not (
            self.migration_prestart
            and row is not None
            and migration_active(migration)
            and migration["state"] == "checkpointing"
            and not migration.get("prestart")
            and not self.data_staging.needs_data(row)
        ):
            return
        attempt = self.next_attempt(row)
        prestart = {"attempt": attempt, "state": "waiting", "reason": None}
        with self.store.write():
            self.store.update_job(job_id, migration={**migration, "prestart": prestart})
        placed = {**row, "attempt": attempt, "placement": migration["target"]}
        self.launcher.launch(placed, None, prestart=True)

    def without_prestart(
        self, row: dict[str, Any], migration: dict[str, Any], why: str
    ) -> dict[str, Any]:
        """``migration`` with the replicas it started ahead of time (if they still wait)
        dropped: stopped, unless they are already the gang's own (its current attempt)."""
        prestart = migration.get("prestart")
        if not prestart or prestart["state"] != "waiting":
            return migration
        if prestart["attempt"] != row["attempt"]:
            self.lifecycle.stop_replicas(row["id"], prestart["attempt"])
        return {**migration, "prestart": {**prestart, "state": "dropped", "reason": why}}

    def resume(self, row: dict[str, Any], restore: str | None) -> None:
        """Start the placed gang, restoring checkpoint ``restore`` if set; or, if its replicas
        were started ahead of time and wait, give them the go (the checkpoint's name and
        the digest staging verified) and the gang runs."""
        migration = row.get("migration") or {}
        prestart = migration.get("prestart")
        reps = self.store.replicas(row["id"], row["attempt"])
        waiting = prestart and prestart["state"] == "waiting"
        if not (waiting and prestart["attempt"] == row["attempt"] and reps):
            self.launcher.launch(row, restore)
            return
        self.clear_requests(row)
        roots, calls = self.core.roots(row["id"]), []
        for slot in Placement.from_json(row["placement"]).slots:
            env = self.restore_env(row, slot, restore) if restore else {}
            go = {"checkpoint": restore, "sha256": env.get("AIGRID_RESTORE_SHA256")}
            path = ck.go_file(roots[slot.node], row["attempt"], slot.rank)
            calls.append((slot.node, ck.write_json, (path, go)))
        for (node, _, _), done in zip(calls, self.node_files.call_each(calls, False), strict=True):
            if done is False:  # a lost node's replicas are reported lost by the executor
                log.warning("AI Grid: job %s: could not tell %s to go", row["id"], node)
        with self.store.write():  # after the go files: a restart before this says go again
            went = {**migration, "prestart": {**prestart, "state": "go"}}
            self.store.update_job(row["id"], migration=went)
            ended = [r for r in reps if r["state"] == "exited"]
            failed = [r for r in ended if r["exit_code"] != 0]
            if failed:  # it died before the go, as it would have at a cold start
                reason = self.lifecycle.failure_reason(failed[0], failed[0]["exit_code"])
                self.lifecycle.fail_gang(row["id"], reason, retry=True)
                return
            started = all(r["state"] in ("running", "exited") for r in reps)
            if not self.executor.capabilities.slow_starts or started:
                self.lifecycle.set_state(self.store.job(row["id"]), RUNNING)
            self.lifecycle.settle_if_done(self.store.job(row["id"]))

    # -- resuming from a checkpoint ------------------------------------------------------------

    def drop_checkpoints(self, job_id: str) -> None:
        """Delete a job's checkpoints on every node, in the background (a job that succeeded
        or was cancelled never resumes; a failed job's stay, to be looked into)."""
        calls = [(node, ck.remove_root, (root,)) for node, root in self.core.roots(job_id).items()]
        self.core.stager.submit(self.node_files.call_each, calls)

    def has_checkpoints(self, job_id: str) -> bool:
        calls = [
            (ck.holder_node(h), ck.piece_names, (root,))
            for h, root in self.core.holders(job_id).items()
        ]
        return any(self.node_files.call_each(calls, []))

    def stage(self, row: dict[str, Any]) -> None:
        """Put the newest verified checkpoint on the gang's nodes, in the background; the
        replicas start once it is there (:meth:`_collect_staging`)."""
        now = time.time()
        migration = row.get("migration")
        if migration_active(migration) and migration["state"] == "stopping":
            migration = next_phase(migration, "transferring", now)
        elif not (migration_active(migration) and migration["state"] == "transferring"):
            migration = next_phase(
                {
                    "id": int((migration or {}).get("id") or 0) + 1,
                    "kind": "resume",
                    "reason": row.get("reason"),
                    "from": [],
                    "to": list(Placement.from_json(row["placement"]).nodes),
                    "checkpoint": None,
                    "phases": [],
                    "error": None,
                    "started_at": now,
                    "finished_at": None,
                },
                "transferring",
                now,
            )
        self._set_migration(row["id"], migration)
        future = self.core.stager.submit(
            ck.stage,
            self.core.holders(row["id"]),
            self.core.rank_nodes(row),
            row["replicas"],
            self.node_files,
        )
        self.memory(row["id"]).checkpoint_staging = (row["attempt"], future)

    def _collect_staging(self) -> None:
        for job_id, memory in self.memory.having("checkpoint_staging"):
            attempt, future = memory.checkpoint_staging
            if not future.done():
                continue
            memory.checkpoint_staging = None
            self.memory.settle(job_id)
            row = self.store.job(job_id)
            if row is None or row["state"] != STARTING or row["attempt"] != attempt:
                continue  # cancelled or requeued meanwhile
            try:
                staged = future.result()
            except Exception as e:
                log.exception("AI Grid: staging the checkpoint of job %s failed", job_id)
                staged = ck.Staged(problems=[("", f"staging failed: {e}")])
            with self.store.write():
                self._staged(row, staged)
            # Its own transactions: each replica is on record before its process starts.
            self.resume(self.store.job(job_id), staged.name)

    def _staged(self, row: dict[str, Any], staged: ck.Staged) -> None:
        now = time.time()
        for name, problem in staged.problems:
            log.warning("AI Grid: job %s: checkpoint %s passed over: %s", row["id"], name, problem)
            checkpoint_event(
                self.journal, row["id"], "corrupt", checkpoint=name or None, reason=problem
            )
        migration = row["migration"]
        if staged.name is not None:
            migration = next_phase(
                migration,
                "restoring",
                now,
                staged.copied,
                checkpoint=staged.name,
                bytes=staged.bytes,
                deadline=now + self.checkpoint_timeout_s,
            )
            self.memory(row["id"]).watching = True
        else:
            error = "no verified checkpoint to restore"
            if staged.problems:
                error += ": " + "; ".join(f"{n} {p}" for n, p in staged.problems[:3])
            migration = next_phase(migration, "failed", now, staged.copied, error=error)
        self._set_migration(row["id"], migration)

    def _check_restored(self, row: dict[str, Any], migration: dict[str, Any], now: float) -> None:
        answers = self._answers(row, ck.restored_file)
        if answers and all(a and a.get("checkpoint") == migration["checkpoint"] for a in answers):
            self._set_migration(row["id"], next_phase(migration, "done", now, migration["bytes"]))
            checkpoint_event(
                self.journal,
                row["id"],
                "restored",
                checkpoint=migration["checkpoint"],
                bytes=migration["bytes"],
            )
        elif now > migration.get("deadline", now):
            error = (
                f"the job did not restore {migration['checkpoint']} within "
                f"{self.checkpoint_timeout_s:g} s (does it call runtime.restore()?)"
            )
            self._set_migration(row["id"], next_phase(migration, "failed", now, error=error))

    def clear_requests(self, row: dict[str, Any]) -> None:
        """A new attempt must not take an earlier attempt's request for its own."""
        roots = self.core.roots(row["id"])
        nodes = sorted(set(self.core.rank_nodes(row).values()))
        self.node_files.call_each([(n, ck.clear_request, (roots[n],)) for n in nodes])

    def restore_env(self, row: dict[str, Any], slot: Any, name: str) -> dict[str, str]:
        """``AIGRID_RESTORE`` (the checkpoint staged on the slot's node) and the sha256 that
        staging has just verified its piece of this rank against: ``runtime.restore()``
        need not hash the same bytes again while its manifest still says that digest."""
        root = self.core.roots(row["id"])[slot.node]
        env = {"AIGRID_RESTORE": str(root / name)}
        with contextlib.suppress(ck.CheckpointError, OSError):
            manifest = self.node_files.call(
                slot.node, ck.read_manifest, root / name, slot.rank, root
            )
            env["AIGRID_RESTORE_SHA256"] = manifest["files"][ck.data_file(slot.rank)]["sha256"]
        return env
