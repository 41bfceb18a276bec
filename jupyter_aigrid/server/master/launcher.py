"""The gang launcher: a placement recorded, the gang's data and checkpoint staged, every
replica started.

A launch is the one place replicas start: each is on record (committed) before its process
does, so a master that dies in between finds it and either adopts it or starts it again.
A replica that cannot start fails the gang (back to the queue if a node of it left); one
started ahead of a migration (``prestart``) that cannot start only drops the prestart.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ...safefs import write_atomic
from .. import events
from ..executors.base import ExecutorError
from ..executors.nodefiles import NodeGone
from ..model import RUNNING, STARTING, Launch, LaunchRequest, Placement
from ..policies.qos import resource_of_placement
from ..records import Job
from ..replicas import replica_env
from ..templating import choose, describe, hostfile_text, templates
from .core import Core, Part
from .data_staging import DataStaging
from .inference import Inference
from .lifecycle import REQUEUE, Lifecycle
from .moves import Moves
from .queue import JobQueue, request_of
from .requests import CheckpointRequests

log = logging.getLogger(__name__)


class Launcher(Part):
    """Placing gangs and starting their replicas (see the module docstring)."""

    def __init__(
        self,
        core: Core,
        queue: JobQueue,
        lifecycle: Lifecycle,
        moves: Moves,
        requests: CheckpointRequests,
        data_staging: DataStaging,
        inference: Inference,
    ) -> None:
        super().__init__(core)
        self.requests = requests
        self.queue = queue
        self.lifecycle = lifecycle
        self.moves = moves
        self.data_staging = data_staging
        self.inference = inference

    def apply(self, launch: Launch) -> None:
        """Record the placement, then start every replica (after staging the gang's
        checkpoint there, if it has one); a failed start fails the gang."""
        row = self.store.job(launch.job_id)
        assert row is not None
        extra: dict[str, Any] = {}
        if row.kind == "inference":
            extra["inference"] = self.inference.record_for(row, launch.placement)
        elif not row.prediction:  # what the policies expect of it, checked at its end
            guess = self.queue.history.predict(request_of(row))
            extra["prediction"] = {"run_s": guess.seconds, "basis": guess.basis}
        self.place(row, launch.placement, **extra)
        self.start_or_stage(self.store.job(launch.job_id))

    def place(self, row: Job, placement: Placement, **fields: Any) -> None:
        with self.store.write():
            self.lifecycle.set_state(
                row,
                STARTING,
                placement=placement.to_json(),
                started_at=time.time(),
                pending_state=None,
                **fields,
            )
            attempt = fields.get("attempt", row.attempt)
            self.journal.record(
                events.JOB_PLACEMENT,
                row.id,
                {
                    "job_id": row.id,
                    "attempt": attempt,
                    "placement": [
                        {
                            "rank": s.rank,
                            "node": s.node,
                            "local_rank": s.local_rank,
                            "gpus": list(s.gpus),
                            "simulated": self.nodes.simulated(s.node),
                        }
                        for s in placement.slots
                    ],
                },
            )

    def start_or_stage(self, row: Job) -> None:
        """A gang's datasets are staged where it goes first; a gang with checkpoints resumes
        from the newest good one; others just start."""
        if self.data_staging.needs_data(row):
            self.data_staging.stage(row)
        elif self.core.has_checkpoints(row.id):
            with self.store.write():
                self.moves.stage(row)
        else:
            self.moves.resume(row, None)

    def launch(self, row: Job, restore: str | None, prestart: bool = False) -> None:
        """Start every replica of the placed gang, restoring checkpoint ``restore`` if set;
        or (``prestart``) replicas that wait for the master's go in ``runtime.restore()``,
        for an attempt that is not yet the job's (:meth:`.moves.Moves.prestart`)."""
        # Each replica must be on record (committed) before its process starts.
        assert not self.store.conn.in_transaction, "replicas start outside a transaction"
        spec, attempt, job_id = row.spec, row.attempt, row.id
        placement = Placement.from_json(row.placement)
        slots = placement.slots
        if not prestart:  # the gang it replaces may still be answering one
            self.requests.clear(row)
        try:
            rendezvous = self.executor.rendezvous(slots[0].node)
            views = {node: self.data_staging.view_dir(row, node) for node in placement.nodes}
        except (ExecutorError, OSError) as e:  # a node left since the gang was placed
            self._could_not_reach(job_id, prestart, f"could not reach its nodes: {e}")
            return
        requests = []
        with self.store.write():
            for slot in slots:
                stdout = self.files.log(job_id, attempt, slot.rank, "stdout")
                env = replica_env(
                    row,
                    placement,
                    slot,
                    self.nodes.by_name[slot.node],
                    rendezvous,
                    self.files.results(job_id, attempt),
                    self.files.key(job_id),
                    self.files.inputs(job_id),
                    host_env=self.executor.capabilities.host_env,
                )
                env["AIGRID_DATA"] = views[slot.node]
                env["AIGRID_RESOURCE"] = resource_of_placement(placement, self.nodes.by_name)
                if restore:
                    env.update(self.moves.restore_env(row, slot, restore))
                if prestart:
                    env["AIGRID_RESTORE_WAIT"] = "1"
                requests.append(
                    LaunchRequest(
                        replica_id=f"{job_id}.{attempt}.{slot.rank}",
                        job_id=job_id,
                        attempt=attempt,
                        rank=slot.rank,
                        node=slot.node,
                        env=env,
                        job_key=self.files.key(job_id),
                        workdir=spec.get("workdir", ""),
                        stdout_path=str(stdout),
                        stderr_path=str(stdout.with_suffix(".stderr")),
                        exit_path=str(stdout.with_suffix(".exit")),
                        **self._container_fields(row, slot),
                    )
                )
            self.store.insert_replicas(
                [
                    {
                        "id": r.replica_id,
                        "job_id": job_id,
                        "attempt": attempt,
                        "rank": s.rank,
                        "local_rank": s.local_rank,
                        "node": s.node,
                        "gpu_indices": list(s.gpus),
                        "state": "launching",
                        "exit_path": r.exit_path,
                    }
                    for r, s in zip(requests, slots, strict=True)
                ]
            )
        if "hostfile" in templates()[spec.get("template") or choose(spec)].files:
            self.files.attempt_dir(job_id, attempt).mkdir(parents=True, exist_ok=True)
            write_atomic(
                self.files.attempt_dir(job_id, attempt) / "hostfile",
                hostfile_text(placement).encode(),
            )
        reserve = self.executor.capabilities.gang_reservation  # reserve the gang at once
        for i, req in enumerate(requests):
            try:
                if i == 0 and reserve:
                    self.executor.prepare_gang(self.files.key(job_id), attempt, tuple(slots))
                handle = self.executor.launch(
                    req, spec.get("code"), spec.get("args", []), spec.get("command")
                )
            except Exception as e:
                if not isinstance(e, ExecutorError):
                    log.exception("AI Grid: starting rank %d of job %s failed", req.rank, job_id)
                reason = f"rank {req.rank} could not start: {e}"
                with self.store.write():
                    for never in requests[i:]:
                        self.store.update_replica(
                            never.replica_id, state="exited", finished_at=time.time()
                        )
                    if prestart:  # the migration goes on without them
                        self.lifecycle.stop_replicas(job_id, attempt)
                        self.moves.drop_prestart(job_id, reason)
                    else:
                        lost = isinstance(e, NodeGone) or self._left(placement)
                        self.lifecycle.fail_gang(job_id, reason, retry=lost, node_lost=lost)
                return
            if self.executor.capabilities.slow_starts:  # running once the executor says it started
                self.store.update_replica(req.replica_id, pid=handle.pid)
                continue
            self.store.update_replica(
                req.replica_id,
                state="running",
                pid=handle.pid,
                pid_start=handle.pid_start,
                started_at=time.time(),
            )
        if not self.executor.capabilities.slow_starts and not prestart:
            self.lifecycle.set_state(self.store.job(job_id), RUNNING)
        self.core.live_replicas = True

    def _left(self, placement: Placement) -> bool:
        """Has a node of ``placement`` left the cluster (as the executor sees it now)?"""
        if not self.executor.capabilities.changing_inventory:
            return False
        self.executor.refresh(force=True)
        alive = {n.name for n in self.executor.nodes()}
        return any(s.node not in alive for s in placement.slots)

    def _could_not_reach(self, job_id: str, prestart: bool, reason: str) -> None:
        """A placed gang none of whose replicas started: back to the queue, not counted as
        a restart (or, started ahead of a migration, the migration goes on without it)."""
        log.warning("AI Grid: job %s: %s", job_id, reason)
        with self.store.write():
            if prestart:
                self.moves.drop_prestart(job_id, reason)
                return
            self.store.update_job(job_id, pending_state=REQUEUE, reason=reason)
            self.lifecycle.finish(self.store.job(job_id), {})

    def _container_fields(self, row: Job, slot: Any) -> dict[str, Any]:
        """What a container executor needs beyond the environment: the image, the network,
        the GPUs by UUID, the limits, and the host paths the replica reads and writes."""
        spec, job_id, attempt = row.spec, row.id, row.attempt
        description = row.description or describe(spec)
        node = self.nodes.by_name[slot.node]
        key = self.files.key(job_id)
        real = [g for g in node.gpus if g.index in slot.gpus and not g.simulated]
        return {
            "image": (description.get("image") or {}).get("ref", ""),
            "network": description.get("network", "bridge"),
            "gpu_uuids": tuple(g.uuid for g in real),
            "cpus": float(spec.get("cpus_per_replica") or 0.0),
            "memory_mb": int(spec.get("memory_mb_per_replica") or 0),
            "read_write": (
                str(self.files.results(job_id, attempt)),
                str(Path(node.scratch) / "checkpoints" / key),
            ),
            "read_only": (
                str(self.files.inputs(job_id)),
                *self.data_staging.mounts(row, slot.node),
                str(self.files.attempt_dir(job_id, attempt) / "hostfile"),
            ),
        }
