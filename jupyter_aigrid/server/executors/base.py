"""The executor contract: the mechanism that starts, stops and watches replicas.

Policies decide; executors carry out. An executor never chooses where a replica goes: the
master hands it a :class:`LaunchRequest` naming the node. Every method is synchronous and
quick; slow work (a grace period, a container pull) is tracked and finished in ``poll``.

An executor subclasses :class:`Executor`, implements the abstract methods, and declares
what else it does in :attr:`Executor.capabilities` (a frozen :class:`Capabilities`); the
master reads that value and never probes for methods. A capability's method has a default
here that does nothing, so only an executor that declares it overrides it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from ..model import LaunchRequest, Node, ReplicaExit, ReplicaHandle, Slot
from .nodefiles import NodeFiles


class ExecutorError(RuntimeError):
    """An executor could not do what was asked (a launch failed, a node is gone)."""


@dataclass(frozen=True)
class Capabilities:
    """What an executor does beyond the abstract methods."""

    #: ``launch()`` only begins a slow start (creating a container, an actor); ``started()``
    #: reports the replicas whose start has completed, before any exit of theirs. The
    #: master keeps such a gang ``starting`` until every replica has started. A start that
    #: fails is an exit (code 125).
    slow_starts: bool = False
    #: ``prepare_gang()`` reserves the whole gang where its slots say before the first
    #: ``launch()`` (ExecutorError if it cannot).
    gang_reservation: bool = False
    #: The nodes' own files (checkpoints, control files, datasets) are not on the master's
    #: machine: the master reaches them through ``node_files``.
    remote_node_files: bool = False
    #: Nodes join and leave: ``refresh()`` re-reads the inventory (the executor calls it
    #: from ``poll()``; the master forces it when a launch fails), ``nodes()`` says what is
    #: there now, and a node that left holds nothing.
    changing_inventory: bool = False
    #: The master may start a migrating gang's replicas at the destination while the
    #: checkpoint is still written (they wait for a go file in their checkpoint folder).
    prestart: bool = False
    #: Replicas run in the master's own Python environment; False: in a container image,
    #: which every job then resolves from the catalogue.
    host_env: bool = True
    #: ``signal_checkpoint()`` wakes a replica's checkpoint listener at once (else it sees
    #: the request at its next poll of the control file).
    checkpoint_signal: bool = False


class Executor(ABC):
    #: The name used in config (``c.AIGridApp.executor``) and in the inventory.
    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: How the master reaches the nodes' files (see ``remote_node_files``): the nodes'
    #: scratch folders, read here, unless the executor sets its own.
    node_files: NodeFiles

    def __init__(self) -> None:
        self.node_files = NodeFiles()

    @abstractmethod
    def nodes(self) -> list[Node]:
        """The inventory: every node with its GPUs, CPUs, memory and scratch directory."""

    @abstractmethod
    def rendezvous(self, node: str) -> tuple[str, int]:
        """An address and a free port on ``node`` for rank 0's process group store."""

    @abstractmethod
    def launch(
        self, request: LaunchRequest, code: str | None, args: list[str], command: list[str] | None
    ) -> ReplicaHandle:
        """Start one replica: ``code`` (Python source, run with ``args``) or ``command``.

        ``code`` is written with :func:`~.scripts.write_script` where the replica reads it,
        and run with :func:`~.scripts.runner_argv`.
        """

    @abstractmethod
    def stop(self, handle: ReplicaHandle, grace_s: float) -> None:
        """Ask a replica to stop now (SIGTERM or equivalent), and force it after ``grace_s``.

        Returns at once; the force is sent by a later ``poll`` (or on the node). Asking
        again for a replica already stopping keeps the first deadline: executors keep their
        deadlines in a :class:`~.stopping.StopLadder`.
        """

    @abstractmethod
    def poll(self) -> list[ReplicaExit]:
        """Replicas that ended since the last poll, with their exit codes."""

    @abstractmethod
    def reconcile(self, known: list[ReplicaHandle]) -> list[str]:
        """After a master restart: adopt the replicas that still run, return their ids.

        The ones that ended meanwhile are reported by the next :meth:`poll`, with their exit
        code when it was recorded, else as lost (``exit_code=None``); those that were never
        started (the master died while launching them) with ``never_started=True``. A lost
        replica's leftover processes are killed: nothing may run beside its retry.
        """

    @abstractmethod
    def close(self) -> None:
        """Release resources; replicas keep running (a restarted master re-adopts them)."""

    # -- capabilities (see Capabilities): defaults for executors that do not declare them --

    def started(self) -> list[str]:
        """``slow_starts``: replicas whose start completed since the last call."""
        return []

    def prepare_gang(self, job_key: str, attempt: int, slots: tuple[Slot, ...]) -> None:
        """``gang_reservation``: reserve the whole gang before its first launch."""
        raise NotImplementedError(f"the {self.name} executor does not reserve gangs")

    def refresh(self, force: bool = False) -> bool:
        """``changing_inventory``: re-read the inventory; True if it changed."""
        return False

    def signal_checkpoint(self, handle: ReplicaHandle, pid: int) -> None:
        """``checkpoint_signal``: wake the listener (process ``pid``) of ``handle``."""
        raise NotImplementedError(f"the {self.name} executor does not signal checkpoints")
