"""Scheduling policies: pure functions of a frozen snapshot. No I/O, no framework imports."""

from .base import ENTRY_POINT_GROUP, Policy, available_policies, load_policy, schedule_round
from .placement import describe_capacity, place_gang

__all__ = [
    "ENTRY_POINT_GROUP",
    "Policy",
    "available_policies",
    "describe_capacity",
    "load_policy",
    "place_gang",
    "schedule_round",
]
