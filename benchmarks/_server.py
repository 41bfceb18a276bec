"""Start and stop a throwaway Jupyter server with the AI Grid extension, for the benchmarks.

    with BenchServer(["--AIGridApp.local_nodes=1"]) as srv:
        srv.session().get(srv.api("cluster"))

Each server gets a random free port on 127.0.0.1, a random token, and its own temporary
directory (state dir, root dir and Jupyter runtime dir), removed again on exit.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from jupyter_aigrid.testing import ServerProcess


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(min(rank, len(ordered))) - 1]


def parse_runs(doc: str, default: int = 20) -> int:
    """``--runs N`` from the command line of a benchmark whose docstring is ``doc``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--runs", type=int, default=default)
    return ap.parse_args().runs


def print_percentiles(runs: int, rows: list[tuple[str, list[float]]], width: int = 34) -> None:
    """A table of p50 / p90 / max (ms) per measure, interleaved runs after one warm-up."""
    print(f"\n{runs} runs (interleaved, after one warm-up of each)\n")
    print(f"{'':{width}}{'p50':>9}{'p90':>9}{'max':>9}  (ms)")
    for label, xs in rows:
        print(f"{label:{width}}{percentile(xs, 50):9.1f}{percentile(xs, 90):9.1f}{max(xs):9.1f}")


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
