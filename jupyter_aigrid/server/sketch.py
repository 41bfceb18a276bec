"""A decaying quantile sketch of latencies (DDSketch-style logarithmic buckets), and the
number checks the profiles share. See :mod:`.profiles` for how it is used."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

#: Results below this many milliseconds share one bucket (reported as 0).
MIN_LATENCY_MS = 1e-3
#: The decaying weights are rescaled before they overflow a float's comfortable range.
_RESCALE_AT = 2.0**64


def check_number(field: str, value: Any, *, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{field} must be a number, not {value!r}"
        raise ValueError(msg)
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        msg = f"{field} must be a finite number {relation} {minimum:g}, not {value!r}"
        raise ValueError(msg)
    return float(value)


def check_whole(field: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        msg = f"{field} must be a whole number >= {minimum}, not {value!r}"
        raise ValueError(msg)
    return value


class QuantileSketch:
    """Streaming quantiles with a relative-accuracy guarantee, bounded memory and decay.

    Parameters
    ----------
    relative_accuracy
        Every quantile is within this fraction of a value that was observed at that rank.
    half_life
        Observations after which an observation weighs half as much; ``None``: no decay.
    max_buckets
        Memory bound. Past it the lowest buckets merge, which blurs only low quantiles.
    """

    def __init__(
        self,
        relative_accuracy: float = 0.01,
        half_life: float | None = 50.0,
        max_buckets: int = 1024,
    ) -> None:
        accuracy = check_number("relative_accuracy", relative_accuracy, strict=True)
        if accuracy >= 1:
            msg = f"relative_accuracy must be below 1, not {relative_accuracy!r}"
            raise ValueError(msg)
        if half_life is not None:
            check_number("half_life", half_life, strict=True)
        self.relative_accuracy = accuracy
        self.half_life = None if half_life is None else float(half_life)
        self.max_buckets = check_whole("max_buckets", max_buckets, 8)
        self._gamma = (1 + accuracy) / (1 - accuracy)
        self._log_gamma = math.log(self._gamma)
        self._growth = 1.0 if half_life is None else 2.0 ** (1.0 / half_life)
        self._weight = 1.0  # what the next observation adds (grows instead of all decaying)
        self._buckets: dict[int, float] = {}
        self._zero = 0.0
        self._total = 0.0
        self._cache: dict[float, float | None] = {}  # quantiles until the next change
        self.count = 0

    def add(self, value: float) -> None:
        value = check_number("latency_ms", value)
        self._cache.clear()
        if value < MIN_LATENCY_MS:
            self._zero += self._weight
        else:
            key = math.ceil(math.log(value) / self._log_gamma)
            self._buckets[key] = self._buckets.get(key, 0.0) + self._weight
            if len(self._buckets) > self.max_buckets:
                self._collapse()
        self._total += self._weight
        self.count += 1
        self._weight *= self._growth
        if self._weight > _RESCALE_AT:
            self._rescale()

    def quantile(self, q: float) -> float | None:
        """The least value with a share ``q`` (0..1) of the weight at or below it, or None."""
        q = check_number("q", q)
        if q > 1:
            msg = f"q must be between 0 and 1, not {q!r}"
            raise ValueError(msg)
        if q not in self._cache:
            self._cache[q] = self._quantile(q)
        return self._cache[q]

    def _quantile(self, q: float) -> float | None:
        if not self.count:
            return None
        rank = q * self._total * (1 - 1e-12)
        seen = self._zero
        if seen > rank and self._zero:
            return 0.0
        keys = sorted(self._buckets)
        for key in keys:
            seen += self._buckets[key]
            if seen > rank:
                return self._value(key)
        return self._value(keys[-1]) if keys else 0.0

    def merge(self, other: QuantileSketch) -> None:
        """Add ``other``'s observations; each side keeps its own recency weighting."""
        if not math.isclose(other.relative_accuracy, self.relative_accuracy):
            msg = (
                f"relative_accuracy of the merged sketch ({other.relative_accuracy:g}) must "
                f"equal this one's ({self.relative_accuracy:g})"
            )
            raise ValueError(msg)
        self._cache.clear()
        # Bring both to the scale of this sketch's latest observation.
        scale = self._weight / self._growth / (other._weight / other._growth)
        for key, weight in other._buckets.items():
            self._buckets[key] = self._buckets.get(key, 0.0) + weight * scale
        self._zero += other._zero * scale
        self._total += other._total * scale
        self.count += other.count
        while len(self._buckets) > self.max_buckets:
            self._collapse()

    @property
    def buckets(self) -> int:
        return len(self._buckets) + (1 if self._zero else 0)

    def to_json(self) -> str:
        last = self._weight / self._growth  # weights relative to the latest observation
        return json.dumps(
            {
                "version": 1,
                "relative_accuracy": self.relative_accuracy,
                "half_life": self.half_life,
                "max_buckets": self.max_buckets,
                "count": self.count,
                "zero": self._zero / last,
                "buckets": {str(k): w / last for k, w in sorted(self._buckets.items())},
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, data: str | Mapping[str, Any]) -> QuantileSketch:
        raw = json.loads(data) if isinstance(data, str) else data
        if not isinstance(raw, Mapping) or raw.get("version") != 1:
            msg = "sketch must be a JSON object with version 1"
            raise ValueError(msg)
        try:
            sketch = cls(raw["relative_accuracy"], raw["half_life"], raw["max_buckets"])
            count, zero, buckets = raw["count"], raw["zero"], raw["buckets"]
        except KeyError as e:
            msg = f"sketch is missing the field {e.args[0]}"
            raise ValueError(msg) from e
        if not isinstance(buckets, Mapping):
            msg = "sketch.buckets must be an object of bucket index -> weight"
            raise ValueError(msg)
        sketch.count = check_whole("sketch.count", count, 0)
        sketch._zero = check_number("sketch.zero", zero)
        for key, weight in buckets.items():
            try:
                index = int(key)
            except ValueError as e:
                msg = f"sketch.buckets keys must be whole numbers, not {key!r}"
                raise ValueError(msg) from e
            sketch._buckets[index] = check_number(f"sketch.buckets[{key}]", weight)
        sketch._total = sketch._zero + sum(sketch._buckets.values())
        sketch._weight = sketch._growth
        return sketch

    def _value(self, key: int) -> float:
        # The middle (in relative terms) of (gamma^(key-1), gamma^key]: error <= accuracy.
        return 2 * self._gamma**key / (self._gamma + 1)

    def _collapse(self) -> None:
        keys = sorted(self._buckets)
        low, into = keys[0], keys[1]
        self._buckets[into] += self._buckets.pop(low)

    def _rescale(self) -> None:
        scale = self._weight
        self._total /= scale
        self._zero /= scale
        floor = self._total * 1e-12  # buckets this light can no longer move a quantile
        self._buckets = {k: w / scale for k, w in self._buckets.items() if w / scale > floor}
        self._total = self._zero + sum(self._buckets.values())
        self._weight = 1.0
