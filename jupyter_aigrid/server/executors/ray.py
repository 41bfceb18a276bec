"""Replicas as Ray actors: our policies decide where each replica goes, Ray carries it out.

``c.AIGridApp.executor = "ray"`` and ``c.AIGridApp.ray_address`` (``auto``: the cluster this
machine belongs to; or ``<ip>:<port>`` of its head). Then:

- **Inventory.** Every live Ray node with CPUs or GPUs is a node named ``ray-<first 12 hex
  of its node id>``, with its CPUs, memory and labels, its GPUs (the NVML ones a probe task
  finds there, or, on a node whose ``GPU`` resource has no NVML device behind it, that many
  simulated GPUs), and its own scratch folder (``$AIGRID_NODE_SCRATCH`` where its Ray node
  was started, else ``<tmp>/aigrid``). The executor looks at which nodes are alive every
  few seconds (:meth:`RayExecutor.refresh`): nodes that join are probed and added, nodes
  that leave are dropped, and the master takes the change in.
- **Gangs.** Before a gang starts, a placement group reserves one bundle per rank on the
  node our policy chose (:mod:`.ray_gangs`). Each replica is a named, detached actor in its
  rank's bundle (``aigrid-<cluster id>/<replica id>``, namespace ``aigrid``; :mod:`.ray_node`)
  that runs the job's code or command as a subprocess with torchrun's environment. A gang's
  actors are all asked to start at once; :meth:`RayExecutor.started` says when each has.
- **Logs and exits.** The actor keeps the subprocess's stdout and stderr on its node; the
  master pulls them into the rank's log files as they grow, and records the exit code in the
  rank's exit file. A replica whose actor died (its node is gone) ends lost
  (``exit_code=None``): the gang goes through the failure-recovery path.
- **Files.** Checkpoints, their control files and dataset copies stay on the nodes; the
  master reaches them through Ray only (:class:`.ray_files.RayFiles`: an agent per node,
  copies pulled node to node through the object store), so no filesystem is shared.
- **Restarts.** Actors are detached and named, so a restarted master finds them again
  (:meth:`RayExecutor.reconcile`) and goes on pulling their logs from where its files end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...safefs import write_atomic
from ..inventory import simulated_gpus
from ..model import Gpu, LaunchRequest, Node, ReplicaExit, ReplicaHandle, Slot
from .base import Capabilities, Executor, ExecutorError
from .ray_files import RayFiles
from .ray_gangs import PLACEMENT_TIMEOUT_S, GangReservations, gang_name
from .ray_node import ReplicaActor, free_port_on_node, node_name, probe_node

log = logging.getLogger(__name__)

NAMESPACE = "aigrid"
#: Most bytes of one log stream pulled per replica and poll.
LOG_PULL_BYTES = 1 << 20
#: Seconds between two looks at which Ray nodes are alive.
REFRESH_EVERY_S = 2.0


@dataclass
class _Live:
    handle: ReplicaHandle
    actor: Any
    stdout_path: str
    stderr_path: str
    gang: str
    rank: int
    starting: Any = None  # the ObjectRef of actor.start() until it answered
    waiting: Any = None  # then the ObjectRef of actor.wait()
    out_at: int = 0
    err_at: int = 0
    pulling: Any = None  # the ObjectRef of the logs() call in flight


class RayExecutor(Executor):
    """The master's executor on a Ray cluster (see the module's docstring)."""

    name = "ray"
    capabilities = Capabilities(
        slow_starts=True, gang_reservation=True, remote_node_files=True, changing_inventory=True
    )

    def __init__(self, root: str | Path, address: str = "auto") -> None:
        try:
            import ray
        except ImportError as e:
            msg = f"the ray executor needs Ray: pip install ray ({e})"
            raise ExecutorError(msg) from e
        super().__init__()
        self._ray = ray
        self.root = Path(root)
        self.address = address
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            if not ray.is_initialized():
                ray.init(
                    address=address,
                    namespace=NAMESPACE,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    include_dashboard=False,
                )
        except Exception as e:
            msg = f"could not connect to the Ray cluster at {address!r}: {e}"
            raise ExecutorError(msg) from e
        self._actor_class = ray.remote(max_restarts=0, max_concurrency=4)(ReplicaActor)
        self._probe = ray.remote(num_cpus=0)(probe_node)
        self._port = ray.remote(num_cpus=0)(free_port_on_node)
        self._ids: dict[str, str] = {}  # node name -> Ray node id (of the nodes alive)
        self._ips: dict[str, str] = {}
        #: Work on the nodes' files (checkpoints, datasets) through Ray: no shared filesystem.
        self.node_files = RayFiles(ray, self._ids)
        self._nodes: dict[str, Node] = {}
        self._refreshed = 0.0
        self.refresh(force=True)
        if not self._nodes:
            msg = f"the Ray cluster at {address!r} has no node with CPUs or GPUs"
            raise ExecutorError(msg)
        self._live: dict[str, _Live] = {}
        self._exits: list[ReplicaExit] = []
        self._started: list[str] = []
        self.gangs = GangReservations(self._ids)
        self._placed: dict[str, dict[int, str]] = {}  # gang name -> rank -> node it ran on

    # -- inventory ----------------------------------------------------------------------------

    def _on(self, node: str) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(node_id=self._ids[node], soft=False)

    def refresh(self, force: bool = False) -> bool:
        """Look at which Ray nodes are alive (at most every REFRESH_EVERY_S unless
        ``force``): nodes that left are dropped, new ones probed and added. True if the
        inventory changed."""
        now = time.monotonic()
        if not force and now - self._refreshed < REFRESH_EVERY_S:
            return False
        self._refreshed = now
        alive = {}
        for info in self._ray.nodes():
            resources = info.get("Resources") or {}
            if info.get("Alive") and (resources.get("GPU") or resources.get("CPU")):
                alive[node_name(info["NodeID"])] = info  # a head that runs nothing is not
        gone = set(self._nodes) - set(alive)
        for name in gone:
            log.warning("AI Grid: Ray node %s (%s) left the cluster", name, self._ids.get(name))
            del self._nodes[name]
            self._ids.pop(name, None)
            self._ips.pop(name, None)
            self.node_files.forget(name)
        new = sorted(set(alive) - set(self._nodes))
        for name in new:
            node = self._node(name, alive[name])
            if node is not None:
                self._nodes[name] = node
        return bool(gone or new)

    def _node(self, name: str, info: dict[str, Any]) -> Node | None:
        """A new Ray node, probed there; None if it did not answer (tried again later)."""
        resources = info.get("Resources") or {}
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        self._ids[name] = info["NodeID"]
        probe = self._probe.options(scheduling_strategy=self._on(name)).remote()
        try:
            found = self._ray.get(probe, timeout=PLACEMENT_TIMEOUT_S)
        except Exception as e:
            log.warning("AI Grid: could not probe Ray node %s: %s", info["NodeID"], e)
            del self._ids[name]
            return None
        self._ips[name] = found["ip"]
        real = [Gpu(**g) for g in found["gpus"]][:gpus]
        labels = tuple(sorted((str(k), str(v)) for k, v in (info.get("Labels") or {}).items()))
        return Node(
            name=name,
            gpus=tuple(real) if real else tuple(simulated_gpus(name, gpus)),
            cpus=cpus,
            memory_mb=int(resources.get("memory", 0) // 2**20),
            scratch=found["scratch"],
            labels=labels,
        )

    def nodes(self) -> list[Node]:
        return [self._nodes[name] for name in sorted(self._nodes)]

    def rendezvous(self, node: str) -> tuple[str, int]:
        """Rank 0's node's address, and a port free there (asked on that node)."""
        if node not in self._ids:
            msg = f"node {node} is not in the Ray cluster"
            raise ExecutorError(msg)
        ref = self._port.options(scheduling_strategy=self._on(node)).remote()
        try:
            ip, port = self._ray.get(ref, timeout=PLACEMENT_TIMEOUT_S)
        except Exception as e:
            msg = f"could not reach node {node}: {e}"
            raise ExecutorError(msg) from e
        return ip, int(port)

    # -- gangs ----------------------------------------------------------------------------------

    @property
    def _gangs(self) -> dict[str, Any]:
        """Gang name -> placement group, of the gangs that run."""
        return self.gangs.groups

    def prepare_gang(self, job_key: str, attempt: int, slots: tuple[Slot, ...]) -> None:
        """Reserve the gang's bundles, each on the node the policy chose for its rank, all at
        once (a placement group); ExecutorError if Ray cannot, or puts one elsewhere."""
        self.gangs.reserve(gang_name(job_key, attempt), slots)

    # -- replicas -------------------------------------------------------------------------------

    def launch(
        self, request: LaunchRequest, code: str | None, args: list[str], command: list[str] | None
    ) -> ReplicaHandle:
        """Create the replica's actor in its bundle and ask it to start the process; the
        start completes in the background (:meth:`started`), so a gang's actors start at
        once rather than one after another."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        gang = gang_name(request.job_key or request.job_id, request.attempt)
        pg, index, bundle = self.gangs.bundle(gang, request.rank)
        node = self._nodes.get(request.node)
        if node is None:
            msg = f"node {request.node} is not in the Ray cluster"
            raise ExecutorError(msg)
        job_dir = Path(node.scratch) / "jobs" / (request.job_key or request.job_id)
        script = None if code is None else (str(job_dir), request.attempt, code)
        argv = list(args) if code is not None else list(command or [])
        actor = self._actor_class.options(
            name=self._actor_name(request),
            namespace=NAMESPACE,
            lifetime="detached",
            num_cpus=bundle["CPU"],
            num_gpus=bundle.get("GPU", 0.0),
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=index
            ),
        ).remote()
        workdir = request.workdir or str(job_dir / f"rank-{request.rank}")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **request.env}
        env["AIGRID_SCRATCH"] = str(job_dir)
        logs = str(job_dir / "logs" / f"{request.attempt}-{request.rank}")
        handle = ReplicaHandle(request.replica_id, None, None, request.exit_path)
        for path in (request.stdout_path, request.stderr_path, request.exit_path):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(request.exit_path).unlink(missing_ok=True)
        self._live[request.replica_id] = _Live(
            handle,
            actor,
            request.stdout_path,
            request.stderr_path,
            gang,
            request.rank,
            starting=actor.start.remote(argv, env, workdir, logs, script),
        )
        return handle

    @staticmethod
    def _actor_name(replica: LaunchRequest | ReplicaHandle) -> str:
        """``aigrid-<cluster id>/<replica id>``: unique across masters sharing a Ray cluster
        (the cluster id is the folder above the job's in the master's exit path)."""
        return f"aigrid-{Path(replica.exit_path).parents[2].name}/{replica.replica_id}"

    def placed(self, job_key: str, attempt: int) -> dict[int, str]:
        """Rank -> the node its actor reported running on (what Ray really did)."""
        return dict(self._placed.get(gang_name(job_key, attempt), {}))

    def started(self) -> list[str]:
        """Replicas whose process has started since the last call. One that could not start
        ends with code 125, the reason in its stderr log."""
        starting = [live for live in self._live.values() if live.starting is not None]
        if starting:
            ready, _ = self._ray.wait(
                [live.starting for live in starting], num_returns=len(starting), timeout=0
            )
            done = set(ready)
            for live in starting:
                if live.starting in done:
                    self._start_answered(live)
        out, self._started = self._started, []
        return out

    def _start_answered(self, live: _Live) -> None:
        ref, live.starting = live.starting, None
        try:
            started = self._ray.get(ref)
        except Exception as e:
            with open(live.stderr_path, "ab") as f:
                f.write(f"could not start rank {live.rank}: {e}\n".encode())
            self._end(live, 125)
            return
        self._placed.setdefault(live.gang, {})[live.rank] = node_name(started["node_id"])
        live.waiting = live.actor.wait.remote()
        self._started.append(live.handle.replica_id)

    def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        live = self._live.get(handle.replica_id)
        if live is not None:
            live.actor.stop.remote(grace_s)

    def _pull_logs(self, live: _Live, block: bool) -> None:
        """Append what the replica's streams gained to its log files on the master; with
        ``block`` (its process has ended), until nothing more comes."""
        stale = live.pulling is not None  # asked before the end: empty proves nothing
        while True:
            if live.pulling is None:
                live.pulling = live.actor.logs.remote(live.out_at, live.err_at, LOG_PULL_BYTES)
            ready, _ = self._ray.wait([live.pulling], timeout=10.0 if block else 0)
            if not ready:
                return
            ref, live.pulling = live.pulling, None
            try:
                out, err = self._ray.get(ref)
            except Exception:  # the actor is gone: what it had not handed over is lost
                return
            for data, path in ((out, live.stdout_path), (err, live.stderr_path)):
                if data:
                    with open(path, "ab") as f:
                        f.write(data)
            live.out_at += len(out)
            live.err_at += len(err)
            if not block or not (out or err or stale):
                return
            stale = False

    def poll(self) -> list[ReplicaExit]:
        self.refresh()
        for replica_id, live in list(self._live.items()):
            if live.waiting is None:
                continue  # not started yet (started() says when)
            ready, _ = self._ray.wait([live.waiting], timeout=0)
            if not ready:
                self._pull_logs(live, block=False)
                continue
            try:
                code: int | None = int(self._ray.get(live.waiting))
            except Exception as e:  # the actor (or its node) died
                log.warning("AI Grid: replica %s was lost: %s", replica_id, e)
                self.refresh(force=True)  # its node may be gone: the master asks next
                code = None
            else:
                self._pull_logs(live, block=True)
            self._end(live, code)
        exits, self._exits = self._exits, []
        return exits

    def _end(self, live: _Live, code: int | None) -> None:
        if code is not None:
            write_atomic(Path(live.handle.exit_path), str(code).encode())
        with contextlib.suppress(Exception):
            self._ray.kill(live.actor)
        del self._live[live.handle.replica_id]
        self._exits.append(ReplicaExit(live.handle.replica_id, code))
        # A gang's placement group goes once none of its replicas runs.
        if all(other.gang != live.gang for other in self._live.values()):
            self.gangs.release(live.gang)

    def reconcile(self, known: list[ReplicaHandle]) -> list[str]:
        """Adopt the replicas whose actors still live (found by name); the others are
        reported by the next poll, with the exit code the master recorded, if any."""
        adopted = []
        for handle in known:
            if handle.replica_id in self._live:
                adopted.append(handle.replica_id)
                continue
            try:
                actor = self._ray.get_actor(self._actor_name(handle), namespace=NAMESPACE)
            except ValueError:
                actor = None
            if actor is None:
                code = None
                with contextlib.suppress(OSError, ValueError):
                    code = int(Path(handle.exit_path).read_text().strip())
                self._exits.append(ReplicaExit(handle.replica_id, code, never_started=False))
                continue
            job_id, attempt, rank = handle.replica_id.rsplit(".", 2)
            exit_path = Path(handle.exit_path)
            out, err = exit_path.with_suffix(".stdout"), exit_path.with_suffix(".stderr")
            # The master keeps <state>/jobs/<cluster id>/<job>/<attempt>/rank-<r>.exit; the
            # job's key is <cluster id>-<job> (JobFiles.key).
            gang = gang_name(f"{exit_path.parents[2].name}-{job_id}", int(attempt))
            self.gangs.adopt(gang)
            self._live[handle.replica_id] = _Live(
                handle,
                actor,
                str(out),
                str(err),
                gang,
                int(rank),
                waiting=actor.wait.remote(),
                out_at=out.stat().st_size if out.exists() else 0,
                err_at=err.stat().st_size if err.exists() else 0,
            )
            adopted.append(handle.replica_id)
            self._started.append(handle.replica_id)  # if the master had not heard yet
        return adopted

    def close(self) -> None:
        """Replicas keep running (a restarted master adopts them); we leave the cluster."""
        self.node_files.close()
        with contextlib.suppress(Exception):
            self._ray.shutdown()
