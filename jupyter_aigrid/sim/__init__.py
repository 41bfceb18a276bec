"""The trace-driven simulator: replays job traces through the master's own policy objects.

It imports ``server.policies`` and ``server.snapshot``, never the executors or the server.
"""

from .data import Staging
from .engine import SimResult, Simulator, make_nodes
from .trace import TraceError, TraceJob, load_trace, synthetic_trace

__all__ = [
    "SimResult",
    "Simulator",
    "Staging",
    "TraceError",
    "TraceJob",
    "load_trace",
    "make_nodes",
    "synthetic_trace",
]
