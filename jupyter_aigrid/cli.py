"""The ``aigrid`` command: submit jobs, watch them, and look at the cluster.

aigrid submit --gpus 2 train.py --epochs 3     # a script, with its arguments
aigrid submit --gpus 1 -c "print('hi')"        # inline code
aigrid submit --gpus 1 -- nvidia-smi -L        # any command
aigrid list                                    # your jobs
aigrid logs -f 12                              # every rank's output, live
aigrid status 12 | aigrid cancel 12 | aigrid cluster
aigrid templates | aigrid images                # what a job can be rendered through and run in
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from .client import AIGridError, Client
from .formatting import format_age, format_bytes
from .options import add_job_options, spec_fields
from .vocabulary import RUN_METRICS

FAILED_EXIT = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aigrid", description="AI Grid: jobs on a shared GPU cluster.")
    p.add_argument("--url", help="the Jupyter server URL (default: the running server found)")
    p.add_argument("--token", help="the server's token (default: found with the server)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("submit", help="submit a job: a .py script, -c CODE, or a command")
    add_job_options(s)
    s.add_argument("-c", "--code", help="Python source to run instead of a script")
    s.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="stream the logs until the job ends; exit 1 if it did not succeed",
    )
    s.add_argument(
        "program", nargs=argparse.REMAINDER, help="script.py [args...], or a command [args...]"
    )

    sub.add_parser("list", help="list jobs").add_argument("--state")
    sub.add_parser("status", help="show one job").add_argument("job_id")
    lg = sub.add_parser("logs", help="show a job's output")
    lg.add_argument("job_id")
    lg.add_argument("-f", "--follow", action="store_true", help="keep streaming until it ends")
    lg.add_argument("--rank", type=int)
    lg.add_argument("--tail", type=int, help="start with the last N lines of each rank")
    sub.add_parser("cancel", help="cancel a job").add_argument("job_id")
    sub.add_parser("cluster", help="show nodes and GPUs")
    sub.add_parser("templates", help="list the job templates")
    sub.add_parser("images", help="list the base-image catalog")
    return p


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Turn ``aigrid submit`` arguments into a JobSpec."""
    program = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    spec: dict[str, Any] = {}
    if args.code is not None:
        if program:
            spec["args"] = program
        spec["code"] = args.code
    elif program and program[0].endswith(".py"):
        path = Path(program[0])
        try:
            spec["code"] = path.read_text()
        except OSError as e:
            msg = f"cannot read {path}: {e.strerror}"
            raise AIGridError(msg, field="program") from e
        spec["args"] = program[1:]
        spec.setdefault("name", path.name)
    elif program:
        spec["command"] = program
    else:
        msg = "nothing to run: give a script.py, -c CODE, or a command"
        raise AIGridError(msg, field="program")
    spec.update(spec_fields(args))
    if "args" in spec and not spec["args"]:
        del spec["args"]
    return spec


def _age(iso: str | None) -> str:
    """How long ago ``iso`` was, as every age is written (``5 m``); ``-`` if unknown."""
    if not iso:
        return "-"
    seconds = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(iso)).total_seconds()
    # A master clock a little ahead must not make an age unknown.
    return format_age(max(0.0, seconds))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )


def _nodes(job: dict[str, Any]) -> str:
    if not job.get("placement"):
        return f"#{job['queue_position']} in queue" if job.get("queue_position") else "-"
    per: dict[str, int] = {}
    for slot in job["placement"]:
        per[slot["node"]] = per.get(slot["node"], 0) + 1
    return ",".join(f"{n}x{c}" for n, c in per.items())


def jobs_table(jobs: list[dict[str, Any]]) -> str:
    return _table(
        [
            [
                j["id"],
                j["name"],
                j["state"],
                j["gpus"],
                j["qos"],
                j["owner"],
                _age(j["submitted_at"]),
                _nodes(j),
            ]
            for j in jobs
        ],
        ["ID", "NAME", "STATE", "GPUS", "QOS", "OWNER", "AGE", "WHERE"],
    )


#: The master counts GPU memory in MiB (NVML's bytes / 2**20).
MIB = 1024**2


