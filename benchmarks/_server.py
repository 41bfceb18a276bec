"""Start and stop a throwaway Jupyter server with the AI Grid extension, for the benchmarks.

    with BenchServer(["--AIGridApp.local_nodes=1"]) as srv:
        srv.session().get(srv.api("cluster"))

Each server gets a random free port on 127.0.0.1, a random token, and its own temporary
directory (state dir, root dir and Jupyter runtime dir), removed again on exit.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from jupyter_aigrid.testing import ServerProcess


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(min(rank, len(ordered))) - 1]


class BenchServer(ServerProcess):
    """A :class:`ServerProcess` in a temporary directory that is removed on stop."""

    def __init__(self, extra_args: list[str] | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="aigrid-bench-"))
        super().__init__(self.tmp, *(extra_args or []))

    def stop(self, timeout_s: float = 30.0) -> None:
        try:
            super().stop(timeout_s)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
