"""Sizes, durations and ages as the product writes them: the widgets, the magics and the CLI.

One rule for the whole product, the same as the sidebar's ``labextension/src/format.ts``
(keep the two in step; ``tests/test_formatting.py`` and ``test/format.test.ts`` check the
same figures):

- **Bytes** in binary units (powers of 1024): ``512 B``, ``1.5 KiB``, ``20 MiB``, ``3.2 GiB``;
  one decimal below 10 of a unit, whole numbers above.
- **Durations**: ``0.4 s`` and ``9.9 s`` (one decimal below 10 s); then whole seconds and the
  two largest units, the second left out when it is zero: ``12 s``, ``3 m 20 s``, ``10 m``,
  ``2 h 5 m``, ``3 d 4 h``.
- **Ages** (how long ago): the largest unit only, rounded down: ``42 s``, ``5 m``, ``3 h``.
- **Rates**: a size per second, ``24 MiB/s``. **Latencies** (inference SLOs) stay in
  milliseconds: ``41.2 ms``.

Anything unknown (None, negative, not a number) is ``-``. Only the standard library: the CLI
and the kernel import this without the widgets.
"""

from __future__ import annotations

import math
from typing import Any

UNKNOWN = "-"
BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
#: (suffix, seconds), largest first.
TIME_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def _amount(value: Any) -> float | None:
    """``value`` as a finite number >= 0, or None (bool is no amount)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _tenths(value: float) -> int:
    # Half up, the same arithmetic as format.ts (Python's round() rounds half to even).
    return math.floor(value * 10 + 0.5)


def format_bytes(value: Any) -> str:
    """``1536`` -> ``1.5 KiB``, ``20 * 2**20`` -> ``20 MiB`` (powers of 1024); ``-`` if unknown."""
    size = _amount(value)
    if size is None:
        return UNKNOWN
    unit = 0
    # 1023.6 KiB reads better as "1.0 MiB" than as "1024 KiB".
    while size >= 1023.5 and unit < len(BYTE_UNITS) - 1:
        size /= 1024
        unit += 1
    if unit == 0:
        return f"{math.floor(size + 0.5)} B"
    tenths = _tenths(size)
    if tenths < 100:
        return f"{tenths / 10:.1f} {BYTE_UNITS[unit]}"
    return f"{math.floor(size + 0.5)} {BYTE_UNITS[unit]}"


def format_rate(nbytes: Any, seconds: Any) -> str:
    """Bytes per second, ``24 MiB/s``; ``-`` when nothing moved or no time passed."""
    moved, took = _amount(nbytes), _amount(seconds)
    if not moved or not took:
        return UNKNOWN
    return f"{format_bytes(moved / took)}/s"


def format_duration(value: Any) -> str:
    """``0.4`` -> ``0.4 s``, ``200`` -> ``3 m 20 s``, ``7500`` -> ``2 h 5 m``; ``-`` if unknown."""
    seconds = _amount(value)
    if seconds is None:
        return UNKNOWN
    tenths = _tenths(seconds)
    if tenths < 100:
        return f"{tenths / 10:.1f} s"
    whole = math.floor(seconds + 0.5)
    for i, (suffix, size) in enumerate(TIME_UNITS):
        if whole >= size or suffix == "s":
            text = f"{whole // size} {suffix}"
            if suffix != "s":
                next_suffix, next_size = TIME_UNITS[i + 1]
                rest = whole % size // next_size
                if rest:
                    text += f" {rest} {next_suffix}"
            return text
    return UNKNOWN  # not reached: the last unit takes every whole number


def format_age(value: Any) -> str:
    """How long ago, in its largest unit, rounded down: ``90`` -> ``1 m``; ``-`` if unknown."""
    seconds = _amount(value)
    if seconds is None:
        return UNKNOWN
    for suffix, size in TIME_UNITS:
        if seconds >= size or suffix == "s":
            return f"{math.floor(seconds / size)} {suffix}"
    return UNKNOWN  # not reached


def format_latency_ms(value: Any) -> str:
    """A latency in milliseconds, as SLOs are written: three significant digits (``50 ms``,
    ``41.2 ms``, ``3.46 ms``, ``0.123 ms``), whole milliseconds from 1000 (``1250 ms``);
    ``-`` if unknown. Latencies stay in ms, however long, so that they compare at a glance
    with the SLO beside them."""
    ms = _amount(value)
    if ms is None:
        return UNKNOWN
    return f"{ms:.3g} ms" if ms < 1000 else f"{math.floor(ms + 0.5)} ms"
