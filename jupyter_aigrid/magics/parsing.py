"""The argument parser every ``%aigrid`` command is read with, and the options of
``%%aigrid infer`` (latencies, deadlines, QoS classes) with the JobSpec fields they set."""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser

from ..options import duration
from ..vocabulary import QOS_CLASSES


class MagicParser(MagicArgumentParser):
    """Turns argparse's complaints into a UsageError that suggests the right spelling."""

    def __init__(self, **kwargs: Any) -> None:
        # No abbreviations: --gpu is a typo to point out, not a prefix to guess from.
        super().__init__(**kwargs)
        self.allow_abbrev = False

    def error(self, message: str) -> None:
        unknown = re.search(r"unrecognized arguments: (\S+)", message)
        hint = ""
        if unknown:
            options = [o for a in self._actions for o in a.option_strings]
            close = difflib.get_close_matches(unknown.group(1).split("=")[0], options, n=1)
            if close:
                hint = f"; did you mean {close[0]}?"
        raise UsageError(f"%aigrid {self.prog}: {message}{hint} (see %aigrid {self.prog} --help)")


# -- inference: ``%%aigrid infer`` ---------------------------------------------------------------

_LATENCY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*$")


def latency_ms(text: str) -> float:
    """Milliseconds from ``50ms``, ``0.05s`` or a bare ``50`` (read as milliseconds)."""
    match = _LATENCY.match(text)
    if not match or float(match.group(1)) <= 0:
        msg = f"must be a positive latency such as 50ms, 0.05s or 50 (milliseconds), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    value = float(match.group(1))
    # Rounded so that 0.05s is 50 ms, not 50.00000000000001.
    return round(value * 1000, 6) if match.group(2) == "s" else value


def model_id(text: str) -> str:
    if not text.strip():
        msg = "must name the model, such as resnet50 or org/model-7b, got an empty string"
        raise argparse.ArgumentTypeError(msg)
    return text


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--slo``, ``--deadline`` and ``--qos`` in their own group."""
    group = parser.add_argument_group("inference")
    group.add_argument(
        "--model", type=model_id, required=True, metavar="MODEL", help="the model served (an id)"
    )
    group.add_argument(
        "--slo",
        type=latency_ms,
        metavar="LATENCY",
        help="p95 latency per request or batch: 50ms, 0.05s, 50 (= ms)",
    )
    group.add_argument(
        "--deadline",
        type=duration,
        metavar="DURATION",
        help="the whole job ends within this of submission: 90s, 10m, 1h",
    )
    group.add_argument(
        "--qos",
        choices=QOS_CLASSES,
        help="how urgent: realtime, interactive or batch (default: interactive)",
    )


def inference_fields(args: argparse.Namespace, prog: str = "infer") -> dict[str, Any]:
    """The JobSpec fields of an inference job from the options of
    :func:`add_inference_options`; a UsageError when it names no SLO at all, because the
    master can only pick a resource for a requirement."""
    slo: dict[str, float] = {}
    if args.slo is not None:
        slo["latency_ms"] = args.slo
    if args.deadline is not None:
        slo["deadline_s"] = args.deadline
    if not slo:
        msg = (
            f"%aigrid {prog}: give --slo (a p95 latency such as 50ms) or --deadline (such as "
            "10m), or both: the master picks the resource that meets them at least cost"
        )
        raise UsageError(msg)
    fields: dict[str, Any] = {"kind": "inference", "model": args.model, "slo": slo}
    if args.qos is not None:
        fields["qos"] = args.qos  # left out, the master's default (interactive) applies
    return fields
