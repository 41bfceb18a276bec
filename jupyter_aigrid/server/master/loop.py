"""The master: a small loop that owns the components and runs each round's decision.

Every method that reads or writes the store runs on one dedicated thread (:meth:`Master.call`),
so SQLite has one writer and the event loop never blocks on an fsync. Events are produced
there and emitted on the event loop after each call, because jupyter_events schedules its
listeners on that loop.

The components (each a class of its own module, the infrastructure they share in
:class:`~.core.Core`):

- :class:`~.queue.JobQueue`: the queued jobs in memory and the run-time history;
- :class:`~.reads.Reads`: the read side (views, the cluster, results, events, the snapshot);
- :class:`~.rounds.Round`: a round of ``decide()`` and its decisions applied;
- :class:`~.lifecycle.Lifecycle`: every change of a job's state;
- :class:`~.launcher.Launcher`: placing a gang and starting its replicas;
- :class:`~.requests.CheckpointRequests`: asking running gangs for checkpoints;
- :class:`~.moves.Moves`: migrations, resuming from checkpoints;
- :class:`~.copies.CheckpointCopies`: running gangs' checkpoints kept on a second node;
- :class:`~.datasets.Datasets`, :class:`~.dataset_uploads.DatasetUploads` and
  :class:`~.data_staging.DataStaging`: the dataset registry, uploads, and staging a gang's
  data where it runs;
- :class:`~.inference.Inference`: the performance profiles inference jobs are placed by;
- :class:`~.catalog.Catalog`, :class:`~.replay.Replay`: the image catalog, ``POST /simulate``;
- :class:`~.recovery.Recovery`: picking up after the last master.

A round is ``decide()`` (:mod:`..policies.decide`) on the snapshot and the queue; the master
applies what it returns and decides nothing itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import Conflict, NotFound
from ..model import ReplicaExit
from ..spec import SpecError
from ..uploads import Uploads
from .catalog import Catalog
from .copies import CheckpointCopies
from .core import Core
from .data_staging import DataStaging
from .dataset_uploads import DatasetUploads
from .datasets import Datasets
from .inference import Inference
from .launcher import Launcher
from .lifecycle import Lifecycle
from .moves import Moves
from .queue import JobQueue
from .reads import Reads
from .recovery import Recovery
from .replay import Replay
from .requests import CheckpointRequests
from .rounds import Round

T = TypeVar("T")
#: Work in memory that the loop follows at the exit-poll pace rather than once a tick.
BUSY = ("checkpoint_staging", "watching", "data_staging")
log = logging.getLogger(__name__)
#: How often, while replicas run, the master looks for exits between full ticks.
EXIT_POLL_S = 0.05
#: Seconds between tries when picking up after a previous master fails (an engine down).
RECOVER_RETRY_S = (1.0, 30.0)


class Master:
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
        self.policy = policy
        self.tick_s = tick_s
        self.core = core = Core(store, executor, Path(state_dir))
        self.store, self.executor, self.journal = store, executor, core.journal
        self.memory, self.files, self.nodes = core.memory, core.files, core.nodes
        self.node_files = core.node_files
        self.queue = JobQueue(core, policy)
        self.reads = Reads(core, self.queue)
        self.inference = Inference(core, self.reads.snapshot, gpu_cost_per_hour, profile_options)
        self.data = Datasets(
            core, self.call, root=dataset_root, verify_interval_s=dataset_verify_interval_s
        )
        self.uploads = DatasetUploads(
            core,
            self.data,
            Uploads(Path(state_dir) / "uploads"),
            self.call,
            self.wake,
            quota_bytes=dataset_quota_bytes,
        )
        self.data_staging = DataStaging(core, self.data)
        self.requests = CheckpointRequests(core, self.reads, timeout_s=checkpoint_timeout_s)
        self.moves = Moves(core, self.reads, self.requests, policy, prestart=migration_prestart)
        self.copies = CheckpointCopies(core)
        self.lifecycle = Lifecycle(
            core,
            self.queue,
            self.reads,
            self.data,
            self.inference,
            self.requests,
            stop_grace_s=stop_grace_s,
            restart_backoff_s=restart_backoff_s,
            allow_uncatalogued_images=allow_uncatalogued_images,
        )
        self.launcher = Launcher(
            core,
            self.queue,
            self.lifecycle,
            self.moves,
            self.requests,
            self.data_staging,
            self.inference,
        )
        self.catalog = Catalog(core, self.call)
        self.replay = Replay(core, self.call, policy)
        self.recovery = Recovery(
            core, self.queue, self.lifecycle, self.launcher, self.moves, self.data
        )
        # The calls back: a gang's end starts it elsewhere, a launch fails a gang, ...
        self.lifecycle.launcher = self.moves.launcher = self.data_staging.launcher = self.launcher
        self.lifecycle.moves = self.data_staging.moves = self.moves
        self.moves.lifecycle = self.data_staging.lifecycle = self.lifecycle
        self.moves.data_staging = self.data_staging
        self.reads.listening = self.requests.listening
        self.reads.data_on = self.data.data_on
        self.reads.recovery_error = lambda: self.recovery.error
        self._emit_fn = emit
        self._db = ThreadPoolExecutor(1, thread_name_prefix="aigrid-master")
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._new_events: asyncio.Event | None = None
        self.round = Round(
            core,
            policy,
            self.queue,
            self.reads,
            self.inference,
            self.launcher,
            self.lifecycle,
            self.requests,
            self.moves,
            record=record_rounds,
        )

    @property
    def rounds(self) -> list[tuple[Any, ...]] | None:
        """(snapshot, queue, context, decisions) of every round, with ``record_rounds``."""
        return self.round.rounds

    @property
    def recovery_error(self) -> str | None:
        """Why picking up after the last master failed; None once it has succeeded."""
        return self.recovery.error

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
            await self.call(self.recovery.recover)
        except Exception as e:
            self.recovery.error = f"{type(e).__name__}: {e}"
            log.exception("AI Grid master cannot recover yet; retrying")
            return False
        self.recovery.error = None
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
        self.core.close()
        self.copies.close()
        self.data.close()

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
        while self.recovery.error is not None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, most)
            if await self._try_recover():
                log.info("AI Grid master recovered")
        last_tick = 0.0
        while not self._stopping:
            busy = self.core.live_replicas or any(self.memory.count(name) for name in BUSY)
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
                    await self.call(self._tick)
                else:
                    await self.call(self._poll_exits)
            except Exception:
                log.exception("AI Grid master tick failed; retrying on the next tick")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._db, fn, *args)
        except (SpecError, NotFound, Conflict):
            raise
        except Exception:
            # A write may have rolled back after the in-memory queue was updated.
            await loop.run_in_executor(self._db, self.queue.load)
            raise
        finally:
            self._flush()

    def _flush(self) -> None:
        committed = self.journal.take()
        if committed and self._new_events is not None:
            # Wake everyone following events; later waiters get a fresh Event.
            self._new_events.set()
            self._new_events = asyncio.Event()
        for schema_id, data in committed:
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
        job = await self.call(self.lifecycle.submit, spec, owner, inputs or {})
        self.wake()
        return job

    async def job(self, job_id: str, user: str, admin: bool = False) -> dict[str, Any]:
        return await self.call(self.reads.view_one, job_id, user, admin)

    async def jobs(
        self, user: str, admin: bool = False, state: str | None = None, owner: str | None = None
    ) -> list[dict[str, Any]]:
        return await self.call(self.reads.view_many, user, admin, state, owner)

    async def cancel(self, job_id: str, user: str, admin: bool = False) -> dict[str, Any]:
        job = await self.call(self.lifecycle.cancel, job_id, user, admin)
        self.wake()
        return job

    async def checkpoint(self, job_id: str, user: str, admin: bool = False) -> dict[str, Any]:
        """Ask a running job for a checkpoint now (it answers at its next step boundary)."""
        job = await self.call(self.requests.checkpoint_now, job_id, user, admin)
        self.wake()
        return job

    async def migrate(
        self, job_id: str, user: str, admin: bool = False, node: str | None = None
    ) -> dict[str, Any]:
        """Move a running job's gang (to ``node``, or where the policy places it)."""
        job = await self.call(self.moves.migrate_now, job_id, user, admin, node)
        self.wake()
        return job

    async def profiles(self, model: str | None = None) -> dict[str, Any]:
        """Performance profiles (of ``model``, or all) and the resource types."""
        return await self.call(self.inference.view, model)

    async def cluster(self) -> dict[str, Any]:
        return await self.call(self.reads.cluster)

    async def result(self, job_id: str, user: str, admin: bool = False) -> dict[str, Any]:
        return await self.call(self.reads.result, job_id, user, admin)

    async def output_path(self, job_id: str, name: str, user: str, admin: bool = False) -> Path:
        """Where rank 0's pickled global ``name`` of a finished job is kept."""
        return await self.call(self.reads.output_path, job_id, name, user, admin)

    async def events(
        self, user: str, admin: bool = False, since: int | None = None, job_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Stored events after ``since`` that ``user`` may see, and the seq to continue from."""
        return await self.call(self.reads.events, user, admin, since, job_id)

    def new_events(self) -> asyncio.Event:
        """Set at the next event; take it *before* reading, so nothing falls in between."""
        assert self._new_events is not None, "the master has not started"
        return self._new_events

    async def log_files(
        self, job_id: str, user: str, admin: bool = False, attempt: int | None = None
    ) -> tuple[dict[str, Any], list[tuple[int, str, Path]]]:
        """The job, and (rank, stream, path) for each log file of the attempt."""
        return await self.call(self.reads.log_files, job_id, user, admin, attempt)

    # -- the loop ------------------------------------------------------------------------------

    def _tick(self) -> None:
        self.lifecycle.handle_starts()
        self._handle_exits(self.executor.poll())
        self.data_staging.collect()
        self.moves.watch()
        self.copies.tick()
        self.data.verify_due(time.time())
        self.lifecycle.enforce_time_limits(time.time())
        self.round.run()

    def _poll_exits(self) -> None:
        self.lifecycle.handle_starts()
        exits = self.executor.poll()
        if exits:
            self._handle_exits(exits)

        def staging() -> int:
            return self.memory.count("checkpoint_staging") + self.memory.count("data_staging")

        staged = staging()
        if self.memory.count("data_staging"):
            self.data_staging.collect()
            self.data_staging.progress()
        if self.memory.count("checkpoint_staging") or self.memory.count("watching"):
            self.moves.watch()
        if exits or staged != staging():
            self.round.run()

    def _handle_exits(self, exits: list[ReplicaExit]) -> None:
        self.core.sync_inventory()
        self.lifecycle.handle_exits(exits)
