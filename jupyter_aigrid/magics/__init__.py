"""The notebook side: ``%%aigrid run`` and ``infer``, the ``%aigrid`` line magics, and live
widgets."""

from __future__ import annotations

from .cluster_widget import ClusterWidget
from .jobs import JobHandle, PullError
from .magics import AIGridMagics
from .profiles import ProfileWidget
from .transfer import JobFailed, RemoteError
from .widgets import JobWidget


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(AIGridMagics)


__all__ = [
    "AIGridMagics",
    "ClusterWidget",
    "JobFailed",
    "JobHandle",
    "JobWidget",
    "ProfileWidget",
    "PullError",
    "RemoteError",
    "load_ipython_extension",
]
