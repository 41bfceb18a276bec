"""The Executor protocol: the mechanism that starts, stops and watches replicas.

Policies decide; executors carry out. An executor never chooses where a replica goes: the
master hands it a :class:`LaunchRequest` naming the node. Every method is synchronous and
quick; slow work (a grace period, a container pull) is tracked and finished in ``poll``.
"""

from __future__ import annotations

from typing import Protocol

from ..model import LaunchRequest, Node, ReplicaExit, ReplicaHandle


class ExecutorError(RuntimeError):
    """An executor could not do what was asked (a launch failed, a node is gone)."""


class Executor(Protocol):
    #: The name used in config (``c.AIGridApp.executor``) and in the inventory.
    name: str

    def nodes(self) -> list[Node]:
        """The inventory: every node with its GPUs, CPUs, memory and scratch directory."""
        ...

    def rendezvous(self, node: str) -> tuple[str, int]:
        """An address and a free port on ``node`` for rank 0's process group store."""
        ...

    def launch(
        self, request: LaunchRequest, code: str | None, args: list[str], command: list[str] | None
    ) -> ReplicaHandle:
        """Start one replica: ``code`` (Python source, run with ``args``) or ``command``."""
        ...

    def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        """Ask a replica to stop now (SIGTERM or equivalent), and force it after ``grace_s``."""
        ...

    def poll(self) -> list[ReplicaExit]:
        """Replicas that ended since the last poll, with their exit codes."""
        ...

    # Optional: an executor whose launch() only begins a slow start (creating a container)
    # also has ``started() -> list[str]``: the replicas whose start has completed since the
    # last call, reported before any exit of theirs. The master keeps such a gang
    # ``starting`` until every replica has started. A start that fails is an exit (code 125).
    #
    # Optional: ``prepare_gang(job_key, attempt, slots)``, called before a gang's first
    # launch(): reserve the whole gang where the slots say (ExecutorError if it cannot).
    #
    # Optional: ``node_files``, a :class:`~.nodefiles.NodeFiles` through which the master
    # reaches the nodes' own files (checkpoints, control files, datasets) when they are not
    # on its machine (Ray). Without it, the nodes' scratch folders are read here.
    #
    # Optional: ``refresh(force=False) -> bool``, for an inventory that changes (nodes join
    # and leave): called from ``poll()`` by the executor itself; the master takes in what
    # ``nodes()`` says whenever it handles exits, and a node that left holds nothing.
    #
    # Optional: ``prestarts = True`` says the master may start a migrating gang's replicas
    # at the destination while the checkpoint is still written (they wait for a go file in
    # their checkpoint folder), which needs replicas that start at once and see that folder.

    def reconcile(self, known: list[ReplicaHandle]) -> list[str]:
        """After a master restart: adopt the replicas that still run, return their ids.

        The ones that ended meanwhile are reported by the next :meth:`poll`, with their exit
        code when it was recorded, else as lost (``exit_code=None``); those that were never
        started (the master died while launching them) with ``never_started=True``. A lost
        replica's leftover processes are killed: nothing may run beside its retry.
        """
        ...

    def close(self) -> None:
        """Release resources; replicas keep running (a restarted master re-adopts them)."""
        ...
