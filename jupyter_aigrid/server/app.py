"""AIGridApp: the Jupyter server extension that runs the master.

Every knob is a trait, set as ``c.AIGridApp.<name>`` in ``jupyter_server_config.py`` or on the
command line (``--AIGridApp.local_nodes=2``).
"""

from __future__ import annotations

import os
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Float, Int, Set, TraitError, Unicode, default, validate

from . import events
from .executors.base import ExecutorError
from .executors.local import LocalExecutor
from .handlers import ROUTES
from .master import Master
from .policies import load_policy
from .store import Store, exclusive_lock
from .views import public_event

EXECUTORS = ("local", "docker", "ray")


class AIGridApp(ExtensionApp):
    name = "jupyter_aigrid"
    load_other_extensions = True

    executor = Unicode(
        "local",
        config=True,
        help=(
            "Where replicas run: 'local' (processes on this machine, the default), 'docker' "
            "(one container per replica on the Docker host of docker_base_url) or 'ray' (one "
            "actor per replica on the Ray cluster of ray_address)."
        ),
    )
    ray_address = Unicode(
        "auto",
        config=True,
        help="The Ray cluster the ray executor drives: 'auto' (the one this machine belongs "
        "to) or its head's '<ip>:<port>'.",
    )
    docker_base_url = Unicode(
        "",
        config=True,
        help="The Docker engine the docker executor uses; default $DOCKER_HOST or the local "
        "socket (unix:///var/run/docker.sock).",
    )
    docker_user = Unicode(
        "",
        config=True,
        help="Numeric uid:gid containers run as (never root's); default the server's own "
        "user, or 1000:1000 when the server runs as root.",
    )
    docker_network = Unicode(
        "bridge",
        config=True,
        help="The network of containers whose template does not need the host's (gangs of "
        "pytorch-ddp, mpi and tf-parameter-server always use the host's network).",
    )
    docker_pids_limit = Int(4096, config=True, help="Most processes one container may run.")
    allow_uncatalogued_images = Bool(
        False,
        config=True,
        help="Let jobs name any image reference (repo/name:tag), not only the catalog's. Off "
        "by default: an image is pulled with the server's registry credentials and runs on "
        "the cluster's hosts, so admins choose them (POST /images).",
    )
    state_dir = Unicode(
        config=True,
        help="Directory for the database, logs, results and the local nodes' scratch space.",
    )
    db_path = Unicode(config=True, help="The SQLite database; default <state_dir>/aigrid.sqlite.")
    simulated_gpus = Int(
        None,
        allow_none=True,
        config=True,
        help=(
            "GPUs per local node that are CPU slots standing in for real GPUs (marked "
            "'simulated' everywhere; jobs on them run torch on the CPU). Default: the real "
            "GPUs NVML finds, or 4 simulated GPUs per node on a machine without any. "
            "Setting a number uses simulated GPUs even where real ones exist."
        ),
    )
    local_nodes = Int(
        1, config=True, help="Logical nodes the local executor declares on this machine."
    )
    local_cpus_per_node = Int(
        None,
        allow_none=True,
        config=True,
        help="CPUs each local node offers; default the machine's CPU count (at least its GPUs).",
    )
    local_memory_mb_per_node = Int(
        None,
        allow_none=True,
        config=True,
        help="Memory each local node offers, in MB; default the machine's memory / local_nodes.",
    )
    policy = Unicode(
        "aigrid",
        config=True,
        help=(
            "The scheduling policy, by name from the 'jupyter_aigrid.policies' entry points: "
            "aigrid (default), fifo, priority, fairshare, las, backfill, srtf, or your own."
        ),
    )
    policy_options = Dict(
        config=True,
        help=(
            "Keyword options of the policy, e.g. {'weights': {'alice': 2}} for fairshare or "
            "{'thresholds_gpu_s': [3600]} for las."
        ),
    )
    tick_interval_s = Float(
        1.0, config=True, help="Seconds between master loop ticks when nothing wakes it."
    )
    stop_grace_s = Float(
        10.0, config=True, help="Seconds between SIGTERM and SIGKILL when stopping a replica."
    )
    checkpoint_timeout_s = Float(
        120.0,
        config=True,
        help="Seconds a job has to answer a checkpoint request (for a migration, a preemption "
        "or a user) and to restore one; after that the migration fails, the preemption "
        "goes ahead without it.",
    )
    migration_prestart = Bool(
        True,
        config=True,
        help="Start a migrating gang's replicas at its destination while its checkpoint is "
        "still being written and copied; they wait in runtime.restore() until it is there, "
        "so the job's start-up is off the migration's critical path. For executors that "
        "support it (local); jobs with datasets start after them as usual.",
    )
    restart_backoff_s = Float(
        1.0,
        config=True,
        help="Seconds before a failed gang restarts from its checkpoint; doubled at each "
        "restart, at most 60.",
    )
    dataset_root = Unicode(
        "",
        config=True,
        help="Where each node keeps its datasets: <dataset_root>/<node>. Default each node's "
        "scratch (<scratch>/datasets). Admins may register data already under it.",
    )
    dataset_quota_bytes = Int(
        100 * 2**30,
        config=True,
        help="Bytes of datasets each user may own (every version once, however many copies "
        "exist); 0 for no limit.",
    )
    dataset_verify_interval_s = Float(
        6 * 3600.0,
        config=True,
        help="Every copy of every dataset is hashed again this often (and before each job "
        "uses it); a copy that no longer matches is marked corrupt and never used.",
    )
    gpu_models = Dict(
        value_trait=Unicode(),
        config=True,
        help=(
            "The GPU model each local node's simulated GPUs stand in for, by node name, e.g. "
            "{'node-0': 'a100', 'node-1': 't4'}: their resource type becomes "
            "'simulated:<model>' (plain 'simulated' if not declared). Inference jobs are "
            "profiled and placed per resource type. Real GPUs keep their NVML model."
        ),
    )
    gpu_cost_per_hour = Dict(
        value_trait=Float(),
        config=True,
        help=(
            "Cost per GPU-hour of each resource type (a GPU model as NVML names it, "
            "'simulated:<model>', or 'cpu' per replica-hour), e.g. "
            "{'NVIDIA H100 80GB HBM3': 4.0, 'cpu': 0.1}. Inference jobs run on the cheapest "
            "type predicted to meet their SLO. Unlisted GPU types cost 1.0, the CPU 0.1."
        ),
    )
    profile_min_samples = Int(
        20,
        config=True,
        help="Results after which a (model, resource type) profile counts as learnt.",
    )
    profile_explore = Float(
        0.1,
        config=True,
        help=(
            "The most likely an inference job is sent to a resource type not yet profiled for "
            "its model, to learn it (shrinks as profiles fill; realtime jobs never explore "
            "while a profiled type meets their SLO)."
        ),
    )
    profile_half_life = Float(
        50.0,
        config=True,
        help=(
            "Results after which a result weighs half as much in a profile's latency "
            "quantiles, so that a resource whose latency changes is seen to change."
        ),
    )
    admin_users = Set(
        Unicode(),
        config=True,
        help="Users who see and manage every job (multi-user servers; a single-user "
        "server's user is always an admin).",
    )

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return os.path.join(jupyter_data_dir(), "aigrid")

    @default("db_path")
    def _default_db_path(self) -> str:
        return os.path.join(self.state_dir, "aigrid.sqlite")

    @validate("executor")
    def _check_executor(self, proposal):
        if proposal["value"] not in EXECUTORS:
            allowed = ", ".join(EXECUTORS)
            msg = f"AIGridApp.executor must be one of {allowed}, got {proposal['value']!r}"
            raise TraitError(msg)
        return proposal["value"]

    @validate("gpu_cost_per_hour")
    def _check_costs(self, proposal):
        for resource, cost in proposal["value"].items():
            if not cost >= 0:
                msg = f"AIGridApp.gpu_cost_per_hour[{resource!r}] must be >= 0, got {cost!r}"
                raise TraitError(msg)
        return proposal["value"]

    @validate("profile_explore")
    def _check_probability(self, proposal):
        if not 0 <= proposal["value"] <= 1:
            msg = f"AIGridApp.profile_explore must be in [0, 1], got {proposal['value']!r}"
            raise TraitError(msg)
        return proposal["value"]

    @validate(
        "local_nodes",
        "tick_interval_s",
        "dataset_verify_interval_s",
        "profile_min_samples",
        "profile_half_life",
    )
    def _check_positive(self, proposal):
        if proposal["value"] <= 0:
            msg = f"AIGridApp.{proposal['trait'].name} must be positive, got {proposal['value']!r}"
            raise TraitError(msg)
        return proposal["value"]

    def initialize_settings(self) -> None:
        state = Path(self.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        # One master per state directory (its logs and nodes' scratch), as per database.
        self._state_lock = exclusive_lock(state / "master.lock", "state directory")
        try:
            executor = self._executor(state)
        except BaseException:
            self._state_lock.close()
            self._state_lock = None
            raise
        try:
            policy = load_policy(self.policy, **self.policy_options)
        except (ValueError, TypeError) as e:
            msg = f"c.AIGridApp.policy / policy_options: {e}"
            raise TraitError(msg) from e
        for path in events.schema_paths():
            self.serverapp.event_logger.register_event_schema(path)
        self.master = Master(
            Store(self.db_path),
            executor,
            policy,
            state_dir=state,
            emit=self._emit,
            tick_s=self.tick_interval_s,
            stop_grace_s=self.stop_grace_s,
            allow_uncatalogued_images=self.allow_uncatalogued_images,
            checkpoint_timeout_s=self.checkpoint_timeout_s,
            migration_prestart=self.migration_prestart,
            restart_backoff_s=self.restart_backoff_s,
            dataset_root=self.dataset_root,
            dataset_quota_bytes=self.dataset_quota_bytes,
            dataset_verify_interval_s=self.dataset_verify_interval_s,
            gpu_cost_per_hour=self.gpu_cost_per_hour,
            profile_options={
                "min_samples": self.profile_min_samples,
                "explore": self.profile_explore,
                "half_life": self.profile_half_life,
            },
        )
        self.settings.update(aigrid_master=self.master, aigrid_admin_users=set(self.admin_users))
        simulated = sum(g.simulated for n in self.master.nodes.all for g in n.gpus)
        gpus = sum(len(n.gpus) for n in self.master.nodes.all)
        self.log.info(
            "AI Grid master: %s executor, %d node(s), %d GPU(s)%s, policy %s, state in %s",
            self.executor,
            len(self.master.nodes.all),
            gpus,
            f" ({simulated} SIMULATED: CPU slots, no real GPU)" if simulated else "",
            self.policy,
            state,
        )
        if self.executor == "local" and self.admin_users:
            self.log.warning(
                "AI Grid: the local executor runs every user's jobs as this server's OS user, "
                "so they can read each other's files; share a server with the docker executor"
            )

    def _executor(self, state: Path):
        if self.executor == "docker":
            try:
                from .executors.docker import DockerExecutor
            except ImportError as e:
                msg = f"executor 'docker' needs the docker SDK: pip install docker ({e})"
                raise TraitError(msg) from e
            try:
                return DockerExecutor(
                    state,
                    base_url=self.docker_base_url,
                    simulated_gpus=self.simulated_gpus,
                    user=self.docker_user,
                    network=self.docker_network,
                    pids_limit=self.docker_pids_limit,
                )
            except ExecutorError as e:
                field = "docker_user" if "uid:gid" in str(e) else "docker_base_url"
                msg = f"c.AIGridApp.{field}: {e}"
                raise TraitError(msg) from e
        if self.executor == "ray":
            from .executors.ray import RayExecutor

            try:
                return RayExecutor(state, address=self.ray_address)
            except ExecutorError as e:
                msg = f"c.AIGridApp.ray_address: {e}"
                raise TraitError(msg) from e
        try:
            return LocalExecutor(
                state,
                nodes=self.local_nodes,
                simulated_gpus=self.simulated_gpus,
                cpus_per_node=self.local_cpus_per_node,
                memory_mb_per_node=self.local_memory_mb_per_node,
                gpu_models=self.gpu_models,
            )
        except ValueError as e:
            msg = f"c.AIGridApp.{'gpu_models' if 'gpu_models' in str(e) else 'local_nodes'}: {e}"
            raise TraitError(msg) from e

    def _emit(self, schema_id: str, data: dict) -> None:
        # Every user of the server may listen to its event bus: a job's name, owner and
        # failure reason (its stderr) stay with its owner, who reads them over REST; so do the
        # reasons and errors of its checkpoints and migrations.
        if schema_id != events.JOB_PLACEMENT:
            data = public_event(data)
        self.serverapp.event_logger.emit(schema_id=schema_id, data=data)

    def initialize_handlers(self) -> None:
        self.handlers.extend(ROUTES)

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        if getattr(self, "master", None) is not None:  # None: its settings failed to load
            await self.master.start()

    async def stop_extension(self) -> None:
        if getattr(self, "master", None) is not None:
            await self.master.stop()
        lock = getattr(self, "_state_lock", None)
        if lock is not None:
            lock.close()
