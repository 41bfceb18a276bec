"""The trace-driven simulator: replays job traces through the master's own policy objects;
and the inference simulator (requests of QoS classes on heterogeneous resource types).

It imports ``server.policies`` and ``server.snapshot``, never the executors or the server.
"""

from .data import Staging
from .engine import SimResult, Simulator, make_nodes
from .inference import Degradation, Workload, reference_workload, simulate
from .trace import TraceError, TraceJob, load_trace, synthetic_trace

__all__ = [
    "Degradation",
    "SimResult",
    "Simulator",
    "Staging",
    "TraceError",
    "TraceJob",
    "Workload",
    "load_trace",
    "make_nodes",
    "reference_workload",
    "simulate",
    "synthetic_trace",
]
