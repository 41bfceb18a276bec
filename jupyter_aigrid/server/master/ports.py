"""What the components that call each other in a circle need of each other.

A gang's life goes round: a launch that fails ends the gang (:class:`Ending`), a gang that
ends to move is launched again (:class:`Launching`), a migration stops a gang and stages its
checkpoint (:class:`Moving`), and staged data starts it (:class:`Staging`). The master wires
the components together after making them; each names its peers by these protocols, so no
module imports another that imports it back.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..model import Placement
from ..records import Job, Replica


class Ending(Protocol):
    """:class:`.lifecycle.Lifecycle`, as the others call it."""

    def set_state(self, row: Job, state: str, **fields: Any) -> None: ...
    def stop_replicas(self, job_id: str, attempt: int) -> None: ...
    def settle_if_done(self, row: Job) -> None: ...
    def fail_gang(self, job_id: str, reason: str, retry: bool, node_lost: bool = False) -> None: ...
    def stop_to_requeue(self, job_id: str, reason: str) -> None: ...
    def failure_reason(self, rep: Replica, code: int | None) -> str: ...
    def finish(self, row: Job, codes: dict[str, int | None]) -> None: ...


class Launching(Protocol):
    """:class:`.launcher.Launcher`, as the others call it."""

    def place(self, row: Job, placement: Placement, **fields: Any) -> None: ...
    def start_or_stage(self, row: Job) -> None: ...
    def launch(self, row: Job, restore: str | None, prestart: bool = False) -> None: ...


class Moving(Protocol):
    """:class:`.moves.Moves`, as the others call it."""

    def end_migration(self, row: Job, succeeded: bool) -> None: ...
    def next_attempt(self, row: Job) -> int: ...
    def stage(self, row: Job) -> None: ...


class Staging(Protocol):
    """:class:`.data_staging.DataStaging`, as the others call it."""

    def needs_data(self, row: Job) -> bool: ...
