"""The default policy (being tuned): LAS for now."""

from __future__ import annotations

from .las import LasPolicy


class AIGridPolicy(LasPolicy):
    name = "aigrid"
