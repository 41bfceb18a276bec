"""The read side of the master: jobs as the API shows them, the cluster, logs and results.

These run on the master thread like everything else that touches the store; they never write.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from .inventory import nvml_utilisation
from .model import ACTIVE_STATES, FINAL_STATES, Placement, Request
from .snapshot import History, Snapshot
from .spec import SpecError, to_request
from .states import MigrationState
from .views import cluster_view, event_view, job_view

#: Migration phases in which the gang still runs at its source and holds its target too.
HOLDING_TARGET = (MigrationState.CHECKPOINTING, MigrationState.STOPPING)


def run_time_s(row: dict[str, Any]) -> float:
    """How long a finished job ran in all: its earlier runs' service, then its last run."""
    earlier = (row.get("attained_gpu_s") or 0.0) / max(row["gpus"], 1)
    return earlier + row["finished_at"] - row["started_at"]


class NotFound(LookupError):
    """No such job, or not one the caller may see."""


class Conflict(RuntimeError):
    """The job is not in a state that allows the request."""


class JobQueries:
    """Mixed into :class:`~jupyter_aigrid.server.master.Master`, which provides the state.

    ``_queue`` mirrors the queued jobs of the store (the master thread is the only writer, and
    it updates both together); ``_positions`` caches their order until the next change.
    """

    _queue: dict[str, Request]
    _positions: dict[str, int] | None
    recovery_error: str | None
    _history: History

    def _visible(self, job_id: str, user: str, admin: bool) -> dict[str, Any]:
        row = self.store.job(job_id)
        if row is None or (row["owner"] != user and not admin):
            msg = f"no job {job_id!r}"
            raise NotFound(msg)
        return row

    def _view(self, row: dict[str, Any], positions: dict[str, int] | None = None) -> dict[str, Any]:
        positions = self._queue_positions() if positions is None else positions
        listening = row["state"] == "running" and self._listening(row)
        view = job_view(row, self._nodes_by_name, positions.get(row["id"]), listening)
        memory = self.memory.get(row["id"])
        counter = memory.data_progress if memory else None
        if counter is not None and view["staging"] and view["staging"]["state"] == "staging":
            view["staging"]["done"] = min(counter[0], counter[1])
        return view

    def _view_one(self, job_id: str, user: str, admin: bool) -> dict[str, Any]:
        return self._view(self._visible(job_id, user, admin))

    def _view_many(
        self, user: str, admin: bool, state: str | None, owner: str | None
    ) -> list[dict[str, Any]]:
        if not admin:
            if owner not in (None, user):
                return []
            owner = user
        positions = self._queue_positions()
        return [
            self._view(r, positions) for r in self.store.jobs((state,) if state else None, owner)
        ]

    def _queue_positions(self) -> dict[str, int]:
        """Each queued job's place in the policy's order (1 = next), computed once per change."""
        if self._positions is None:
            ordered = self.policy.order(list(self._queue.values()), self._snapshot())
            self._positions = {r.job_id: i + 1 for i, r in enumerate(ordered)}
        return self._positions

    def _request(self, row: dict[str, Any]) -> Request:
        return to_request(
            row["id"],
            row["owner"],
            row["spec"],
            row["submitted_at"],
            row["seq"],
            row.get("attained_gpu_s") or 0.0,
        )

    def _cluster(self) -> dict[str, Any]:
        holders = {}
        for row in self.store.jobs(ACTIVE_STATES):
            for slot in row.get("placement") or []:
                for g in slot["gpus"]:
                    holders[(slot["node"], g)] = {"job_id": row["id"], "rank": slot["rank"]}
        uuids = [g.uuid for n in self.nodes for g in n.gpus if not g.simulated]
        return cluster_view(
            self.executor.name,
            self.nodes,
            holders,
            nvml_utilisation(uuids),
            self.recovery_error,
        )

    def _result(self, job_id: str, user: str, admin: bool) -> dict[str, Any]:
        row = self._visible(job_id, user, admin)
        metrics = [
            m
            for rank in range(row["replicas"])
            for m in self.files.reports(job_id, row["attempt"], rank)
        ]
        errors = self.files.errors(job_id, row["attempt"], row["replicas"])
        return {
            "job_id": job_id,
            "state": row["state"],
            "reason": row.get("reason"),
            "exit_codes": row.get("exit_codes"),
            "attempt": row["attempt"],
            "metrics": metrics,
            "error": errors[0] if errors else None,
            "outputs": self.files.output_sizes(job_id, row["attempt"]),
        }

    def _output_path(self, job_id: str, name: str, user: str, admin: bool):
        row = self._visible(job_id, user, admin)
        path = self.files.outputs(job_id, row["attempt"]) / f"{name}.pkl"
        if not name.isidentifier() or not any(
            o["name"] == name for o in self.files.output_sizes(job_id, row["attempt"])
        ):
            kept = ", ".join(o["name"] for o in self.files.output_sizes(job_id, row["attempt"]))
            msg = f"job {job_id} has no output {name!r}; it has: {kept or 'none'}"
            raise NotFound(msg)
        return path

    def _events(
        self, user: str, admin: bool, since: int | None, job_id: str | None
    ) -> tuple[list[dict[str, Any]], int]:
        """Events after ``since`` (default: none, only the position) and the last seq sent.

        Other users' jobs appear with their id and state only.
        """
        if job_id is not None:
            self._visible(job_id, user, admin)
        if since is None:
            return [], self.store.last_event_seq()
        rows = self.store.events_since(since, job_id)
        views = [event_view(r, full=admin or r["owner"] == user) for r in rows]
        return views, rows[-1]["seq"] if rows else since

    def _log_files(self, job_id: str, user: str, admin: bool, attempt: int | None):
        row = self._visible(job_id, user, admin)
        attempt = row["attempt"] if attempt is None else attempt
        if attempt > row["attempt"]:
            msg = f"job {job_id} has attempts 0 to {row['attempt']}, not {attempt}"
            raise SpecError(msg, field="attempt")
        files = [
            (rank, stream, self.files.log(job_id, attempt, rank, stream))
            for rank in range(row["replicas"])
            for stream in ("stdout", "stderr")
        ]
        return self._view(row), files

    def _replay_jobs(self) -> tuple[list[Any], list[dict[str, Any]]]:
        """The jobs that ran here, as a trace for the simulator (each with its full request,
        its submit time and how long it ran), and their rows."""
        from ..sim.trace import TraceJob

        jobs, rows = [], []
        for row in self.store.jobs(FINAL_STATES):
            if not row.get("started_at") or not row.get("finished_at"):
                continue  # ended before it ever ran
            ran = run_time_s(row)
            request = self._request(row)
            jobs.append(
                TraceJob(
                    job_id=row["id"],
                    submit_s=row["submitted_at"],
                    duration_s=ran,
                    gpus=row["gpus"],
                    job_type=request.job_type,
                    user=row["owner"],
                    row=row["seq"],
                    request=request,
                )
            )
            rows.append(row)
        return jobs, rows

    def _in_inventory(self, placement: Placement) -> Placement:
        """``placement`` without its slots on nodes that left the cluster (they hold
        nothing: a gang placed there is on its way back to the queue)."""
        if all(s.node in self._nodes_by_name for s in placement.slots):
            return placement
        return Placement(tuple(s for s in placement.slots if s.node in self._nodes_by_name))

    def _snapshot(self, active: list[dict[str, Any]] | None = None) -> Snapshot:
        """The cluster now, from the store's active jobs (``active``: read already)."""
        snap = Snapshot.empty(self.nodes, now=time.time(), history=self._history)
        data_on = self._data_on()
        if data_on:
            snap = replace(snap, data_on=data_on)
        for row in self.store.jobs(ACTIVE_STATES) if active is None else active:
            if row.get("placement"):
                snap = snap.allocate(
                    self._request(row),
                    self._in_inventory(Placement.from_json(row["placement"])),
                    started_at=row.get("started_at") or snap.now,
                )
            migration = row.get("migration")
            if migration and migration["state"] in HOLDING_TARGET:
                # A gang on the move holds where it goes as well as where it runs.
                held = replace(self._request(row), job_id=f"{row['id']}>", preemptible=False)
                snap = snap.allocate(
                    held, self._in_inventory(Placement.from_json(migration["target"]))
                )
        return snap
