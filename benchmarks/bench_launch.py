"""Launch overhead: from the POST of a trivial job to its first log line on the follow stream.

    python benchmarks/bench_launch.py [--runs 20]

AI Grid: time from just before ``POST /aigrid/api/jobs`` of ``print('ready', flush=True)``
(1 replica, 0 GPUs) to the first line read from ``GET /aigrid/api/jobs/{id}/logs?follow=1``,
opened right after the POST returns. Each job is followed to its end before the next one.

Baseline, interleaved run by run: ``subprocess.Popen([python, "-c", "print('ready', ...)"])``
to reading its first stdout line. One untimed warm-up of each comes first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from _server import BenchServer, parse_runs, percentile, print_percentiles

SERVER_ARGS = ["--AIGridApp.tick_interval_s=1.0"]
CODE = "print('ready', flush=True)"
TARGET_MS = 300.0
TIMEOUT_S = 60.0


def baseline_once() -> float:
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", CODE], stdout=subprocess.PIPE)
    line = p.stdout.readline()
    dt = time.perf_counter() - t0
    p.stdout.read()
    p.stdout.close()
    p.wait()
    if line.strip() != b"ready":
        msg = f"baseline printed {line!r}"
        raise RuntimeError(msg)
    return dt


def aigrid_once(srv: BenchServer, s) -> tuple[float, float, float, str]:
    """(seconds to the 201, to the first line, to the end of the stream; final state)."""
    body = json.dumps({"code": CODE, "gpus": 0})
    t0 = time.perf_counter()
    r = s.post(srv.api("jobs"), data=body, timeout=TIMEOUT_S)
    if r.status_code != 201:
        msg = f"submit answered {r.status_code}: {r.text[:300]}"
        raise RuntimeError(msg)
    job_id = r.json()["id"]
    posted = time.perf_counter() - t0
    first = None
    lines = []
    with s.get(
        srv.api("jobs", job_id, "logs"), params={"follow": 1}, stream=True, timeout=TIMEOUT_S
    ) as resp:
        resp.raise_for_status()
        for raw in resp.iter_lines(chunk_size=None):
            if not raw:
                continue
            if first is None:
                first = time.perf_counter() - t0
            lines.append(json.loads(raw))
    done = time.perf_counter() - t0
    state = s.get(srv.api("jobs", job_id), timeout=TIMEOUT_S).json()["state"]
    if first is None or lines[0]["line"] != "ready":
        msg = f"job {job_id} ({state}) logged {lines!r}"
        raise RuntimeError(msg)
    return posted, first, done, state


def main() -> int:
    runs = parse_runs(__doc__)

    print(f"starting the Jupyter server ({' '.join(SERVER_ARGS)}) ...", flush=True)
    with BenchServer(SERVER_ARGS) as srv:
        s = srv.session()
        baseline_once()
        aigrid_once(srv, s)
        base, posts, grid, ends, states = [], [], [], [], []
        for _ in range(runs):
            base.append(baseline_once() * 1000)
            posted, first, done, state = aigrid_once(srv, s)
            posts.append(posted * 1000)
            grid.append(first * 1000)
            ends.append(done * 1000)
            states.append(state)
        s.close()

    print_percentiles(
        runs,
        [
            ("Popen -> first stdout line", base),
            ("POST -> 201 returned", posts),
            ("POST -> first log line (AI Grid)", grid),
            ("POST -> end of log stream", ends),
        ],
    )
    extra = percentile(grid, 50) - percentile(base, 50)
    verdict = "met" if extra < TARGET_MS else "NOT met"
    print(
        f"\nextra at p50: {extra:.1f} ms   (target: under {TARGET_MS:g} ms extra at p50: {verdict})"
    )
    print(
        f"server stopped "
        f"{f'in {srv.stop_s:.2f} s' if srv.stop_s is not None else '(killed)'} after SIGTERM"
    )
    print(f"final job states: {dict((x, states.count(x)) for x in set(states))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
