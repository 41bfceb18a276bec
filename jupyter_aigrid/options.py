"""The job options that ``aigrid submit`` and ``%%aigrid run`` share, and their JobSpec fields."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: (option dest, JobSpec field) for every option that maps straight onto the spec.
_SPEC_FIELDS = (
    ("gpus", "gpus"),
    ("gpus_per_replica", "gpus_per_replica"),
    ("replicas", "replicas"),
    ("nodes", "nodes"),
    ("cpus_per_replica", "cpus_per_replica"),
    ("memory_mb_per_replica", "memory_mb_per_replica"),
    ("gpu_type", "gpu_type"),
    ("name", "name"),
    ("priority", "priority"),
    ("template", "template"),
    ("image", "image"),
    ("time_limit", "time_limit_s"),
    ("max_restarts", "max_restarts"),
    ("checkpoint_interval", "checkpoint_interval_s"),
    ("workdir", "workdir"),
)


def duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m``, ``2h`` or ``1d``."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        msg = f"must be a positive duration such as 90, 90s, 10m or 2h, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return float(match.group(1)) * _UNITS[match.group(2)]


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            msg = f"must be a whole number >= {minimum}, got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        msg = f"must be a number > 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        msg = f"takes KEY=VALUE, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return key, value


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """Resources, scheduling and environment options, in groups, on ``parser``."""
    res = parser.add_argument_group("resources")
    res.add_argument("--gpus", type=_at_least(0), help="total GPUs of the gang (default 0)")
    res.add_argument("--gpus-per-replica", type=_at_least(0), metavar="N")
    res.add_argument("--replicas", type=_at_least(1), metavar="N", help="default: derived")
    res.add_argument("--nodes", type=_at_least(1), metavar="N", help="spread over exactly N")
    res.add_argument("--cpus-per-replica", type=_positive_number, metavar="N")
    res.add_argument("--memory-mb-per-replica", type=_at_least(0), metavar="MB")
    res.add_argument("--gpu-type", metavar="MODEL", help="only GPUs whose model matches")

    sched = parser.add_argument_group("scheduling")
    sched.add_argument("--name", help="a label for people")
    sched.add_argument("--priority", choices=["high", "normal", "low"])
    sched.add_argument(
        "--preemptible", action="store_true", default=None, help="may be evicted for others"
    )
    sched.add_argument(
        "--template", help="single, pytorch-ddp, mpi, tf-parameter-server or inference"
    )
    sched.add_argument("--image", help="the base image (container executors)")
    sched.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME[@VERSION]",
        help="a dataset to stage on the nodes (repeatable)",
    )
    sched.add_argument("--time-limit", type=duration, metavar="DURATION", help="90s, 10m, 2h")
    sched.add_argument("--max-restarts", type=_at_least(0), metavar="N")
    sched.add_argument("--checkpoint-interval", type=duration, metavar="DURATION")

    env = parser.add_argument_group("environment")
    env.add_argument(
        "--env", type=env_pair, action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    env.add_argument("--workdir", metavar="PATH", help="an absolute path on the node")


def spec_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The JobSpec fields the options of :func:`add_job_options` set."""
    spec = {
        field: getattr(args, dest)
        for dest, field in _SPEC_FIELDS
        if getattr(args, dest, None) is not None
    }
    if getattr(args, "preemptible", None):
        spec["preemptible"] = True
    if getattr(args, "dataset", None):
        spec["datasets"] = list(args.dataset)
    if getattr(args, "env", None):
        spec["env"] = dict(args.env)
    return spec


def policy_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it is JSON (``weights={"a": 2}``)."""
    key, value = env_pair(text)
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value
