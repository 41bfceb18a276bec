"""The control loop of the cluster: admit -> order -> place -> apply. The only writer of state.

Every method that reads or writes the store runs on one dedicated thread, so SQLite has one
writer and the event loop never blocks on an fsync. Events are produced there and emitted on
the event loop after each call, because jupyter_events schedules its listeners on that loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from ..durable import write_atomic
from . import events
from .admission import check_admissible
from .datasets import Datasets
from .executors.base import ExecutorError
from .executors.nodefiles import NodeFiles, NodeGone
from .images import check_image, resolve_image
from .inference import Inference
from .memory import Memory
from .migration import MIGRATE, Mover, active
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
    Migrate,
    Placement,
    ReplicaExit,
    ReplicaHandle,
    Request,
)
from .policies import Context, decide, load_policy
from .policies.qos import resource_of_placement
from .profiles import ProfileBook
from .queries import Conflict, JobQueries, NotFound, run_time_s
from .replicas import JobFiles, replica_env
from .replication import CheckpointCopies
from .snapshot import History
from .spec import SpecError
from .staging import DataStaging
from .states import LIVE_REPLICA
from .templating import choose, describe, hostfile_text, templates
from .uploads import Uploads
from .views import cancel_blocker, image_view

T = TypeVar("T")
#: Work in memory that the loop follows at the exit-poll pace rather than once a tick.
BUSY = ("checkpoint_staging", "watching", "data_staging")
log = logging.getLogger(__name__)
#: Restarts a gang gets beyond its ``max_restarts`` when a node it ran on left the cluster.
NODE_LOSS_RESTARTS = 3
#: How often, while replicas run, the master looks for exits between full ticks.
EXIT_POLL_S = 0.05
#: ``pending_state`` of a gang going back to the queue through no fault of its own (the
#: master died while starting it): a new attempt, not a restart. Never a job's state.
REQUEUE = "requeue"
#: Seconds between tries when picking up after a previous master fails (an engine down).
RECOVER_RETRY_S = (1.0, 30.0)


class Master(JobQueries, Mover, CheckpointCopies, Datasets, DataStaging, Inference):
    """Owns the store and the executor; the REST handlers call its coroutines."""

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
        allow_uncatalogued_images: bool = False,
        checkpoint_timeout_s: float = 120.0,
        migration_prestart: bool = True,
        restart_backoff_s: float = 1.0,
        dataset_root: str = "",
        dataset_quota_bytes: int = 0,
        dataset_verify_interval_s: float = 6 * 3600.0,
        gpu_cost_per_hour: dict[str, float] | None = None,
        record_rounds: bool = False,
        profile_options: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.policy = policy
        self.files = JobFiles(Path(state_dir), store.cluster_id())
        self.tick_s = tick_s
        self.stop_grace_s = stop_grace_s
        #: May a job name an image reference that is not in the catalog (pulled with the
        #: server's registry credentials, run on the cluster's hosts)?
        self.allow_uncatalogued_images = allow_uncatalogued_images
        #: How long a gang has to answer a checkpoint request (and to restore one).
        self.checkpoint_timeout_s = checkpoint_timeout_s
        #: Start a migrating gang at its destination while its checkpoint is written (where
        #: the executor can: ``prestarts``)?
        self.migration_prestart = migration_prestart and executor.capabilities.prestart
        #: The first restart after a failure waits this long; each next one twice as long.
        self.restart_backoff_s = restart_backoff_s
        #: Checkpoints being verified and copied where gangs resume: job -> (attempt, future).
        self._stager = ThreadPoolExecutor(2, thread_name_prefix="aigrid-stage")
        #: Running gangs' newest checkpoints copied to a second node (:mod:`.replication`).
        self._copier = ThreadPoolExecutor(1, thread_name_prefix="aigrid-copies")
        self._next_copy = 0.0
        #: What is kept about each job in memory only (dropped when the job ends).
        self.memory = Memory()
        #: Where nodes keep datasets ('' = <scratch>/datasets); per-user bytes (0 = no limit).
        self.dataset_root = dataset_root
        self.dataset_quota_bytes = dataset_quota_bytes
        #: Every copy of a dataset is hashed again this often (and before each use).
        self.dataset_verify_interval_s = dataset_verify_interval_s
        self.uploads = Uploads(Path(state_dir) / "uploads")
        #: Hashing (uploads, verification) off the master thread.
        self._hasher = ThreadPoolExecutor(2, thread_name_prefix="aigrid-hash")
        #: Copies being verified: (name, version, node) -> future of the problems found.
        self._verifying: dict[tuple[str, int, str], Any] = {}
        self._next_verify_check = 0.0
        #: Uploads being moved into place (not to be verified before they are there).
        self._placing: set[tuple[str, int, str]] = set()
        self.nodes = executor.nodes()
        #: Work on the nodes' own files (checkpoints, datasets): on the node, not here.
        self.node_files: NodeFiles = executor.node_files
        #: Does the executor start replicas in the background (and report it in started())?
        self._async_starts = executor.capabilities.slow_starts
        self._nodes_by_name = {n.name: n for n in self.nodes}
        #: Every node's scratch folder, those that left the cluster too.
        self._scratch = {n.name: n.scratch for n in self.nodes}
        self._emit_fn = emit
        self._db = ThreadPoolExecutor(1, thread_name_prefix="aigrid-master")
        #: Events of committed transactions, emitted on the event loop by _flush().
        self._outbox: collections.deque[tuple[str, dict]] = collections.deque()
        #: Events of the transaction in progress (master thread only); a rollback drops them.
        self._uncommitted: list[tuple[str, dict]] = []
        #: What to do once the transaction in progress commits (dropped on a rollback).
        self._after_commit: list[Callable[[], None]] = []
        store.on_commit = self._commit_events
        store.on_rollback = self._rolled_back
        self._lost_on_restart: set[str] = set()
        #: Why picking up after the last master failed; None once it has succeeded.
        self.recovery_error: str | None = "not started"
        self._live_replicas = False
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._new_events: asyncio.Event | None = None
        self._queue: dict[str, Request] = {}
        self._positions: dict[str, int] | None = None
        self._history = History()
        #: Cost per GPU-hour of each resource type; performance profiles, learnt and stored.
        self.gpu_cost_per_hour = dict(gpu_cost_per_hour or {})
        self.book = ProfileBook.from_rows(store.profiles(), **(profile_options or {}))
        #: Queued job -> its spec if it is an inference job, else None (read once).
        self._choices: dict[str, Any] = {}
        #: (snapshot, queue, context, decisions) of every round, when ``record_rounds`` is
        #: set (tests and debugging; it grows without bound); None otherwise.
        self.rounds: list[tuple[Any, ...]] | None = [] if record_rounds else None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Pick up where the last master left off, then run the loop. If that fails (the
        Docker engine is down, say), the loop keeps trying; jobs submitted meanwhile are
        stored and queued, and nothing is scheduled until it has succeeded."""
        self._wake = asyncio.Event()
        self._new_events = asyncio.Event()
        await self._try_recover()
        self._task = asyncio.create_task(self._run(), name="aigrid-master-loop")

    async def _try_recover(self) -> bool:
        try:
            await self._call(self._recover)
        except Exception as e:
            self.recovery_error = f"{type(e).__name__}: {e}"
            log.exception("AI Grid master cannot recover yet; retrying")
            return False
        self.recovery_error = None
        return True

    async def stop(self) -> None:
        """Stop the loop and close the store. Replicas keep running; a restart adopts them."""
        if self._task is not None:
            # Python 3.11's wait_for() can swallow a cancellation that meets a wake-up (a
            # cancel() just before stop()): the loop then ends on the flag instead.
            self._stopping = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.get_running_loop().run_in_executor(self._db, self._close)
        self._db.shutdown(wait=True)
        self._stager.shutdown(wait=True, cancel_futures=True)
        self._copier.shutdown(wait=True, cancel_futures=True)
        self._hasher.shutdown(wait=True, cancel_futures=True)

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
        delay, most = RECOVER_RETRY_S
        while self.recovery_error is not None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, most)
            if await self._try_recover():
                log.info("AI Grid master recovered")
        last_tick = 0.0
        while not self._stopping:
            busy = self._live_replicas or any(self.memory.count(name) for name in BUSY)
            timeout = EXIT_POLL_S if busy else self.tick_s
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
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._db, fn, *args)
        except (SpecError, NotFound, Conflict):
            raise
        except Exception:
            # A write may have rolled back after the in-memory queue was updated.
            await loop.run_in_executor(self._db, self._load_queue)
            raise
        finally:
            self._flush()

    def _load_history(self) -> History:
        """Run times of the jobs that succeeded, the policies' only source of estimates."""
        history = History()
        for row in self.store.jobs((SUCCEEDED,)):
            if row.get("started_at") and row.get("finished_at"):
                history = history.add(self._request(row), run_time_s(row))
        return history

    def _load_queue(self) -> None:
        rows = self.store.jobs((QUEUED,))
        self._queue = {r["id"]: self._request(r) for r in rows}
        for r in rows:
            if r.get("retry_at"):
                self.memory(r["id"]).not_before = r["retry_at"]
        self._positions = None

    def _flush(self) -> None:
        if self._outbox and self._new_events is not None:
            # Wake everyone following events; later waiters get a fresh Event.
            self._new_events.set()
            self._new_events = asyncio.Event()
        while self._outbox:
            schema_id, data = self._outbox.popleft()
            if self._emit_fn is None:
                continue
            try:
                self._emit_fn(schema_id, data)
            except Exception:
                log.exception("could not emit %s", schema_id)

    # -- public API (coroutines; the work runs on the master thread) --------------------------

    async def submit(
        self, spec: dict[str, Any], owner: str, inputs: dict[str, bytes] | None = None
    ) -> dict[str, Any]:
        """Store a validated spec (and its pushed values) as a queued job; return its view."""
        job = await self._call(self._submit, spec, owner, inputs or {})
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

    async def checkpoint(self, job_id: str, user: str, admin: bool = False) -> dict[str, Any]:
        """Ask a running job for a checkpoint now (it answers at its next step boundary)."""
        job = await self._call(self._checkpoint_now, job_id, user, admin)
        self.wake()
        return job

    async def migrate(
        self, job_id: str, user: str, admin: bool = False, node: str | None = None
    ) -> dict[str, Any]:
        """Move a running job's gang (to ``node``, or where the policy places it)."""
        job = await self._call(self._migrate_now, job_id, user, admin, node)
        self.wake()
        return job

    async def profiles(self, model: str | None = None) -> dict[str, Any]:
        """Performance profiles (of ``model``, or all) and the resource types."""
        return await self._call(self._profiles_view, model)

    async def cluster(self) -> dict[str, Any]:
        return await self._call(self._cluster)

    async def result(self, job_id: str, user: str, admin: bool = False) -> dict[str, Any]:
        return await self._call(self._result, job_id, user, admin)

    async def output_path(self, job_id: str, name: str, user: str, admin: bool = False) -> Path:
        """Where rank 0's pickled global ``name`` of a finished job is kept."""
        return await self._call(self._output_path, job_id, name, user, admin)

    async def events(
        self, user: str, admin: bool = False, since: int | None = None, job_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Stored events after ``since`` that ``user`` may see, and the seq to continue from."""
        return await self._call(self._events, user, admin, since, job_id)

    async def simulate(
        self, policy: str, options: dict[str, Any], overhead_s: float
    ) -> dict[str, Any]:
        """Replay the jobs that ran here under ``policy``; the live figures come alongside."""
        from ..sim.engine import Simulator, summarize

        jobs, rows = await self._call(self._replay_jobs)
        if not jobs:
            msg = "no job has run to the end here yet: there is no history to replay"
            raise Conflict(msg)
        try:
            chosen = load_policy(policy, **options)
        except (ValueError, TypeError) as e:
            raise SpecError(str(e), field="options" if options else "policy") from e
        sim = Simulator(jobs, self.nodes, chosen, overhead_s, source="the job history")
        result = await asyncio.to_thread(sim.run)
        ran = {j.job_id: j.duration_s for j in jobs}
        preempted = await self._call(self.store.count_events, events.JOB_STATE, PREEMPTED)
        live = summarize(
            [(r["submitted_at"], r["finished_at"], ran[r["id"]]) for r in rows],
            sum(ran[r["id"]] * r["gpus"] for r in rows),
            sum(len(n.gpus) for n in self.nodes),
            preempted,
        )
        return {
            "policy": result.policy,
            "live_policy": self.policy.name,
            "preempt_overhead_s": overhead_s,
            "simulated": result.metrics,
            "live": live,
            "placements": {
                r.job.job_id: r.placements[0].to_json() for r in result.records if r.placements
            },
        }

    # -- the image catalog ----------------------------------------------------------------------

    async def images(self) -> list[dict[str, Any]]:
        return [image_view(r) for r in await self._call(self.store.images)]

    async def image(self, image_id: str) -> dict[str, Any]:
        row = await self._call(self.store.image, image_id)
        if row is None:
            msg = f"no image {image_id!r} in the catalog"
            raise NotFound(msg)
        return image_view(row)

    async def put_image(
        self, image_id: str, body: dict[str, Any], create: bool = False
    ) -> dict[str, Any]:
        """Add (``create``: refuse an existing id) or replace a catalog entry."""
        entry = check_image(image_id, body)
        if create and await self._call(self.store.image, image_id) is not None:
            msg = (
                f"image {image_id!r} is already in the catalog; PUT /images/{image_id} replaces it"
            )
            raise Conflict(msg)
        await self._call(self.store.put_image, entry)
        return await self.image(image_id)

    async def delete_image(self, image_id: str) -> None:
        if not await self._call(self.store.delete_image, image_id):
            msg = f"no image {image_id!r} in the catalog"
            raise NotFound(msg)

    def new_events(self) -> asyncio.Event:
        """Set at the next event; take it *before* reading, so nothing falls in between."""
        assert self._new_events is not None, "the master has not started"
        return self._new_events

    async def log_files(
        self, job_id: str, user: str, admin: bool = False, attempt: int | None = None
    ) -> tuple[dict[str, Any], list[tuple[int, str, Path]]]:
        """The job, and (rank, stream, path) for each log file of the attempt."""
        return await self._call(self._log_files, job_id, user, admin, attempt)

    # -- commands ------------------------------------------------------------------------------

    def _submit(self, spec: dict[str, Any], owner: str, inputs: dict[str, bytes]) -> dict[str, Any]:
        spec = self._resolve_datasets(spec)
        check_admissible(spec, self.nodes, self.executor.name)
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
            self.files.write_inputs(row["id"], inputs)
            self._event_state(row, None)
        self._queue[row["id"]] = self._request(row)
        self._positions = None
        return self._view(row)

    def _cancel(self, job_id: str, user: str, admin: bool) -> dict[str, Any]:
        row = self._visible(job_id, user, admin)
        why = cancel_blocker(row)
        if why is not None:
            raise Conflict(why)
        reason = f"cancelled by {user}"
        with self.store.write():
            unstarted = row["state"] == STARTING and not self.store.replicas(job_id, row["attempt"])
            if row["state"] in (QUEUED, PREEMPTED) or unstarted:  # unstarted: still staging
                self._set_state(row, CANCELLED, reason=reason, finished_at=time.time())
                self._end_migration(self.store.job(job_id), succeeded=False)
            elif row.get("pending_state") in (None, QUEUED, PREEMPTED, REQUEUE, MIGRATE):
                # A gang on its way back to the queue ends instead; one already failing for
                # good keeps its failure as the reason.
                self.store.update_job(job_id, pending_state=CANCELLED, reason=reason)
                self._stop_replicas(job_id, row["attempt"])
        return self._view(self.store.job(job_id))

    # -- the loop ------------------------------------------------------------------------------

    def _tick(self) -> None:
        self._handle_starts()
        self._handle_exits(self.executor.poll())
        self._collect_data()
        self._watch()
        self._copy_checkpoints()
        self._verify_due(time.time())
        self._enforce_time_limits(time.time())
        self._schedule()

    def _handle_starts(self) -> None:
        """Executors that start replicas in the background (containers) say when each has
        started: a gang is running once all of its replicas are."""
        if not self._async_starts:
            return
        jobs = set()
        with self.store.write():
            for replica_id in self.executor.started():
                rep = self.store.replica(replica_id)
                if rep is not None and rep["state"] == "launching":
                    self.store.update_replica(replica_id, state="running", started_at=time.time())
                    jobs.add((rep["job_id"], rep["attempt"]))
            for job_id, attempt in jobs:
                row = self.store.job(job_id)
                reps = self.store.replicas(job_id, attempt)
                if (
                    row is not None
                    and row["state"] == STARTING
                    and row["attempt"] == attempt
                    and not row.get("pending_state")
                    and all(r["state"] == "running" for r in reps)
                ):
                    self._set_state(row, RUNNING)

    def _poll_exits(self) -> None:
        self._handle_starts()
        exits = self.executor.poll()
        if exits:
            self._handle_exits(exits)

        def staging() -> int:
            return self.memory.count("checkpoint_staging") + self.memory.count("data_staging")

        staged = staging()
        if self.memory.count("data_staging"):
            self._collect_data()
            self._staging_progress()
        if self.memory.count("checkpoint_staging") or self.memory.count("watching"):
            self._watch()
        if exits or staged != staging():
            self._schedule()

    def _sync_inventory(self) -> None:
        """Take in the nodes that joined or left the cluster (executors whose inventory
        changes say so in ``nodes()``: Ray). A node that left holds nothing any more: its
        replicas are reported lost and their gangs recover elsewhere."""
        if not self.executor.capabilities.changing_inventory:
            return
        nodes = self.executor.nodes()
        if [n.name for n in nodes] == [n.name for n in self.nodes]:
            return
        names = {n.name for n in nodes}
        gone, new = (
            sorted(set(self._nodes_by_name) - names),
            sorted(names - set(self._nodes_by_name)),
        )
        log.warning(
            "AI Grid: the cluster changed: %s left, %s joined",
            ", ".join(gone) or "none",
            ", ".join(new) or "none",
        )
        self.nodes, self._nodes_by_name = nodes, {n.name: n for n in nodes}
        self._scratch.update((n.name, n.scratch) for n in nodes)

    def _handle_exits(self, exits: list[ReplicaExit]) -> None:
        self._sync_inventory()
        for exit_ in exits:
            with self.store.write():
                self._on_exit(exit_.replica_id, exit_.exit_code, exit_.never_started)
        self._live_replicas = bool(self.store.replicas_in(LIVE_REPLICA))

    def _schedule(self) -> None:
        now = time.time()
        queue = [r for r in self._queue.values() if self._not_before(r.job_id) <= now]
        if not queue:
            return
        active = self.store.jobs(ACTIVE_STATES)  # one read for the snapshot and the context
        snapshot = self._snapshot(active)
        context = self._round_context(active)
        if self.rounds is not None:  # the book changes as jobs end: keep it as it was
            context = replace(context, book=self.book.copy())
        decided = decide(snapshot, queue, self.policy, context)
        self._choices = dict(decided.choices)
        if self.rounds is not None:
            self.rounds.append((snapshot, tuple(queue), context, decided))
        for launch in decided.launches:
            self._apply(launch)
        for preempt in decided.preemptions:
            with self.store.write():
                self._preempt(preempt.job_id, preempt.reason)
        for move in decided.migrations:
            with self.store.write():
                self._migrate_for(move)
            self._prestart(move.job_id)

    def _round_context(self, rows: list[dict[str, Any]]) -> Context:
        """What the round needs to know about running gangs (``rows``: the active jobs)
        beyond the snapshot."""
        settled = frozenset(
            r["id"] for r in rows if r["state"] == RUNNING and not r.get("pending_state")
        )
        return Context(
            book=self.book,
            costs=self.gpu_cost_per_hour,
            settled=settled,
            movable=frozenset(
                r["id"]
                for r in rows
                if r["id"] in settled and r["spec"].get("preemptible") and self._listening(r)
            ),
            moving=any(active(r.get("migration")) for r in rows),
        )

    def _preempt(self, job_id: str, reason: str) -> None:
        """Checkpoint a running gang if it can, then stop it and requeue it: it resumes
        from that checkpoint when it runs again."""
        row = self.store.job(job_id)
        if row is None or row["state"] not in ACTIVE_STATES or row.get("pending_state"):
            return  # ended, or already on its way out: nothing to do
        request = (row.get("checkpoint") or {}).get("request")
        if (request and request["state"] == "pending") or active(row.get("migration")):
            return  # checkpointing already; it stops once that is done
        if self._listening(row):
            log.info("AI Grid: job %s checkpoints, then it is %s", job_id, reason)
            self._request_checkpoint(row, reason, then="preempt")
            return
        self._stop_to_requeue(job_id, reason)

    def _migrate_for(self, move: Migrate) -> None:
        row = self.store.job(move.job_id)
        if row is None or row["state"] != RUNNING or row.get("pending_state"):
            return
        self._begin_migration(row, move.placement, move.reason)

    def _stop_to_requeue(self, job_id: str, reason: str) -> None:
        """Stop a gang (SIGTERM, then SIGKILL after the grace) and requeue it once stopped."""
        row = self.store.job(job_id)
        if row is None or row["state"] not in ACTIVE_STATES or row.get("pending_state"):
            return
        log.info("AI Grid: job %s %s", job_id, reason)
        self.store.update_job(job_id, pending_state=PREEMPTED, reason=reason)
        self._stop_replicas(job_id, row["attempt"])
        self._settle_if_done(self.store.job(job_id))

    def _apply(self, launch: Launch) -> None:
        """Record the placement, then start every replica (after staging the gang's
        checkpoint there, if it has one); a failed start fails the gang."""
        row = self.store.job(launch.job_id)
        assert row is not None
        extra: dict[str, Any] = {}
        if row["kind"] == "inference":
            extra["inference"] = self._inference_record(row, launch.placement)
        elif not row.get("prediction"):  # what the policies expect of it, checked at its end
            guess = self._history.predict(self._request(row))
            extra["prediction"] = {"run_s": guess.seconds, "basis": guess.basis}
        self._place(row, launch.placement, **extra)
        self._start_or_stage(self.store.job(launch.job_id))

    def _place(self, row: dict[str, Any], placement: Placement, **fields: Any) -> None:
        with self.store.write():
            self._set_state(
                row,
                STARTING,
                placement=placement.to_json(),
                started_at=time.time(),
                pending_state=None,
                **fields,
            )
            attempt = fields.get("attempt", row["attempt"])
            self._record(
                events.JOB_PLACEMENT,
                row["id"],
                {
                    "job_id": row["id"],
                    "attempt": attempt,
                    "placement": [
                        {
                            "rank": s.rank,
                            "node": s.node,
                            "local_rank": s.local_rank,
                            "gpus": list(s.gpus),
                            "simulated": self._simulated(s.node),
                        }
                        for s in placement.slots
                    ],
                },
            )

    def _start_or_stage(self, row: dict[str, Any]) -> None:
        """A gang's datasets are staged where it goes first; a gang with checkpoints resumes
        from the newest good one; others just start."""
        if self._needs_data(row):
            self._stage_data(row)
        elif self._has_checkpoints(row["id"]):
            with self.store.write():
                self._stage(row)
        else:
            self._resume(row, None)

    def _launch_replicas(
        self, row: dict[str, Any], restore: str | None, prestart: bool = False
    ) -> None:
        """Start every replica of the placed gang, restoring checkpoint ``restore`` if set;
        or (``prestart``) replicas that wait for the master's go in ``runtime.restore()``,
        for an attempt that is not yet the job's (:meth:`_prestart`)."""
        # Each replica must be on record (committed) before its process starts.
        assert not self.store.conn.in_transaction, "replicas start outside a transaction"
        spec, attempt, job_id = row["spec"], row["attempt"], row["id"]
        placement = Placement.from_json(row["placement"])
        slots = placement.slots
        if not prestart:  # the gang it replaces may still be answering one
            self._clear_requests(row)
        try:
            rendezvous = self.executor.rendezvous(slots[0].node)
            views = {node: self._data_view_dir(row, node) for node in placement.nodes}
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
                    self._nodes_by_name[slot.node],
                    rendezvous,
                    self.files.results(job_id, attempt),
                    self.files.key(job_id),
                    self.files.inputs(job_id),
                    host_env=self.executor.capabilities.host_env,
                )
                env["AIGRID_DATA"] = views[slot.node]
                env["AIGRID_RESOURCE"] = resource_of_placement(placement, self._nodes_by_name)
                if restore:
                    env.update(self._restore_env(row, slot, restore))
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
                        self._stop_replicas(job_id, attempt)
                        now = self.store.job(job_id)
                        dropped = self._without_prestart(now, now["migration"], reason)
                        self.store.update_job(job_id, migration=dropped)
                    else:
                        lost = isinstance(e, NodeGone) or self._left(placement)
                        self._fail_gang(job_id, reason, retry=lost, node_lost=lost)
                return
            if self._async_starts:  # running once the executor says it started
                self.store.update_replica(req.replica_id, pid=handle.pid)
                continue
            self.store.update_replica(
                req.replica_id,
                state="running",
                pid=handle.pid,
                pid_start=handle.pid_start,
                started_at=time.time(),
            )
        if not self._async_starts and not prestart:
            self._set_state(self.store.job(job_id), RUNNING)
        self._live_replicas = True

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
            row = self.store.job(job_id)
            if prestart:
                dropped = self._without_prestart(row, row["migration"], reason)
                self.store.update_job(job_id, migration=dropped)
                return
            self.store.update_job(job_id, pending_state=REQUEUE, reason=reason)
            self._finish(self.store.job(job_id), {})

    def _container_fields(self, row: dict[str, Any], slot: Any) -> dict[str, Any]:
        """What a container executor needs beyond the environment: the image, the network,
        the GPUs by UUID, the limits, and the host paths the replica reads and writes."""
        spec, job_id, attempt = row["spec"], row["id"], row["attempt"]
        description = row.get("description") or describe(spec)
        node = self._nodes_by_name[slot.node]
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
                *self._data_mounts(row, slot.node),
                str(self.files.attempt_dir(job_id, attempt) / "hostfile"),
            ),
        }

    def _simulated(self, node: str) -> bool:
        n = self._nodes_by_name.get(node)
        return bool(n and any(g.simulated for g in n.gpus))

    def _handle(self, rep: dict[str, Any]) -> ReplicaHandle:
        return ReplicaHandle(rep["id"], rep.get("pid"), rep.get("pid_start"), rep["exit_path"])

    def _stop_replicas(self, job_id: str, attempt: int) -> None:
        """SIGTERM every live replica of the attempt, SIGKILL after the grace period.

        Replicas already stopping are asked again: after a master restart the executor has
        forgotten the first request and its deadline.
        """
        for rep in self.store.replicas(job_id, attempt):
            if rep["state"] in LIVE_REPLICA:
                if rep["state"] != "stopping":
                    self.store.update_replica(rep["id"], state="stopping")
                self.executor.stop(self._handle(rep), self.stop_grace_s)

    def _on_exit(self, replica_id: str, code: int | None, never_started: bool = False) -> None:
        rep = self.store.replica(replica_id)
        if rep is None or rep["state"] not in LIVE_REPLICA:
            return
        self.store.update_replica(
            replica_id, state="exited", exit_code=code, finished_at=time.time()
        )
        row = self.store.job(rep["job_id"])
        if row is None or row["state"] in FINAL_STATES or row["attempt"] != rep["attempt"]:
            return
        if never_started and row.get("pending_state") is None:
            reason = (
                f"the master restarted while starting rank {rep['rank']} on {rep['node']}; "
                "starting the job again"
            )
            self.store.update_job(row["id"], pending_state=REQUEUE, reason=reason)
            self._stop_replicas(row["id"], row["attempt"])
            self._settle_if_done(self.store.job(row["id"]))
        elif code != 0 and row.get("pending_state") is None:
            # Stops the rest of the gang, and settles the job if nothing else runs.
            node_lost = code is None and rep["node"] not in self._nodes_by_name
            reason = self._failure_reason(rep, code)
            self._fail_gang(row["id"], reason, retry=True, node_lost=node_lost)
        else:
            self._settle_if_done(row)

    def _settle_if_done(self, row: dict[str, Any]) -> None:
        """Finish the job once every replica of its current attempt has exited."""
        reps = self.store.replicas(row["id"], row["attempt"])
        if reps and all(r["state"] == "exited" for r in reps):
            self._finish(row, {str(r["rank"]): r["exit_code"] for r in reps})

    def _failure_reason(self, rep: dict[str, Any], code: int | None) -> str:
        where = f"rank {rep['rank']} on {rep['node']}"
        if code is None:
            if rep["node"] not in self._nodes_by_name:
                return f"{where} was lost: its node left the cluster"
            if rep["id"] in self._lost_on_restart:
                return f"{where} was lost on restart: its process ended while the master was down"
            return f"{where} was lost: its process ended without recording an exit status"
        text = f"{where} exited with code {code}"
        if code > 128:
            with contextlib.suppress(ValueError):
                text += f" ({signal.Signals(code - 128).name})"
        tail = self.files.stderr_tail(rep["job_id"], rep["attempt"], rep["rank"])
        return text + (f"; last stderr lines:\n{tail}" if tail else "")

    def _fail_gang(self, job_id: str, reason: str, retry: bool, node_lost: bool = False) -> None:
        """Stop the gang; it goes back to the queue if it may restart (``max_restarts``; a
        gang whose node left the cluster, up to NODE_LOSS_RESTARTS more: not its fault)."""
        row = self.store.job(job_id)
        most = row["spec"].get("max_restarts", 0) + (NODE_LOSS_RESTARTS if node_lost else 0)
        again = retry and row["restarts"] < most
        self.store.update_job(job_id, pending_state=QUEUED if again else FAILED, reason=reason)
        self._stop_replicas(job_id, row["attempt"])
        self._settle_if_done(self.store.job(job_id))

    def _finish(self, row: dict[str, Any], codes: dict[str, int | None]) -> None:
        pending = row.get("pending_state")
        now = time.time()
        ran_s = max(0.0, now - (row.get("started_at") or now))
        memory = self.memory(row["id"])  # the attempt is over: what it was known for goes
        memory.listening = memory.copied = None
        if row.get("inference"):
            self._learn(row, pending is None and all(c == 0 for c in codes.values()), ran_s)
        earlier = row.get("attained_gpu_s") or 0.0
        attained = earlier + ran_s * max(row["gpus"], 1)  # as Request.slots counts it
        if pending == MIGRATE:  # stopped to move: the gang starts where it goes
            migration = row["migration"]
            prestart = migration.get("prestart") or {}
            waiting = prestart.get("state") == "waiting"  # started there already
            self._place(
                row,
                Placement.from_json(migration["target"]),
                exit_codes=codes,
                attempt=prestart["attempt"] if waiting else self._next_attempt(row),
                attained_gpu_s=attained,
                reason=f"migrating: {migration['reason']}",
            )
            self._start_or_stage(self.store.job(row["id"]))
            return
        self._end_migration(row, succeeded=pending is None and all(c == 0 for c in codes.values()))
        row = self.store.job(row["id"])
        if pending in (QUEUED, REQUEUE):
            # QUEUED: a restart after a failure; REQUEUE: the master's doing, not counted.
            failed = pending == QUEUED
            retry_at = now + min(self.restart_backoff_s * 2 ** row["restarts"], 60.0) * failed
            self._set_state(
                row,
                QUEUED,
                exit_codes=codes,
                placement=None,
                pending_state=None,
                restarts=row["restarts"] + failed,
                attempt=self._next_attempt(row),
                started_at=None,
                attained_gpu_s=attained,
                retry_at=retry_at if failed else None,
                reason=f"{'restarting after' if failed else 'requeued'}: {row['reason']}",
            )
            if failed:
                self.memory(row["id"]).not_before = retry_at
        elif pending == PREEMPTED:
            self._set_state(row, PREEMPTED, exit_codes=codes, attained_gpu_s=attained)
            self._set_state(
                self.store.job(row["id"]),
                QUEUED,
                placement=None,
                pending_state=None,
                attempt=self._next_attempt(row),
                started_at=None,
                reason=f"requeued: {row['reason']}",
            )
        elif pending in (FAILED, CANCELLED):
            self._set_state(row, pending, exit_codes=codes, finished_at=now)
        elif all(c == 0 for c in codes.values()):
            self._set_state(row, SUCCEEDED, exit_codes=codes, finished_at=now)
            # Run time in all: earlier runs (known as slot-seconds) and this one.
            run_s = earlier / max(row["gpus"], 1) + ran_s
            self._history = self._history.add(self._request(row), run_s)
            guess = row.get("prediction")
            if guess:
                known = guess.get("run_s") is not None and run_s > 0
                error = round(abs(guess["run_s"] - run_s) / run_s, 6) if known else None
                self.store.update_job(
                    row["id"], prediction={**guess, "actual_s": run_s, "error": error}
                )
        else:  # pragma: no cover - a non-zero exit always sets pending_state first
            self._set_state(row, FAILED, exit_codes=codes, finished_at=now)

    def _enforce_time_limits(self, now: float) -> None:
        for row in self.store.jobs((RUNNING,)):
            limit = row["spec"].get("time_limit_s")
            started = row["started_at"]
            if limit and started and not row.get("pending_state") and now - started > limit:
                with self.store.write():
                    self._fail_gang(row["id"], f"time limit of {limit:g} s exceeded", retry=False)

    def _set_state(self, row: dict[str, Any], state: str, **fields: Any) -> None:
        with self.store.write():
            self.store.update_job(row["id"], state=state, **fields)
            new = {**row, **fields, "state": state}
            self._event_state(new, row["state"] if row["state"] != state else None)
            if state in (SUCCEEDED, CANCELLED):  # it never resumes: its checkpoints go
                self._after_commit.append(lambda: self._drop_checkpoints(row["id"]))
        if state == QUEUED:
            self._queue[row["id"]] = self._request(new)
        else:
            self._queue.pop(row["id"], None)
        if state in FINAL_STATES:
            self.memory.end(row["id"])
        self._positions = None

    def _not_before(self, job_id: str) -> float:
        memory = self.memory.get(job_id)
        return memory.not_before if memory else 0.0

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
        self._record(events.JOB_STATE, row["id"], data)

    def _record(self, schema_id: str, job_id: str, data: dict[str, Any]) -> None:
        """Keep an event in the store (inside the caller's transaction); it is emitted once
        that transaction has committed, and never if it rolls back."""
        self.store.record_event(schema_id, job_id, data)
        self._uncommitted.append((schema_id, data))

    def _commit_events(self) -> None:
        self._outbox.extend(self._uncommitted)
        self._uncommitted.clear()
        actions, self._after_commit = self._after_commit, []
        for action in actions:
            action()

    def _rolled_back(self) -> None:
        self._uncommitted.clear()
        self._after_commit.clear()

    def _recover(self) -> None:
        """Pick up where a previous master left off: adopt live replicas, settle the rest."""
        self._load_queue()
        self._history = self._load_history()
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
        self.memory.clear("checkpoint_staging")
        self.memory.clear("data_staging")
        self._sweep()
        for row in self.store.jobs(ACTIVE_STATES):
            request = (row.get("checkpoint") or {}).get("request")
            if (request and request["state"] == "pending") or (
                active(row.get("migration")) and row["migration"]["state"] == "restoring"
            ):
                self.memory(row["id"]).watching = True
            unstarted = not self.store.replicas(row["id"], row["attempt"])
            migration = row.get("migration") or {}
            prestart = migration.get("prestart") or {}
            if (
                prestart.get("state") == "waiting"
                and prestart["attempt"] == row["attempt"]
                and row.get("pending_state") is None
            ):
                if migration["state"] == "restoring":  # staged and verified: say go
                    self._resume(row, migration["checkpoint"])
                    continue
                unstarted = True  # started ahead of time, still waiting for the go
            if row["state"] == STARTING and unstarted and row.get("pending_state") is None:
                # It died between placing the gang and starting it (or while staging).
                self._start_or_stage(row)
                continue
            with self.store.write():
                if row.get("pending_state") is not None:
                    self._stop_replicas(row["id"], row["attempt"])
                elif row["state"] == STARTING and not self._async_starts:
                    # It died after starting every replica, before saying the job runs.
                    reps = self.store.replicas(row["id"], row["attempt"])
                    if reps and all(r["state"] == "running" for r in reps):
                        self._set_state(row, RUNNING)
                # A crash between the last exit and the job's end leaves nothing to wait for.
                self._settle_if_done(self.store.job(row["id"]))
