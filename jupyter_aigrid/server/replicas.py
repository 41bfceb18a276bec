"""What a replica is given and what it leaves behind: its environment, logs and results."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..safefs import fsync_dir, open_inside, regular_files_inside, write_atomic
from .model import Node, Placement, Slot
from .records import Job
from .templating import choose, rank_env

STDERR_TAIL_LINES = 20
#: Server variables that must never reach job processes.
_SECRETS = frozenset({"JUPYTER_TOKEN", "JPY_API_TOKEN", "JUPYTERHUB_API_TOKEN", "AIGRID_TOKEN"})


def is_secret(name: str) -> bool:
    upper = name.upper()
    return upper in _SECRETS or upper.startswith("JUPYTERHUB_")


class JobFiles:
    """Where the master keeps each attempt's per-rank logs, exit codes and reported metrics."""

    def __init__(self, state_dir: Path, cluster_id: str) -> None:
        self.root = state_dir / "jobs" / cluster_id
        self.cluster_id = cluster_id

    def key(self, job_id: str) -> str:
        """A job's name on disk everywhere (nodes' scratch and checkpoints too)."""
        return f"{self.cluster_id}-{job_id}"

    def attempt_dir(self, job_id: str, attempt: int) -> Path:
        return self.root / job_id / str(attempt)

    def log(self, job_id: str, attempt: int, rank: int, stream: str) -> Path:
        """``stream`` is stdout, stderr or exit (the status the local wrapper records)."""
        return self.attempt_dir(job_id, attempt) / f"rank-{rank}.{stream}"

    def results(self, job_id: str, attempt: int) -> Path:
        return self.attempt_dir(job_id, attempt) / "results"

    def inputs(self, job_id: str) -> Path:
        """The values pushed with the job, one ``<name>.pkl`` each, shared by every attempt."""
        return self.root / job_id / "inputs"

    def write_inputs(self, job_id: str, values: dict[str, bytes]) -> None:
        """Store pushed values durably (before the job is acknowledged)."""
        folder = self.inputs(job_id)
        # An id handed out again after a crash must not inherit anything of an older job
        # (values, logs, results, errors).
        shutil.rmtree(self.root / job_id, ignore_errors=True)
        if not values:
            return
        folder.mkdir(parents=True)
        for name, data in values.items():
            write_atomic(folder / f"{name}.pkl", data)
        fsync_dir(folder.parent)

    def outputs(self, job_id: str, attempt: int) -> Path:
        """Rank 0's pulled values, ``<name>.pkl`` each, written by the runner on success."""
        return self.results(job_id, attempt) / "outputs"

    def output_sizes(self, job_id: str, attempt: int) -> list[dict[str, Any]]:
        """Rank 0's pulled values (regular ``<name>.pkl`` files, reached without links)."""
        found = regular_files_inside(self.outputs(job_id, attempt), self.results(job_id, attempt))
        return [{"name": n[:-4], "bytes": size} for n, size in found if n.endswith(".pkl")]

    def errors(self, job_id: str, attempt: int, replicas: int) -> list[dict[str, Any]]:
        """The uncaught exceptions the runner recorded, earliest first."""
        out = []
        for rank in range(replicas):
            path = self.results(job_id, attempt) / f"rank-{rank}.error.json"
            try:
                with open_inside(path, self.results(job_id, attempt)) as f:
                    data = json.loads(f.read().decode("utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                out.append({**data, "rank": rank})

        def order(error: dict[str, Any]) -> tuple[float, int]:
            when = error.get("time")
            return (when if isinstance(when, (int, float)) else 0.0, error["rank"])

        return sorted(out, key=order)

    def reports(self, job_id: str, attempt: int, rank: int) -> list[dict[str, Any]]:
        """What a rank reported with ``runtime.report()``; a torn or odd line is skipped."""
        try:
            folder = self.results(job_id, attempt)
            with open_inside(folder / f"rank-{rank}.jsonl", folder) as f:
                text = f.read().decode("utf-8", errors="replace")
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

    def stderr_tail(
        self,
        job_id: str,
        attempt: int,
        rank: int,
        lines: int = STDERR_TAIL_LINES,
        max_bytes: int = 16384,
    ) -> str:
        try:
            path = self.log(job_id, attempt, rank, "stderr")
            with open_inside(path, path.parent) as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_bytes))
                data = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(data.splitlines()[-lines:])


def replica_env(
    row: Job,
    placement: Placement,
    slot: Slot,
    node: Node,
    rendezvous: tuple[str, int],
    results: Path,
    job_key: str,
    inputs: Path,
    host_env: bool = True,
) -> dict[str, str]:
    """torchrun's environment plus ours, over the server's own minus its secrets (or, for
    replicas that do not run on this host's environment, such as containers, over nothing)."""
    spec, job_id = row.spec, row.id
    gpus = [g for g in node.gpus if g.index in slot.gpus]
    simulated = any(g.simulated for g in gpus)
    env = {k: v for k, v in os.environ.items() if not is_secret(k)} if host_env else {}
    env.update(spec.get("env", {}))
    env.update(
        {
            "RANK": str(slot.rank),
            "LOCAL_RANK": str(slot.local_rank),
            "WORLD_SIZE": str(len(placement.slots)),
            "LOCAL_WORLD_SIZE": str(sum(1 for s in placement.slots if s.node == slot.node)),
            "GROUP_RANK": str(placement.nodes.index(slot.node)),
            "MASTER_ADDR": rendezvous[0],
            "MASTER_PORT": str(rendezvous[1]),
            # Simulated GPUs are CPU slots: hide every real device from the job.
            "CUDA_VISIBLE_DEVICES": "" if simulated else ",".join(g.uuid for g in gpus),
            "AIGRID_GPUS": ",".join(str(g.index) for g in gpus),
            "AIGRID_SIMULATED_GPUS": "1" if simulated else "0",
            "AIGRID_JOB_ID": job_id,
            "AIGRID_ATTEMPT": str(row.attempt),
            "AIGRID_NODE": slot.node,
            "AIGRID_CHECKPOINT_DIR": str(Path(node.scratch) / "checkpoints" / job_key),
            "AIGRID_DATA": str(Path(node.scratch) / "data"),
            "AIGRID_CHECKPOINT_INTERVAL_S": str(spec.get("checkpoint_interval_s") or ""),
            "AIGRID_RESULT_DIR": str(results),
            "AIGRID_INPUTS_DIR": str(inputs),
            "AIGRID_OUTPUTS": ",".join(spec.get("outputs", [])),
            "PYTHONUNBUFFERED": "1",
        }
    )
    # The template's own variables (TF_CONFIG, Open MPI's, ...) for this rank.
    spec = {**spec, "template": spec.get("template") or choose(spec)}
    hostfile = results.parent / "hostfile"
    env.update(
        rank_env(
            spec,
            placement,
            slot.rank,
            rendezvous,
            {n: rendezvous[0] for n in placement.nodes},
            job_key,
            hostfile=str(hostfile),
        )
    )
    return env
