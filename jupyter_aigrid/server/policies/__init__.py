"""Scheduling policies and the round: pure functions of a frozen snapshot. No I/O, no
framework imports."""

from .base import Policy, QueuePolicy, Round, schedule_round
from .decide import Context, Decisions, decide
from .placement import describe_capacity, place_gang
from .registry import ENTRY_POINT_GROUP, available_policies, load_policy

__all__ = [
    "ENTRY_POINT_GROUP",
    "Context",
    "Decisions",
    "Policy",
    "QueuePolicy",
    "Round",
    "available_policies",
    "decide",
    "describe_capacity",
    "load_policy",
    "place_gang",
    "schedule_round",
]
