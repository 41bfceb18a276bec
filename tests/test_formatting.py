"""The product's one formatter of sizes and times (``jupyter_aigrid.formatting``). The same
figures are checked on the sidebar's side (``labextension/test/format.test.ts``): the
notebook, the CLI and the sidebar write them alike."""

from __future__ import annotations

import math

import pytest

from jupyter_aigrid.formatting import (
    format_age,
    format_bytes,
    format_duration,
    format_latency_ms,
    format_rate,
)

BYTES = [
    (0, "0 B"),
    (512, "512 B"),
    (1023, "1023 B"),
    (1023.5, "1.0 KiB"),
    (1536, "1.5 KiB"),
    (9.96 * 1024, "10 KiB"),
    (20 * 1024**2, "20 MiB"),
    (1024**2 - 100, "1.0 MiB"),
    (3.25 * 1024**3, "3.3 GiB"),
    (2 * 1024**5, "2.0 PiB"),
    (3000 * 1024**5, "3000 PiB"),
]

DURATIONS = [
    (0, "0.0 s"),
    (0.04, "0.0 s"),
    (0.4, "0.4 s"),
    (9.94, "9.9 s"),
    (9.95, "10 s"),
    (12.7, "13 s"),
    (60, "1 m"),
    (125, "2 m 5 s"),
    (200, "3 m 20 s"),
    (600, "10 m"),
    (3599.6, "1 h"),
    (3720, "1 h 2 m"),
    (7500, "2 h 5 m"),
    (3 * 86400 + 4 * 3600 + 59, "3 d 4 h"),
]

AGES = [(0, "0 s"), (30, "30 s"), (90, "1 m"), (3 * 3600 + 59 * 60, "3 h"), (2 * 86400, "2 d")]

UNKNOWN = [None, -1, math.nan, math.inf, "12", True]


@pytest.mark.parametrize(("value", "text"), BYTES)
def test_bytes_in_powers_of_1024(value, text):
    assert format_bytes(value) == text


@pytest.mark.parametrize(("value", "text"), DURATIONS)
def test_durations_in_the_two_largest_units(value, text):
    assert format_duration(value) == text


@pytest.mark.parametrize(("value", "text"), AGES)
def test_ages_in_the_largest_unit_rounded_down(value, text):
    assert format_age(value) == text


@pytest.mark.parametrize("value", UNKNOWN)
def test_anything_unknown_is_a_dash(value):
    assert format_bytes(value) == "-"
    assert format_duration(value) == "-"
    assert format_age(value) == "-"
    assert format_latency_ms(value) == "-"


def test_rates_are_sizes_per_second():
    assert format_rate(50 * 1024**2, 2.0) == "25 MiB/s"
    assert format_rate(1536, 1) == "1.5 KiB/s"
    # Nothing moved, or no time passed: no rate rather than zero or infinity.
    assert format_rate(0, 2.0) == "-"
    assert format_rate(100, 0) == "-"
    assert format_rate(None, 1) == "-"


def test_latencies_stay_in_milliseconds():
    assert [format_latency_ms(v) for v in (50, 41.23, 3.456, 0.1234, 999.4, 1250.4)] == [
        "50 ms",
        "41.2 ms",
        "3.46 ms",
        "0.123 ms",
        "999 ms",
        "1250 ms",
    ]
