"""Test data for the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

MiB = 2**20


def write_file(path: Path, size: int, sync: bool = False) -> None:
    """``size`` bytes of incompressible data at ``path``, left in the page cache; ``sync``
    fsyncs it too, so that timing it later measures no write-back."""
    block = os.urandom(16 * MiB)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
        if sync:
            f.flush()
            os.fsync(f.fileno())