def _memory(gpu: dict[str, Any]) -> str:
    """``20 GiB / 78 GiB`` where NVML says what is used, ``78 GiB`` where only the total."""
    if not gpu.get("memory_mb"):
        return "-"
    total = format_bytes(gpu["memory_mb"] * MIB)
    used = gpu.get("memory_used_mb")
    return f"{format_bytes(used * MIB)} / {total}" if used is not None else total


def cluster_table(cluster: dict[str, Any]) -> str:
    rows = [
        [
            n["name"],
            g["index"],
            g["model"] + (" (SIMULATED)" if g["simulated"] else ""),
            g.get("job_id") or "-",
            "-" if g.get("rank") is None else g["rank"],
            f"{g['utilization_pct']}%" if "utilization_pct" in g else "-",
            _memory(g),
        ]
        for n in cluster["nodes"]
        for g in n["gpus"]
    ]
    return (
        _table(rows, ["NODE", "GPU", "MODEL", "JOB", "RANK", "UTIL", "MEMORY"])
        + f"\n{cluster['gpus_free']}/{cluster['gpus_total']} GPUs free "
        + f"({cluster['executor']} executor)"
    )


def templates_table(templates: list[dict[str, Any]]) -> str:
    rows = [
        [
            t["name"],
            t["framework"],
            f"{t['replicas']['min']}-{t['replicas']['max'] or 'any'}",
            ",".join(r["name"] for r in t["roles"]),
            t["network"],
            t["description"],
        ]
        for t in templates
    ]
    return _table(rows, ["TEMPLATE", "FRAMEWORK", "REPLICAS", "ROLES", "NETWORK", "WHAT"])


def images_table(images: list[dict[str, Any]]) -> str:
    rows = [
        [i["id"], i["framework"], i["framework_version"], i["cuda"], i["python"], i["ref"]]
        for i in images
    ]
    return _table(rows, ["ID", "FRAMEWORK", "VERSION", "CUDA", "PYTHON", "REFERENCE"])


def simulation_table(found: dict[str, Any]) -> str:
    """The live run next to its replay under another policy (``POST /simulate``)."""
    rows = [
        [label, f"{found['live'][key]:,}", f"{found['simulated'][key]:,}"]
        for key, label in RUN_METRICS
    ]
    header = ["", f"live ({found['live_policy']})", f"simulated ({found['policy']})"]
    return _table(rows, header)


def print_logs(client: Client, job_id: str, **kwargs: Any) -> None:
    for entry in client.logs(job_id, **kwargs):
        stream = sys.stderr if entry["stream"] == "stderr" else sys.stdout
        print(f"[{entry['rank']}] {entry['line']}", file=stream, flush=True)


def run(args: argparse.Namespace) -> int:
    client = Client(args.url, args.token) if args.url else Client(token=args.token)
    out: Any
    if args.command == "submit":
        job = client.submit(spec_from_args(args))
        print(
            json.dumps(job) if args.json else f"submitted job {job['id']} ({job['name']})",
            flush=True,
        )
        if not args.follow:
            return 0
        print_logs(client, job["id"], follow=True)
        job = client.wait(job["id"])
        print(
            f"job {job['id']} {job['state']}" + (f": {job['reason']}" if job["reason"] else ""),
            file=sys.stderr,
        )
        return 0 if job["state"] == "succeeded" else FAILED_EXIT
    if args.command == "list":
        jobs = client.jobs(state=args.state)
        out = json.dumps(jobs) if args.json else jobs_table(jobs)
        print(out)
    elif args.command == "status":
        job = client.job(args.job_id)
        print(json.dumps(job, indent=2))
    elif args.command == "logs":
        print_logs(client, args.job_id, rank=args.rank, follow=args.follow, tail=args.tail)
    elif args.command == "cancel":
        job = client.cancel(args.job_id)
        print(
            json.dumps(job) if args.json else f"job {job['id']}: cancel requested ({job['state']})"
        )
    elif args.command == "cluster":
        cluster = client.cluster()
        if args.json:
            print(json.dumps(cluster))
        else:
            print(cluster_table(cluster))
    elif args.command == "templates":
        templates = client.templates()
        print(json.dumps(templates) if args.json else templates_table(templates))
    elif args.command == "images":
        images = client.images()
        print(json.dumps(images) if args.json else images_table(images))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except AIGridError as e:
        print(f"aigrid: error: {e}", file=sys.stderr)
        return 2 if e.status in (0, 400) and e.field == "program" else FAILED_EXIT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
