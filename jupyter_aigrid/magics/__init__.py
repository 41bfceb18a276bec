"""The notebook side: ``%%aigrid run``, the ``%aigrid`` line magics, and live widgets."""

from __future__ import annotations

from .jobs import JobHandle, PullError
from .magics import AIGridMagics
from .transfer import JobFailed, RemoteError
from .widgets import ClusterWidget, JobWidget


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(AIGridMagics)


__all__ = [
    "AIGridMagics",
    "ClusterWidget",
    "JobFailed",
    "JobHandle",
    "JobWidget",
    "PullError",
    "RemoteError",
    "load_ipython_extension",
]
