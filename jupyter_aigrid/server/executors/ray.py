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
- **Gangs.** Before a gang starts, a placement group reserves one bundle per rank, each pinned
  to the node our policy chose (the ``ray.io/node-id`` label selector); the group is checked
  to have landed exactly there. Each replica is a named, detached actor in its rank's bundle
  (``aigrid-<cluster id>/<replica id>``, namespace ``aigrid``) that runs the job's code or
  command as a subprocess with torchrun's environment; ``MASTER_ADDR`` is rank 0's node's
  address. A gang's actors are all asked to start at once; :meth:`RayExecutor.started`
  says when each has.
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
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...durable import write_atomic
from ..inventory import simulated_gpus
from ..model import Gpu, LaunchRequest, Node, ReplicaExit, ReplicaHandle, Slot
from .base import Capabilities, Executor, ExecutorError
from .ray_files import RayFiles

log = logging.getLogger(__name__)

NAMESPACE = "aigrid"
#: How long a gang's placement group may take to be reserved before its start fails.
PLACEMENT_TIMEOUT_S = 60.0
#: Most bytes of one log stream pulled per replica and poll.
LOG_PULL_BYTES = 1 << 20
#: A node's scratch folder, from its own environment (set it where the Ray node starts).
SCRATCH_ENV = "AIGRID_NODE_SCRATCH"
#: Seconds between two looks at which Ray nodes are alive.
REFRESH_EVERY_S = 2.0


def _node_name(node_id: str) -> str:
    return f"ray-{node_id[:12]}"


