"""The read side of the master (:class:`Reads`): jobs as the API shows them, the cluster, logs
and results.

These run on the master thread like everything else that touches the store; they never write.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..errors import NotFound
from ..inventory import nvml_utilisation
from ..model import ACTIVE_STATES, Placement
from ..records import Job, Migration
from ..snapshot import Snapshot
from ..spec import SpecError
from ..states import MigrationState
from ..views import cluster_view, event_view, job_view
from .core import Core, Part
from .queue import JobQueue, request_of

#: Migration phases in which the gang still runs at its source and holds its target too.
HOLDING_TARGET = (MigrationState.CHECKPOINTING, MigrationState.STOPPING)


class Reads(Part):
    """Jobs, the cluster, results, events and logs as the API shows them; the snapshot."""

    def __init__(self, core: Core, queue: JobQueue) -> None:
        super().__init__(core)
        self.queue = queue
        #: Wired by the master: whether a gang answers checkpoint requests, the verified
        #: dataset bytes on each node, and why recovery has not succeeded yet (or None).
        self.listening: Callable[[dict[str, Any]], bool] = lambda row: False
        self.data_on: Callable[[], dict[str, dict[str, int]]] = dict
        self.recovery_error: Callable[[], str | None] = lambda: None

    def visible(self, job_id: str, user: str, admin: bool) -> dict[str, Any]:
        row = self.store.job(job_id)
        if row is None or (row.owner != user and not admin):
            msg = f"no job {job_id!r}"
            raise NotFound(msg)
        return row

    def view(self, row: Job, positions: dict[str, int] | None = None) -> dict[str, Any]:
        positions = self.queue_positions() if positions is None else positions
        listening = row.state == "running" and self.listening(row)
        view = job_view(row, self.nodes.by_name, positions.get(row.id), listening)
        memory = self.memory.get(row.id)
        counter = memory.data_progress if memory else None
        if counter is not None and view["staging"] and view["staging"]["state"] == "staging":
            view["staging"]["done"] = min(counter[0], counter[1])
        return view

    def view_one(self, job_id: str, user: str, admin: bool) -> dict[str, Any]:
        return self.view(self.visible(job_id, user, admin))

    def view_many(
        self, user: str, admin: bool, state: str | None, owner: str | None
    ) -> list[dict[str, Any]]:
        if not admin:
            if owner not in (None, user):
                return []
            owner = user
        positions = self.queue_positions()
        return [
            self.view(r, positions) for r in self.store.jobs((state,) if state else None, owner)
        ]

    def queue_positions(self) -> dict[str, int]:
        """Each queued job's place in the policy's order (1 = next), computed once per change."""
        return self.queue.positions(self.snapshot)

    def cluster(self) -> dict[str, Any]:
        holders = {}
        for row in self.store.jobs(ACTIVE_STATES):
            for slot in row.placement or []:
                for g in slot["gpus"]:
                    holders[(slot["node"], g)] = {"job_id": row.id, "rank": slot["rank"]}
        uuids = [g.uuid for n in self.nodes.all for g in n.gpus if not g.simulated]
        return cluster_view(
            self.executor.name,
            self.nodes.all,
            holders,
            nvml_utilisation(uuids),
            self.recovery_error(),
        )

    def result(self, job_id: str, user: str, admin: bool) -> dict[str, Any]:
        row = self.visible(job_id, user, admin)
        metrics = [
            m for rank in range(row.replicas) for m in self.files.reports(job_id, row.attempt, rank)
        ]
        errors = self.files.errors(job_id, row.attempt, row.replicas)
        return {
            "job_id": job_id,
            "state": str(row.state),
            "reason": row.reason,
            "exit_codes": row.exit_codes,
            "attempt": row.attempt,
            "metrics": metrics,
            "error": errors[0] if errors else None,
            "outputs": self.files.output_sizes(job_id, row.attempt),
        }

    def output_path(self, job_id: str, name: str, user: str, admin: bool):
        row = self.visible(job_id, user, admin)
        path = self.files.outputs(job_id, row.attempt) / f"{name}.pkl"
        if not name.isidentifier() or not any(
            o["name"] == name for o in self.files.output_sizes(job_id, row.attempt)
        ):
            kept = ", ".join(o["name"] for o in self.files.output_sizes(job_id, row.attempt))
            msg = f"job {job_id} has no output {name!r}; it has: {kept or 'none'}"
            raise NotFound(msg)
        return path

    def events(
        self, user: str, admin: bool, since: int | None, job_id: str | None
    ) -> tuple[list[dict[str, Any]], int]:
        """Events after ``since`` (default: none, only the position) and the last seq sent.

        Other users' jobs appear with their id and state only.
        """
        if job_id is not None:
            self.visible(job_id, user, admin)
        if since is None:
            return [], self.store.last_event_seq()
        rows = self.store.events_since(since, job_id)
        views = [event_view(r, full=admin or r["owner"] == user) for r in rows]
        return views, rows[-1]["seq"] if rows else since

    def log_files(self, job_id: str, user: str, admin: bool, attempt: int | None):
        row = self.visible(job_id, user, admin)
        attempt = row.attempt if attempt is None else attempt
        if attempt > row.attempt:
            msg = f"job {job_id} has attempts 0 to {row.attempt}, not {attempt}"
            raise SpecError(msg, field="attempt")
        files = [
            (rank, stream, self.files.log(job_id, attempt, rank, stream))
            for rank in range(row.replicas)
            for stream in ("stdout", "stderr")
        ]
        return self.view(row), files

    def snapshot(self, active: list[Job] | None = None) -> Snapshot:
        """The cluster now, from the store's active jobs (``active``: read already)."""
        snap = Snapshot.empty(self.nodes.all, now=time.time(), history=self.queue.history)
        data_on = self.data_on()
        if data_on:
            snap = replace(snap, data_on=data_on)
        for row in self.store.jobs(ACTIVE_STATES) if active is None else active:
            if row.placement:
                snap = snap.allocate(
                    request_of(row),
                    self.nodes.present(Placement.from_json(row.placement)),
                    started_at=row.started_at or snap.now,
                )
            migration = Migration.of(row)
            if migration and migration.state in HOLDING_TARGET and migration.target:
                # A gang on the move holds where it goes as well as where it runs.
                held = replace(request_of(row), job_id=f"{row.id}>", preemptible=False)
                snap = snap.allocate(
                    held, self.nodes.present(Placement.from_json(migration.target))
                )
        return snap
