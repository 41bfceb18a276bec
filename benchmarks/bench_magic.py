"""A trivial ``%%aigrid run`` cell, from submit until its pulled value is in the namespace.

    python benchmarks/bench_magic.py [--runs 20]

AI Grid: ``ip.run_cell_magic("aigrid", "run --pull x --output none", "x = 1")`` in a real
IPython shell against a real server (1 replica, 0 GPUs): submit, gang start, the runner, the
job's end seen through the event stream, and the pickle of ``x`` fetched and unpickled.

Baseline, interleaved run by run: the same code as a plain subprocess,
``subprocess.run([python, "-c", "x = 1"])``. One untimed warm-up of each comes first.
"""

from __future__ import annotations

import subprocess
import sys
import time

from _server import BenchServer, parse_runs, percentile, print_percentiles
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

SERVER_ARGS = ["--AIGridApp.tick_interval_s=1.0"]
CELL = "x = 1"


def baseline_once() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", CELL], check=True)
    return time.perf_counter() - t0


def magic_once(ip: InteractiveShell) -> float:
    ip.user_ns.pop("x", None)
    t0 = time.perf_counter()
    with capture_output():
        ip.run_cell_magic("aigrid", "run --pull x --output none", CELL)
    dt = time.perf_counter() - t0
    if ip.user_ns.get("x") != 1:
        msg = f"the cell did not bring x back: {ip.user_ns.get('x')!r}"
        raise RuntimeError(msg)
    return dt


def main() -> int:
    runs = parse_runs(__doc__)

    print(f"starting the Jupyter server ({' '.join(SERVER_ARGS)}) ...", flush=True)
    with BenchServer(SERVER_ARGS) as srv:
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "jupyter_aigrid")
        with capture_output():
            ip.run_line_magic("aigrid", f"connect {srv.url} --token {srv.token}")
        baseline_once()
        magic_once(ip)
        base, grid = [], []
        for _ in range(runs):
            base.append(baseline_once() * 1000)
            grid.append(magic_once(ip) * 1000)

    print_percentiles(
        runs,
        [
            ("plain subprocess: python -c 'x = 1'", base),
            ("%%aigrid run --pull x: x in namespace", grid),
        ],
        width=40,
    )
    extra = percentile(grid, 50) - percentile(base, 50)
    print(f"\nextra at p50: {extra:.1f} ms over the plain subprocess")
    return 0


if __name__ == "__main__":
    sys.exit(main())
