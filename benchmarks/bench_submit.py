"""Concurrent submission: many clients POST jobs at once; every job must be stored exactly once.

    python benchmarks/bench_submit.py [--clients 50] [--per-client 10]

Baseline, against the same server in the same run: the same number of concurrent requests
to ``GET /api/status`` (a trivial authenticated jupyter_server endpoint). Figures are
printed, never asserted; the exit status is non-zero only when a correctness check fails
(a 5xx, or a job missing or stored twice).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time

import requests
from _server import BenchServer, percentile

SERVER_ARGS = [
    "--AIGridApp.local_nodes=1",
    "--AIGridApp.simulated_gpus=1",
    "--AIGridApp.local_cpus_per_node=2",
]
TIMEOUT_S = 120.0


def hammer(srv: BenchServer, clients: int, per_client: int, request) -> dict:
    """Run ``request(session, client, i) -> (status, body)`` from ``clients`` threads at once."""
    barrier = threading.Barrier(clients + 1)
    results: list[tuple[int, int, object, float, object]] = []
    lock = threading.Lock()
    ends: list[float] = []

    def worker(c: int) -> None:
        s = srv.session()
        mine = []
        barrier.wait()
        for i in range(per_client):
            t0 = time.perf_counter()
            try:
                status, body = request(s, c, i)
            except requests.RequestException as e:
                status, body = f"error: {type(e).__name__}", None
            mine.append((c, i, status, time.perf_counter() - t0, body))
        end = time.perf_counter()
        s.close()
        with lock:
            results.extend(mine)
            ends.append(end)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = max(ends) - start
    lat_ms = [r[3] * 1000 for r in results]
    return {
        "results": results,
        "wall_s": wall,
        "statuses": collections.Counter(r[2] for r in results),
        "p50": percentile(lat_ms, 50),
        "p90": percentile(lat_ms, 90),
        "p99": percentile(lat_ms, 99),
        "max": max(lat_ms),
        "rps": len(results) / wall,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--per-client", type=int, default=10)
    args = ap.parse_args()
    n = args.clients * args.per_client

    def post_job(s: requests.Session, c: int, i: int):
        r = s.post(
            srv.api("jobs"),
            data=json.dumps({"code": "pass", "name": f"bench-{c}-{i}"}),
            timeout=TIMEOUT_S,
        )
        return r.status_code, (r.json() if r.status_code == 201 else r.text[:300])

    def get_status(s: requests.Session, c: int, i: int):
        r = s.get(srv.url + "api/status", timeout=TIMEOUT_S)
        return r.status_code, None

    print(f"starting the Jupyter server ({' '.join(SERVER_ARGS)}) ...", flush=True)
    with BenchServer(SERVER_ARGS) as srv:
        warm = srv.session()
        warm.get(srv.url + "api/status", timeout=TIMEOUT_S).raise_for_status()
        warm.get(srv.api("jobs"), timeout=TIMEOUT_S).raise_for_status()

        print(
            f"{args.clients} clients x {args.per_client} requests, started together\n", flush=True
        )
        base = hammer(srv, args.clients, args.per_client, get_status)
        sub = hammer(srv, args.clients, args.per_client, post_job)

        print(f"{'':24}{'GET /api/status':>18}{'POST /aigrid/api/jobs':>24}")
        for key, label in (
            ("p50", "p50 latency (ms)"),
            ("p90", "p90 latency (ms)"),
            ("p99", "p99 latency (ms)"),
            ("max", "max latency (ms)"),
        ):
            print(f"{label:24}{base[key]:18.1f}{sub[key]:24.1f}")
        print(f"{'throughput (req/s)':24}{base['rps']:18.1f}{sub['rps']:24.1f}")
        print(f"{'wall time (s)':24}{base['wall_s']:18.2f}{sub['wall_s']:24.2f}")
        print(f"{'statuses':24}{dict(base['statuses'])!s:>18}{dict(sub['statuses'])!s:>24}")

        failures = []
        created = sub["statuses"].get(201, 0)
        print(f"\nPOST: {created}/{n} answered 201")
        others = {k: v for k, v in sub["statuses"].items() if k != 201}
        if others:
            print(f"POST: non-201 answers: {others}")
            for c, i, status, _, body in sub["results"]:
                if status != 201:
                    print(f"  client {c} #{i}: {status} {body}")
                    break
        bad = {
            k: v
            for k, v in {**sub["statuses"], **base["statuses"]}.items()
            if not isinstance(k, int) or k >= 500
        }
        if bad:
            failures.append(f"5xx or transport errors: {bad}")

        # Stored exactly once?
        t0 = time.perf_counter()
        listing = warm.get(srv.api("jobs"), timeout=TIMEOUT_S)
        list_ms = (time.perf_counter() - t0) * 1000
        listing.raise_for_status()
        jobs = listing.json()["jobs"]
        ids = [j["id"] for j in jobs]
        names = collections.Counter(j["name"] for j in jobs)
        expected = {f"bench-{c}-{i}" for c in range(args.clients) for i in range(args.per_client)}
        acked = {r[4]["id"] for r in sub["results"] if r[2] == 201}
        dup_names = {k: v for k, v in names.items() if v > 1}
        missing = expected - set(names)
        extra = set(names) - expected
        print(
            f"stored: {len(jobs)} jobs, {len(set(ids))} distinct ids, "
            f"{len(names)} distinct names; duplicated names: {len(dup_names)}, "
            f"missing: {len(missing)}, unexpected: {len(extra)}"
        )
        states = collections.Counter(j["state"] for j in jobs)
        print(f"job states at the end: {dict(states)}; GET /aigrid/api/jobs took {list_ms:.0f} ms")
        if len(jobs) != n:
            failures.append(f"expected {n} jobs, found {len(jobs)}")
        if len(set(ids)) != len(ids):
            failures.append("duplicate job ids")
        if dup_names:
            failures.append(f"names stored more than once: {sorted(dup_names)[:5]}")
        if missing:
            failures.append(f"names never stored: {sorted(missing)[:5]}")
        if extra:
            failures.append(f"unexpected jobs: {sorted(extra)[:5]}")
        if not acked <= set(ids):
            failures.append(f"acknowledged but not listed: {sorted(acked - set(ids))[:5]}")
        warm.close()
    print(
        f"server stopped {f'in {srv.stop_s:.2f} s' if srv.stop_s is not None else '(killed)'}"
        " after SIGTERM"
    )

    if failures:
        print("\nFAILED (correctness):")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("\nOK: no 5xx, every job stored exactly once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