class _Replica:
    """The actor that runs one replica's process on its node (Ray makes it a remote class)."""

    def __init__(self) -> None:
        import threading

        self.popen: subprocess.Popen | None = None
        self.out = self.err = ""
        self.code: int | None = None
        self.stopped = False
        self.lock = threading.Lock()

    def start(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        logs: str,
        script: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """Start the process; ``script`` (path, code) is written on this node first: the
        job's code travels with the call, not through a shared filesystem."""
        import sys

        import ray

        if script is not None:
            path, code = Path(script[0]), script[1]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(code, encoding="utf-8")
            tmp.replace(path)
            argv = [sys.executable, "-u", "-m", "jupyter_aigrid.runner", str(path), *argv]
        Path(cwd).mkdir(parents=True, exist_ok=True)
        Path(logs).mkdir(parents=True, exist_ok=True)
        self.out, self.err = str(Path(logs) / "stdout"), str(Path(logs) / "stderr")
        node_id = ray.get_runtime_context().get_node_id()
        with self.lock, open(self.out, "wb") as out, open(self.err, "wb") as err:
            if self.stopped:  # stopped before it started: it never does
                return {"pid": None, "node_id": node_id}
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        return {"pid": self.popen.pid, "node_id": node_id}

    def wait(self) -> int:
        """Block until the process ends; its exit code (128 + n when killed by signal n)."""
        if self.popen is None:  # stopped before it started
            return 128 + signal.SIGTERM
        code = self.popen.wait()
        self.code = 128 - code if code < 0 else code
        with contextlib.suppress(OSError):  # what it forked dies with it
            os.killpg(self.popen.pid, signal.SIGKILL)
        return self.code

    def logs(self, out_from: int, err_from: int, most: int) -> tuple[bytes, bytes]:
        def read(path: str, start: int) -> bytes:
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    return f.read(most)
            except OSError:
                return b""

        return read(self.out, out_from), read(self.err, err_from)

    def stop(self, grace_s: float) -> None:
        """SIGTERM the process group now, SIGKILL after ``grace_s`` (unless it ended)."""
        with self.lock:
            self.stopped = True
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(OSError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.popen.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.popen.pid, signal.SIGKILL)


def _probe() -> dict[str, Any]:
    """What a node has that Ray does not say: its address, its NVML GPUs, and its scratch
    folder (``$AIGRID_NODE_SCRATCH`` in the node's environment, else ``<tmp>/aigrid``)."""
    import tempfile

    import ray

    from ..inventory import nvml_gpus

    scratch = os.environ.get(SCRATCH_ENV) or os.path.join(tempfile.gettempdir(), "aigrid")
    return {
        "ip": ray.util.get_node_ip_address(),
        "gpus": [vars(g) for g in nvml_gpus()],
        "scratch": os.path.abspath(scratch),
    }


def _free_port() -> tuple[str, int]:
    import ray

    from .local import free_port

    ip = ray.util.get_node_ip_address()
    return ip, free_port(ip)


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
        self._actor_class = ray.remote(max_restarts=0, max_concurrency=4)(_Replica)
        self._probe = ray.remote(num_cpus=0)(_probe)
        self._port = ray.remote(num_cpus=0)(_free_port)
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
        self._gangs: dict[str, Any] = {}  # gang name -> placement group
        self._bundles: dict[str, dict[int, tuple[int, dict[str, float]]]] = {}  # rank -> bundle
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
                alive[_node_name(info["NodeID"])] = info  # a head that runs nothing is not
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

    @staticmethod
    def _gang(job_key: str, attempt: int) -> str:
        return f"aigrid-{job_key}-{attempt}"

    def prepare_gang(self, job_key: str, attempt: int, slots: tuple[Slot, ...]) -> None:
        """Reserve the gang's bundles, each on the node the policy chose for its rank, all at
        once (a placement group); ExecutorError if Ray cannot, or puts one elsewhere."""
        from ray.util.placement_group import placement_group, placement_group_table

        name = self._gang(job_key, attempt)
        if name in self._gangs:
            return
        unknown = sorted({s.node for s in slots} - set(self._ids))
        if unknown:
            msg = f"no Ray node named {', '.join(unknown)}"
            raise ExecutorError(msg)
        bundles = [self._bundle(len(s.gpus)) for s in slots]
        pg = placement_group(
            bundles,
            strategy="PACK",
            name=name,
            lifetime="detached",
            bundle_label_selector=[{"ray.io/node-id": self._ids[s.node]} for s in slots],
        )
        if not pg.wait(timeout_seconds=PLACEMENT_TIMEOUT_S):
            self._remove_gang(pg)
            msg = f"Ray could not reserve the gang's resources within {PLACEMENT_TIMEOUT_S:g} s"
            raise ExecutorError(msg)
        landed = placement_group_table(pg).get("bundles_to_node_id") or {}
        wanted = {i: self._ids[s.node] for i, s in enumerate(slots)}
        if {int(i): n for i, n in landed.items()} != wanted:
            self._remove_gang(pg)
            msg = f"Ray placed the gang's bundles elsewhere than asked: {landed} for {wanted}"
            raise ExecutorError(msg)
        self._gangs[name] = pg
        self._bundles[name] = {s.rank: (i, bundles[i]) for i, s in enumerate(slots)}

    @staticmethod
    def _bundle(gpus: int) -> dict[str, float]:
        return {"GPU": float(gpus), "CPU": 0.01} if gpus else {"CPU": 1.0}

    def _remove_gang(self, pg: Any) -> None:
        from ray.util.placement_group import remove_placement_group

        with contextlib.suppress(Exception):
            remove_placement_group(pg)

    # -- replicas -------------------------------------------------------------------------------

    def launch(
        self, request: LaunchRequest, code: str | None, args: list[str], command: list[str] | None
    ) -> ReplicaHandle:
        """Create the replica's actor in its bundle and ask it to start the process; the
        start completes in the background (:meth:`started`), so a gang's actors start at
        once rather than one after another."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        gang = self._gang(request.job_key or request.job_id, request.attempt)
        pg = self._gangs.get(gang)
        if pg is None:
            msg = f"rank {request.rank}'s gang has no placement group (prepare_gang first)"
            raise ExecutorError(msg)
        node = self._nodes.get(request.node)
        if node is None:
            msg = f"node {request.node} is not in the Ray cluster"
            raise ExecutorError(msg)
        job_dir = Path(node.scratch) / "jobs" / (request.job_key or request.job_id)
        script = None if code is None else (str(job_dir / f"main-{request.attempt}.py"), code)
        argv = list(args) if code is not None else list(command or [])
        index, bundle = self._bundles[gang][request.rank]
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
        return dict(self._placed.get(self._gang(job_key, attempt), {}))

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
        self._placed.setdefault(live.gang, {})[live.rank] = _node_name(started["node_id"])
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
        self._release(live.gang)

    def _release(self, gang: str) -> None:
        """A gang's placement group goes once none of its replicas runs."""
        if any(live.gang == gang for live in self._live.values()):
            return
        pg = self._gangs.pop(gang, None)
        self._bundles.pop(gang, None)
        if pg is not None:
            self._remove_gang(pg)

    def reconcile(self, known: list[ReplicaHandle]) -> list[str]:
        """Adopt the replicas whose actors still live (found by name); the others are
        reported by the next poll, with the exit code the master recorded, if any."""
        from ray.util.placement_group import get_placement_group

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
            gang = self._gang(f"{exit_path.parents[2].name}-{job_id}", int(attempt))
            with contextlib.suppress(ValueError):
                self._gangs.setdefault(gang, get_placement_group(gang))
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
