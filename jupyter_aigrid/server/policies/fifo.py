"""First in, first out, with gang placement. The head of the queue blocks the rest."""

from __future__ import annotations

from .base import QueuePolicy


class FifoPolicy(QueuePolicy):
    name = "fifo"
    blocking = True
