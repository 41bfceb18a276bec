"""The control loop of the cluster: admit -> order -> place -> apply. The only writer of state.

Every method that reads or writes the store runs on one dedicated thread, so SQLite has one
writer and the event loop never blocks on an fsync. Events are produced there and emitted on
the event loop after each call, because jupyter_events schedules its listeners on that loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from . import events
from .executors.base import ExecutorError
from .inventory import nvml_utilisation
from .model import (
    ACTIVE_STATES,
    CANCELLED,
    FAILED,
    FINAL_STATES,
    PREEMPTED,
    QUEUED,
    RUNNING,
    STARTING,
    SUCCEEDED,
    Launch,
    LaunchRequest,
    Placement,
    ReplicaHandle,
    Slot,
    Snapshot,
)
from .policies import describe_capacity, place_gang, schedule_round
from .spec import SpecError, to_request
from .views import cluster_view, job_view

T = TypeVar("T")
log = logging.getLogger(__name__)
STDERR_TAIL_LINES = 20
#: How often, while replicas run, the master looks for exits between full ticks.
EXIT_POLL_S = 0.05
#: Replica states in which a process may exist.
LIVE_REPLICA = ("launching", "running", "stopping")


class NotFound(LookupError):
    """No such job, or not one the caller may see."""


class Conflict(RuntimeError):
    """The job is not in a state that allows the request."""


class Master:
    def __init__(
        self,
        store,
        executor,
        policy,
        *,
        state_dir: str | Path,
        emit: Callable[[str, dict], None] | None = None,
        tick_s: float = 1.0,
        stop_grace_s: float = 10.0,
    ) -> None:
        self.store = store
        self.executor = executor
        self.policy = policy
        self.state_dir = Path(state_dir)
        self.tick_s = tick_s
        self.stop_grace_s = stop_grace_s
        self._emit_fn = emit
        self._db = ThreadPoolExecutor(1, thread_name_prefix="aigrid-master")
        self._outbox: collections.deque[tuple[str, dict]] = collections.deque()
        self._lost_on_restart: set[str] = set()
        self._task: asyncio.Task | None = None
        self._live_replicas = False
        self._wake: asyncio.Event | None = None
        self.nodes = executor.nodes()
        self._nodes_by_name = {n.name: n for n in self.nodes}

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake = asyncio.Event()
        await self._call(self._recover)
        self._task = asyncio.create_task(self._run(), name="aigrid-master-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.get_running_loop().run_in_executor(self._db, self._close)
        self._db.shutdown(wait=True)

    def _close(self) -> None:
        self.executor.close()
        self.store.close()

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        """Tick on every wake-up and every ``tick_s``; between ticks, while replicas run,
        look for exits every ``EXIT_POLL_S`` so a finished job frees its GPUs at once."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        last_tick = 0.0
        while True:
            timeout = EXIT_POLL_S if self._live_replicas else self.tick_s
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
                woken = True
            except asyncio.TimeoutError:
                woken = False
            self._wake.clear()
            full = woken or loop.time() - last_tick >= self.tick_s
            try:
                if full:
                    last_tick = loop.time()
                    await self._call(self._tick)
                else:
                    await self._call(self._poll_exits)
            except Exception:
                log.exception("AI Grid master tick failed; retrying on the next tick")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)
        finally:
            self._flush()

    def _flush(self) -> None:
        while self._outbox:
            schema_id, data = self._outbox.popleft()
            if self._emit_fn is not None:
                try:
                    self._emit_fn(schema_id, data)
                except Exception:
                    log.exception("could not emit %s", schema_id)

    # -- public API (coroutines; everything runs on the master thread) -------------------------

    async def submit(self, spec: dict[str, Any], owner: str) -> dict[str, Any]:
        job = await self._call(self._submit, spec, owner)
        self.wake()
        return job

    async def job(self, job_id: str, user: str, admin: bool = False) -> dict[str, Any]:
        return await self._call(self._view_one, job_id, user, admin)

    async def jobs(
        self, user: str, admin: bool = False, state: str | None = None, owner: str | None = None
    ) -> list[dict[str, Any]]:
        return await self._call(self._view_many, user, admin, state, owner)

    async def cancel(self, job_id: str, user: str, admin: bool = False) -> dict[str, Any]:
        job = await self._call(self._cancel, job_id, user, admin)
        self.wake()
        return job

    async def cluster(self) -> dict[str, Any]:
        return await self._call(self._cluster)

    async def result(self, job_id: str, user: str, admin: bool = False) -> dict[str, Any]:
        return await self._call(self._result, job_id, user, admin)

    async def log_files(
        self, job_id: str, user: str, admin: bool = False, attempt: int | None = None
    ) -> tuple[dict[str, Any], list[tuple[int, str, Path]]]:
        """The job, and (rank, stream, path) for each log file of the attempt."""
        return await self._call(self._log_files, job_id, user, admin, attempt)

    # -- on the master thread ------------------------------------------------------------------

    def _visible(self, job_id: str, user: str, admin: bool) -> dict[str, Any]:
        row = self.store.job(job_id)
        if row is None or (row["owner"] != user and not admin):
            msg = f"no job {job_id!r}"
            raise NotFound(msg)
        return row

    def _view_one(self, job_id: str, user: str, admin: bool) -> dict[str, Any]:
        row = self._visible(job_id, user, admin)
        return job_view(row, self._nodes_by_name, self._queue_positions().get(row["id"]))

    def _view_many(
        self, user: str, admin: bool, state: str | None, owner: str | None
    ) -> list[dict[str, Any]]:
        if not admin:
            if owner not in (None, user):
                return []
            owner = user
        rows = self.store.jobs((state,) if state else None, owner)
        positions = self._queue_positions()
        return [job_view(r, self._nodes_by_name, positions.get(r["id"])) for r in rows]

    def _queue_positions(self) -> dict[str, int]:
        queued = self.store.jobs((QUEUED,))
        if not queued:
            return {}
        reqs = [self._request(r) for r in queued]
        ordered = self.policy.order(reqs, self._snapshot())
        return {r.job_id: i + 1 for i, r in enumerate(ordered)}

    def _request(self, row: dict[str, Any]):
        return to_request(row["id"], row["owner"], row["spec"], row["submitted_at"], row["seq"])

    def _submit(self, spec: dict[str, Any], owner: str) -> dict[str, Any]:
        self._check_admissible(spec)
        now = time.time()
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
                    "submitted_at": now,
                }
            )
            self._event_state(row, None)
        return job_view(row, self._nodes_by_name, self._queue_positions().get(row["id"]))

    def _check_admissible(self, spec: dict[str, Any]) -> None:
        """Refuse, with the field to blame, a job that could never run on this cluster."""
        if spec.get("image") and self.executor.name == "local":
            msg = (
                "the local executor runs jobs on the host, not in an image; "
                "remove 'image' or run the master with the docker or ray executor"
            )
            raise SpecError(msg, field="image")
        if spec.get("datasets"):
            msg = f"unknown dataset {spec['datasets'][0]!r}: no datasets are registered"
            raise SpecError(msg, field="datasets")
        req = to_request("new", "", spec, 0.0, 0)
        empty = Snapshot.empty(self.nodes)
        if place_gang(req, empty) is not None:
            return
        types = {g.model for n in self.nodes for g in n.gpus}
        total = sum(len(n.gpus) for n in self.nodes)
        if req.gpu_type and req.gpu_type not in types:
            field = "gpu_type"
        elif req.gpus > total:
            field = "gpus"
        elif req.nodes and req.nodes > len(self.nodes):
            field = "nodes"
        elif req.gpus_per_replica > max((len(n.gpus) for n in self.nodes), default=0):
            field = "gpus_per_replica"
        elif any(req.cpus_per_replica > n.cpus for n in self.nodes):
            field = "cpus_per_replica"
        elif any(req.memory_mb_per_replica > n.memory_mb for n in self.nodes):
            field = "memory_mb_per_replica"
        else:
            field = "gpus"
        nodes_part = f" over exactly {req.nodes} node(s)" if req.nodes else ""
        msg = (
            f"unschedulable: the job needs {req.replicas} replica(s) x {req.gpus_per_replica} "
            f"GPU(s) x {req.cpus_per_replica:g} CPU(s){nodes_part} ({req.gpus} GPUs in all"
            f"{', of type ' + req.gpu_type if req.gpu_type else ''}), but even an idle cluster "
            f"cannot hold it. Available: {describe_capacity(empty)}"
        )
        raise SpecError(msg, field=field)

    def _cancel(self, job_id: str, user: str, admin: bool) -> dict[str, Any]:
        row = self._visible(job_id, user, admin)
        if row["state"] in FINAL_STATES:
            msg = f"job {job_id} has already {row['state']}; there is nothing to cancel"
            raise Conflict(msg)
        reason = f"cancelled by {user}"
        with self.store.write():
            if row["state"] in (QUEUED, PREEMPTED):
                self._set_state(row, CANCELLED, reason=reason, finished_at=time.time())
            elif row.get("pending_state") != CANCELLED:
                self.store.update_job(job_id, pending_state=CANCELLED, reason=reason)
                self._stop_replicas(job_id, row["attempt"])
        return job_view(
            self.store.job(job_id), self._nodes_by_name, self._queue_positions().get(job_id)
        )

    def _cluster(self) -> dict[str, Any]:
        holders = {}
        for row in self.store.jobs(ACTIVE_STATES):
            for slot in row.get("placement") or []:
                for g in slot["gpus"]:
                    holders[(slot["node"], g)] = {"job_id": row["id"], "rank": slot["rank"]}
        uuids = [g.uuid for n in self.nodes for g in n.gpus if not g.simulated]
        return cluster_view(self.executor.name, self.nodes, holders, nvml_utilisation(uuids))

    def _log_files(self, job_id: str, user: str, admin: bool, attempt: int | None):
        row = self._visible(job_id, user, admin)
        attempt = row["attempt"] if attempt is None else attempt
        if attempt > row["attempt"]:
            msg = f"job {job_id} has attempts 0 to {row['attempt']}, not {attempt}"
            raise SpecError(msg, field="attempt")
        files = []
        for rank in range(row["replicas"]):
            for stream in ("stdout", "stderr"):
                files.append((rank, stream, self._log_path(job_id, attempt, rank, stream)))
        return job_view(row, self._nodes_by_name), files

    def _result(self, job_id: str, user: str, admin: bool) -> dict[str, Any]:
        row = self._visible(job_id, user, admin)
        metrics = []
        for rank in range(row["replicas"]):
            path = self._result_dir(job_id, row["attempt"]) / f"rank-{rank}.jsonl"
            metrics.extend(read_reports(path, rank))
        return {
            "job_id": job_id,
            "state": row["state"],
            "reason": row.get("reason"),
            "exit_codes": row.get("exit_codes"),
            "attempt": row["attempt"],
            "metrics": metrics,
        }

    def _result_dir(self, job_id: str, attempt: int) -> Path:
        return self.state_dir / "results" / job_id / str(attempt)

    def _log_path(self, job_id: str, attempt: int, rank: int, stream: str) -> Path:
        return self.state_dir / "logs" / job_id / str(attempt) / f"rank-{rank}.{stream}"

    # -- the loop --------------------------------------------------------------------------------

    def _tick(self) -> None:
        self._handle_exits(self.executor.poll())
        self._enforce_time_limits(time.time())
        self._schedule()

    def _poll_exits(self) -> None:
        exits = self.executor.poll()
        if exits:
            self._handle_exits(exits)
            self._schedule()

    def _handle_exits(self, exits: list) -> None:
        for exit_ in exits:
            self._on_exit(exit_.replica_id, exit_.exit_code)
        self._live_replicas = bool(self.store.replicas_in(LIVE_REPLICA))

    def _snapshot(self) -> Snapshot:
        snap = Snapshot.empty(self.nodes, now=time.time())
        for row in self.store.jobs(ACTIVE_STATES):
            if row.get("placement"):
                snap = snap.allocate(self._request(row), Placement.from_json(row["placement"]))
        return snap

    def _schedule(self) -> None:
        queued = self.store.jobs((QUEUED,))
        if not queued:
            return
        for launch in schedule_round(
            self.policy, [self._request(r) for r in queued], self._snapshot()
        ):
            self._apply(launch)

    def _apply(self, launch: Launch) -> None:
        row = self.store.job(launch.job_id)
        assert row is not None
        spec, attempt, job_id = row["spec"], row["attempt"], row["id"]
        slots = launch.placement.slots
        addr, port = self.executor.rendezvous(slots[0].node)
        requests = []
        with self.store.write():
            self._set_state(
                row,
                STARTING,
                placement=launch.placement.to_json(),
                started_at=time.time(),
                pending_state=None,
            )
            replicas = []
            for slot in slots:
                req = self._launch_request(row, launch.placement, slot, addr, port)
                requests.append(req)
                replicas.append(
                    {
                        "id": req.replica_id,
                        "job_id": job_id,
                        "attempt": attempt,
                        "rank": slot.rank,
                        "local_rank": slot.local_rank,
                        "node": slot.node,
                        "gpu_indices": list(slot.gpus),
                        "state": "launching",
                        "exit_path": req.exit_path,
                        "log_dir": str(Path(req.stdout_path).parent),
                    }
                )
            self.store.insert_replicas(replicas)
            self._outbox.append(
                (
                    events.JOB_PLACEMENT,
                    {
                        "job_id": job_id,
                        "attempt": attempt,
                        "placement": [
                            {
                                "rank": s.rank,
                                "node": s.node,
                                "local_rank": s.local_rank,
                                "gpus": list(s.gpus),
                                "simulated": self._simulated(s.node),
                            }
                            for s in slots
                        ],
                    },
                )
            )
        for i, req in enumerate(requests):
            try:
                handle = self.executor.launch(
                    req, spec.get("code"), spec.get("args", []), spec.get("command")
                )
            except ExecutorError as e:
                for never in requests[i:]:
                    self.store.update_replica(
                        never.replica_id, state="exited", finished_at=time.time()
                    )
                self._fail_gang(job_id, f"rank {req.rank} could not start: {e}", retry=False)
                return
            self.store.update_replica(
                req.replica_id,
                state="running",
                pid=handle.pid,
                pid_start=handle.pid_start,
                started_at=time.time(),
            )
        self._set_state(self.store.job(job_id), RUNNING)
        self._live_replicas = True

    def _simulated(self, node: str) -> bool:
        n = self._nodes_by_name.get(node)
        return bool(n and any(g.simulated for g in n.gpus))

    def _launch_request(
        self, row: dict[str, Any], placement: Placement, slot: Slot, addr: str, port: int
    ) -> LaunchRequest:
        spec, job_id, attempt = row["spec"], row["id"], row["attempt"]
        node = self._nodes_by_name[slot.node]
        gpus = [g for g in node.gpus if g.index in slot.gpus]
        simulated = any(g.simulated for g in gpus)
        local_world = sum(1 for s in placement.slots if s.node == slot.node)
        node_rank = placement.nodes.index(slot.node)
        env = {k: v for k, v in os.environ.items() if not _secret(k)}
        env.update(spec.get("env", {}))
        env.update(
            {
                "RANK": str(slot.rank),
                "LOCAL_RANK": str(slot.local_rank),
                "WORLD_SIZE": str(row["replicas"]),
                "LOCAL_WORLD_SIZE": str(local_world),
                "GROUP_RANK": str(node_rank),
                "MASTER_ADDR": addr,
                "MASTER_PORT": str(port),
                # Simulated GPUs are CPU slots: hide every real device from the job.
                "CUDA_VISIBLE_DEVICES": "" if simulated else ",".join(g.uuid for g in gpus),
                "AIGRID_GPUS": ",".join(str(g.index) for g in gpus),
                "AIGRID_SIMULATED_GPUS": "1" if simulated else "0",
                "AIGRID_JOB_ID": job_id,
                "AIGRID_ATTEMPT": str(attempt),
                "AIGRID_NODE": slot.node,
                "AIGRID_CHECKPOINT_DIR": str(Path(node.scratch) / "checkpoints" / job_id),
                "AIGRID_DATA": str(Path(node.scratch) / "data"),
                "AIGRID_RESULT_DIR": str(self._result_dir(job_id, attempt)),
                "PYTHONUNBUFFERED": "1",
            }
        )
        logs = self._log_path(job_id, attempt, slot.rank, "stdout")
        return LaunchRequest(
            replica_id=f"{job_id}.{attempt}.{slot.rank}",
            job_id=job_id,
            attempt=attempt,
            rank=slot.rank,
            node=slot.node,
            argv=(),
            env=env,
            workdir=spec.get("workdir", ""),
            stdout_path=str(logs),
            stderr_path=str(logs.with_suffix(".stderr")),
            exit_path=str(logs.with_suffix(".exit")),
        )

    def _handle(self, rep: dict[str, Any]) -> ReplicaHandle:
        return ReplicaHandle(rep["id"], rep.get("pid"), rep.get("pid_start"), rep["exit_path"])

    def _stop_replicas(self, job_id: str, attempt: int) -> None:
        for rep in self.store.replicas(job_id, attempt):
            if rep["state"] in ("launching", "running"):
                self.store.update_replica(rep["id"], state="stopping")
                self.executor.stop(self._handle(rep), self.stop_grace_s)

    def _on_exit(self, replica_id: str, code: int | None) -> None:
        rep = self.store.replica(replica_id)
        if rep is None or rep["state"] not in LIVE_REPLICA:
            return
        self.store.update_replica(
            replica_id, state="exited", exit_code=code, finished_at=time.time()
        )
        row = self.store.job(rep["job_id"])
        if row is None or row["state"] in FINAL_STATES:
            return
        if row["attempt"] != rep["attempt"]:
            return
        if code != 0 and row.get("pending_state") is None:
            # Stops the rest of the gang, and settles the job if nothing else runs.
            self._fail_gang(row["id"], self._failure_reason(rep, code), retry=True)
            return
        reps = self.store.replicas(row["id"], rep["attempt"])
        if all(r["state"] == "exited" for r in reps):
            self._finish(row, {str(r["rank"]): r["exit_code"] for r in reps})

    def _failure_reason(self, rep: dict[str, Any], code: int | None) -> str:
        where = f"rank {rep['rank']} on {rep['node']}"
        if code is None:
            if rep["id"] in self._lost_on_restart:
                return f"{where} was lost on restart: its process ended while the master was down"
            return f"{where} was lost: its process ended without recording an exit status"
        text = f"{where} exited with code {code}"
        if code > 128:
            with contextlib.suppress(ValueError):
                text += f" ({signal.Signals(code - 128).name})"
        tail = _tail(self._log_path(rep["job_id"], rep["attempt"], rep["rank"], "stderr"))
        return text + (f"; last stderr lines:\n{tail}" if tail else "")

    def _fail_gang(self, job_id: str, reason: str, retry: bool) -> None:
        row = self.store.job(job_id)
        spec = row["spec"]
        again = retry and row["restarts"] < spec.get("max_restarts", 0)
        self.store.update_job(job_id, pending_state=QUEUED if again else FAILED, reason=reason)
        self._stop_replicas(job_id, row["attempt"])
        reps = self.store.replicas(job_id, row["attempt"])
        if all(r["state"] == "exited" for r in reps):
            self._finish(self.store.job(job_id), {str(r["rank"]): r["exit_code"] for r in reps})

    def _finish(self, row: dict[str, Any], codes: dict[str, int | None]) -> None:
        pending = row.get("pending_state")
        with self.store.write():
            if pending == QUEUED:
                self._set_state(
                    row,
                    QUEUED,
                    exit_codes=codes,
                    placement=None,
                    restarts=row["restarts"] + 1,
                    attempt=row["attempt"] + 1,
                    pending_state=None,
                    started_at=None,
                    reason=f"restarting after: {row['reason']}",
                )
            elif pending in (FAILED, CANCELLED):
                self._set_state(row, pending, exit_codes=codes, finished_at=time.time())
            elif all(c == 0 for c in codes.values()):
                self._set_state(row, SUCCEEDED, exit_codes=codes, finished_at=time.time())
            else:
                self._set_state(row, FAILED, exit_codes=codes, finished_at=time.time())

    def _enforce_time_limits(self, now: float) -> None:
        for row in self.store.jobs((RUNNING,)):
            limit = row["spec"].get("time_limit_s")
            if (
                limit
                and row["started_at"]
                and not row.get("pending_state")
                and now - row["started_at"] > limit
            ):
                self._fail_gang(row["id"], f"time limit of {limit:g} s exceeded", retry=False)

    def _set_state(self, row: dict[str, Any], state: str, **fields: Any) -> None:
        with self.store.write():
            self.store.update_job(row["id"], state=state, **fields)
            new = {**row, **fields, "state": state}
            self._event_state(new, row["state"] if row["state"] != state else None)

    def _event_state(self, row: dict[str, Any], previous: str | None) -> None:
        data = {
            "job_id": row["id"],
            "name": row["name"],
            "owner": row["owner"],
            "state": row["state"],
            "previous_state": previous,
            "reason": row.get("reason"),
            "gpus": row["gpus"],
            "attempt": row.get("attempt") or 0,
        }
        self.store.record_event(events.JOB_STATE, row["id"], data)
        self._outbox.append((events.JOB_STATE, data))

    def _recover(self) -> None:
        """Pick up where a previous master left off: adopt live replicas, settle lost ones."""
        self.store.replace_inventory(self.executor.name, self.nodes)
        live = self.store.replicas_in(LIVE_REPLICA)
        adopted = set(self.executor.reconcile([self._handle(r) for r in live]))
        self._lost_on_restart = {r["id"] for r in live} - adopted
        self._live_replicas = bool(live)
        if live:
            log.info(
                "AI Grid master restart: %d replica(s) adopted, %d ended while it was down",
                len(adopted),
                len(self._lost_on_restart),
            )
        for row in self.store.jobs(ACTIVE_STATES):
            if row.get("pending_state") is not None:
                self._stop_replicas(row["id"], row["attempt"])


def read_reports(path: Path, rank: int) -> list[dict[str, Any]]:
    """The metrics a rank reported with ``runtime.report()``; a torn last line is skipped."""
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict):
            out.append({**data, "rank": rank})
    return out


def _secret(name: str) -> bool:
    """Variables that must not leak from the server into job processes."""
    upper = name.upper()
    return upper in {
        "JUPYTER_TOKEN",
        "JPY_API_TOKEN",
        "JUPYTERHUB_API_TOKEN",
        "AIGRID_TOKEN",
    } or upper.startswith("JUPYTERHUB_")


def _tail(path: Path, lines: int = STDERR_TAIL_LINES, max_bytes: int = 16384) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
