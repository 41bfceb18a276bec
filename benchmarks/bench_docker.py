"""Container launch overhead: a trivial job through the Docker executor, against docker run.

    python benchmarks/bench_docker.py [--runs 10]

Needs a Docker engine: it starts its own (root and ``dockerd`` needed; see
``jupyter_aigrid.testing_docker``) and builds the job images there, as the tests do.

AI Grid: a 1-replica job ``print('hi')`` in ``aigrid-job:python`` through a real server with
the docker executor: submit, placement, the container created (its image's files copied: the
engine here uses vfs) and started, the runner, the exit code recorded, the container removed,
the job's end seen by the client.

Baseline, interleaved run by run: the same image and the same Python code with
``containers.run(image, ["python", "-c", "print('hi')"], remove=True)`` (docker run --rm)
through the docker SDK. One untimed warm-up of each comes first.
"""

from __future__ import annotations

import os
import tempfile
import time

import docker
from _server import BenchServer, parse_runs, print_percentiles

from jupyter_aigrid.testing_docker import (
    JOB_IMAGES,
    build_job_image,
    start_dockerd,
    stop_dockerd,
)

IMAGE = "aigrid-job:python"
ROOT = os.environ.get(
    "AIGRID_TEST_DOCKERD", os.path.join(tempfile.gettempdir(), "aigrid-test-dockerd")
)


def baseline_once(client) -> float:
    t0 = time.perf_counter()
    out = client.containers.run(
        IMAGE, ["python", "-c", "print('hi')"], remove=True, network_mode="none"
    )
    dt = time.perf_counter() - t0
    assert out.strip() == b"hi", out
    return dt


def aigrid_once(c) -> float:
    t0 = time.perf_counter()
    job = c.submit({"code": "print('hi')", "image": IMAGE})
    done = c.wait(job["id"], timeout_s=120)
    dt = time.perf_counter() - t0
    assert done["state"] == "succeeded", done
    return dt


def main() -> None:
    runs = parse_runs(__doc__, default=10)
    url, proc = start_dockerd(ROOT)
    client = docker.DockerClient(base_url=url)
    try:
        for tag in JOB_IMAGES:
            build_job_image(client, tag)
        args = [
            "--AIGridApp.executor=docker",
            f"--AIGridApp.docker_base_url={url}",
            "--AIGridApp.docker_network=none",
            "--AIGridApp.simulated_gpus=1",
            "--AIGridApp.tick_interval_s=1.0",
            "--AIGridApp.allow_uncatalogued_images=True",  # the locally built image, by ref
        ]
        with BenchServer(args) as srv:
            c = srv.client()
            baseline_once(client)
            aigrid_once(c)
            base, ours = [], []
            for _ in range(runs):
                base.append(baseline_once(client) * 1000)
                ours.append(aigrid_once(c) * 1000)
        print_percentiles(
            runs,
            [
                ("docker run --rm (SDK), baseline", base),
                ("AI Grid docker executor job", ours),
            ],
        )
    finally:
        client.close()
        stop_dockerd(proc, ROOT)


if __name__ == "__main__":
    main()
