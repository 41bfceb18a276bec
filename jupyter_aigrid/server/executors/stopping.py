"""The stop ladder every executor climbs: SIGTERM now, SIGKILL once the grace period is over.

An executor asks :meth:`StopLadder.ask` when the master stops a replica: the first ask
records when SIGTERM went and when SIGKILL is due, and says to send SIGTERM; a later ask
for the same replica changes nothing, so a master that asks again (it does after a restart,
see ``Lifecycle.stop_replicas``) never pushes the deadline back. The executor then sends
SIGKILL to what :meth:`StopLadder.due` names, each time it looks (``poll``), until the
replica has exited and it calls :meth:`StopLadder.forget`.

The ladder keeps no process or container itself, only times, so local processes, containers
and Ray actors share it. It is safe to use from several threads (the Docker executor asks
from a container's start thread and looks from the master's loop).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class Stopping:
    """When a replica was sent SIGTERM and when its SIGKILL is due (the clock's seconds)."""

    terminated_at: float
    kill_at: float


class StopLadder(Generic[Key]):
    """Per replica (any hashable key): when SIGTERM was sent, and when SIGKILL is due.

    Parameters
    ----------
    clock
        Seconds that only go forward; ``time.monotonic`` unless a test hands its own.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._stopping: dict[Key, Stopping] = {}
        self._lock = threading.Lock()

    def ask(self, key: Key, grace_s: float) -> bool:
        """Record a stop of ``key`` with ``grace_s`` seconds before SIGKILL.

        Returns True when this is the first ask (the caller sends SIGTERM now); False when
        ``key`` is already stopping, whose deadline stays as it was.
        """
        if isinstance(grace_s, bool) or not isinstance(grace_s, int | float):
            msg = f"grace_s must be a number of seconds, got {grace_s!r}"
            raise TypeError(msg)
        if not math.isfinite(grace_s) or grace_s < 0:
            msg = f"grace_s must be a finite number of seconds >= 0, got {grace_s!r}"
            raise ValueError(msg)
        now = self._clock()
        with self._lock:
            if key in self._stopping:
                return False
            self._stopping[key] = Stopping(terminated_at=now, kill_at=now + grace_s)
            return True

    def due(self, now: float | None = None) -> list[Key]:
        """The replicas whose grace period is over at ``now`` (default: the clock's now).

        A replica stays due until it is forgotten: SIGKILL is sent again at every look, in
        case one did not reach it (a container engine that did not answer).
        """
        now = self._clock() if now is None else now
        with self._lock:
            return [key for key, stop in self._stopping.items() if now >= stop.kill_at]

    def seconds_left(self, key: Key, now: float | None = None) -> float | None:
        """Seconds until ``key``'s SIGKILL is due (0 once due); None if it is not stopping."""
        with self._lock:
            stop = self._stopping.get(key)
        if stop is None:
            return None
        now = self._clock() if now is None else now
        return max(0.0, stop.kill_at - now)

    def get(self, key: Key) -> Stopping | None:
        """``key``'s stop, if it is stopping."""
        with self._lock:
            return self._stopping.get(key)

    def forget(self, key: Key) -> None:
        """``key`` has exited (or is no longer ours): nothing more is due for it."""
        with self._lock:
            self._stopping.pop(key, None)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._stopping

    def __len__(self) -> int:
        with self._lock:
            return len(self._stopping)
