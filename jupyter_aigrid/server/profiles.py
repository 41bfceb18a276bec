"""Performance profiles per (model, resource type) and the QoS choice of a resource.

Pure logic: no database, no I/O. The master feeds each inference result into a
:class:`ProfileBook` and asks it where the next job (or, in the simulator, the next
request) should run.

A :class:`Profile` keeps a :class:`~.sketch.QuantileSketch` of observed latencies. The sketch has
DDSketch-style logarithmic buckets (every quantile within ``relative_accuracy`` of a value
that was observed, in bounded memory) and *decays*: each observation weighs
``2 ** (1 / half_life)`` times the one before, so after a shift in the latency
distribution the recent results dominate. The p95 follows a rise after a handful of
results (the new ones need only 5% of the weight) and a fall after about
``4.3 * half_life`` results (the old tail must drop under 5%).

Choosing a resource (:meth:`ProfileBook.choose`), among the offers the caller makes:

1. A resource type is *profiled* for a model once it has ``min_samples`` results.
2. A profiled offer *meets* the SLO when its predicted p95 is at most ``slo.latency_ms``
   (if set) and ``wait_s + run_s`` is at most ``slo.deadline_s`` (if set; with ``run_s``
   unknown only ``wait_s`` is checked). The predicted p95 is the profile's p95, plus
   ``wait_s`` when the caller says that waiting counts in the latency (``include_wait``:
   one choice per request, as in the simulator).
3. Exploration (a bandit for the cold start): with probability at most ``explore``, an
   unprofiled resource type that is free now is tried, the least observed first, to learn
   it. The probability shrinks as the model's profiles on the offered types fill and is 0
   once all are profiled. A realtime request never explores while some profiled offer
   meets its SLO.
4. Otherwise, the cheapest meeting offer that is free now; if none is free now, the
   meeting offer free soonest (ties by cost). Reason ``meets_slo``.
5. Otherwise (nothing profiled meets, nothing explored): ``best_effort``, the offer with
   the lowest predicted p95, free now preferred (unless the prediction already counts the
   wait); offers with a few results (fewer than
   ``min_samples``) are predicted from them, offers with none come last (cheapest first).

Every rule is deterministic given the ``rng``, which is drawn from only when exploring is
allowed, so a seeded run replays exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..vocabulary import QOS_CLASSES
from .sketch import QuantileSketch, check_number, check_whole

REASONS = ("meets_slo", "explore", "best_effort")


class RandomSource(Protocol):
    def random(self) -> float: ...


def _name(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        msg = f"{field} must be a non-empty string, not {value!r}"
        raise ValueError(msg)
    return value


def check_qos(qos: Any) -> str:
    """``qos`` itself, or a ValueError naming the allowed classes."""
    if qos not in QOS_CLASSES:
        msg = f"qos must be one of {', '.join(QOS_CLASSES)}, not {qos!r}"
        raise ValueError(msg)
    return qos


def _ewma(old: float | None, value: float, alpha: float) -> float:
    return value if old is None else old + alpha * (value - old)


class Profile:
    """What is known of one model on one resource type, from its results."""

    def __init__(
        self,
        model: str,
        resource: str,
        *,
        alpha: float = 0.1,
        sketch: QuantileSketch | None = None,
    ) -> None:
        self.model = _name("model", model)
        self.resource = _name("resource", resource)
        self.alpha = check_number("alpha", alpha, strict=True)
        if self.alpha > 1:
            msg = f"alpha must be in (0, 1], not {alpha!r}"
            raise ValueError(msg)
        self.sketch = sketch if sketch is not None else QuantileSketch()
        self.count = 0
        self.ewma_ms: float | None = None
        self.throughput: float | None = None
        self.run_s: float | None = None
        self.updated_at: float | None = None

    @property
    def p50_ms(self) -> float | None:
        return self.sketch.quantile(0.5)

    @property
    def p95_ms(self) -> float | None:
        return self.sketch.quantile(0.95)

    def observe(self, *, latency_ms: float, items: float = 1, now: float | None = None) -> None:
        """One result: a request or a batch of ``items`` that took ``latency_ms``."""
        latency = check_number("latency_ms", latency_ms)
        count = check_number("items", items, strict=True)
        self.sketch.add(latency)
        self.ewma_ms = _ewma(self.ewma_ms, latency, self.alpha)
        if latency > 0:
            self.throughput = _ewma(self.throughput, count / (latency / 1000), self.alpha)
        self.count += 1
        self.updated_at = _now(now)

    def observe_run(self, run_s: float, now: float | None = None) -> None:
        """A whole job's run time, for deadlines."""
        self.run_s = _ewma(self.run_s, check_number("run_s", run_s), self.alpha)
        self.updated_at = _now(now)

    def to_row(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "resource": self.resource,
            "count": self.count,
            "ewma_ms": self.ewma_ms,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "throughput": self.throughput,
            "run_s": self.run_s,
            "updated_at": self.updated_at,
            "alpha": self.alpha,
            "sketch": self.sketch.to_json(),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Profile:
        """The inverse of :meth:`to_row` (``p50_ms``/``p95_ms`` come from the sketch)."""
        for key in ("model", "resource", "count", "sketch"):
            if key not in row:
                msg = f"profile row is missing the field {key}"
                raise ValueError(msg)
        profile = cls(
            row["model"],
            row["resource"],
            alpha=row.get("alpha", 0.1),
            sketch=QuantileSketch.from_json(row["sketch"]),
        )
        profile.count = check_whole("count", row["count"], 0)
        for key in ("ewma_ms", "throughput", "run_s", "updated_at"):
            value = row.get(key)
            setattr(profile, key, None if value is None else check_number(key, value))
        return profile

    def __repr__(self) -> str:
        return (
            f"Profile({self.model!r}, {self.resource!r}, count={self.count}, "
            f"p50_ms={self.p50_ms}, p95_ms={self.p95_ms})"
        )


def _now(now: float | None) -> float:
    return time.time() if now is None else check_number("now", now)


@dataclass(frozen=True)
class Slo:
    """p95 latency per request or batch, and/or the seconds a whole job may take."""

    latency_ms: float | None = None
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        for field in ("latency_ms", "deadline_s"):
            value = getattr(self, field)
            if value is not None:
                check_number(f"slo.{field}", value, strict=True)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> Slo:
        if raw is None:
            return cls()
        unknown = set(raw) - {"latency_ms", "deadline_s"}
        if unknown:
            msg = f"slo allows only latency_ms and deadline_s, not {', '.join(sorted(unknown))}"
            raise ValueError(msg)
        return cls(raw.get("latency_ms"), raw.get("deadline_s"))


@dataclass(frozen=True)
class Offer:
    """A resource type the caller could use: units free now, or the expected wait for one."""

    resource: str
    free: int
    wait_s: float
    cost_per_hour: float

    def __post_init__(self) -> None:
        _name("offer.resource", self.resource)
        check_whole("offer.free", self.free, 0)
        if not (isinstance(self.wait_s, int | float) and self.wait_s == math.inf):
            check_number("offer.wait_s", self.wait_s)
        check_number("offer.cost_per_hour", self.cost_per_hour)


@dataclass(frozen=True)
class Choice:
    resource: str
    predicted_p95_ms: float | None
    reason: str
    wait_s: float


class ProfileBook:
    """Every profile, and the choice of a resource for a model under an SLO."""

    def __init__(
        self,
        *,
        min_samples: int = 20,
        explore: float = 0.1,
        alpha: float = 0.1,
        half_life: float | None = 50.0,
        relative_accuracy: float = 0.01,
    ) -> None:
        check_whole("min_samples", min_samples, 1)
        if check_number("explore", explore) > 1:
            msg = f"explore must be a probability in [0, 1], not {explore!r}"
            raise ValueError(msg)
        QuantileSketch(relative_accuracy, half_life)  # validates both now, not at first use
        Profile("model", "resource", alpha=alpha)
        self.min_samples = min_samples
        self.explore = float(explore)
        self.alpha = alpha
        self.half_life = half_life
        self.relative_accuracy = relative_accuracy
        self._profiles: dict[tuple[str, str], Profile] = {}

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], **options: Any) -> ProfileBook:
        book = cls(**options)
        for row in rows:
            book.add(Profile.from_row(row))
        return book

    def copy(self) -> ProfileBook:
        """A book with the same options and profiles that later observations do not touch."""
        return ProfileBook.from_rows(
            (p.to_row() for p in self.all()),
            min_samples=self.min_samples,
            explore=self.explore,
            alpha=self.alpha,
            half_life=self.half_life,
            relative_accuracy=self.relative_accuracy,
        )

    def add(self, profile: Profile) -> None:
        self._profiles[profile.model, profile.resource] = profile

    def get(self, model: str, resource: str) -> Profile | None:
        return self._profiles.get((model, resource))

    def all(self) -> list[Profile]:
        return [self._profiles[k] for k in sorted(self._profiles)]

    def observe(
        self,
        model: str,
        resource: str,
        latency_ms: float,
        items: float = 1,
        now: float | None = None,
    ) -> Profile:
        profile = self._profile(model, resource)
        profile.observe(latency_ms=latency_ms, items=items, now=now)
        return profile

    def observe_run(
        self, model: str, resource: str, run_s: float, now: float | None = None
    ) -> Profile:
        profile = self._profile(model, resource)
        profile.observe_run(run_s, now)
        return profile

    def profiled(self, model: str, resource: str) -> bool:
        profile = self._profiles.get((model, resource))
        return profile is not None and profile.count >= self.min_samples

    def explore_probability(self, model: str, resources: Iterable[str]) -> float:
        """``explore`` x the share of results the offered types still lack; never above it."""
        kinds = set(resources)
        if not kinds:
            return 0.0
        have = 0
        for resource in kinds:
            profile = self._profiles.get((model, resource))
            have += min(profile.count, self.min_samples) if profile else 0
        return self.explore * (1 - have / (self.min_samples * len(kinds)))

    def choose(
        self,
        model: str,
        slo: Slo,
        qos: str,
        offers: Sequence[Offer],
        rng: RandomSource,
        *,
        include_wait: bool = False,
    ) -> Choice | None:
        """Where ``model`` should run next (rules in the module docstring); None: nowhere."""
        _name("model", model)
        check_qos(qos)
        if not isinstance(slo, Slo):
            msg = f"slo must be a Slo, not {type(slo).__name__}"
            raise ValueError(msg)
        usable = [o for o in offers if o.wait_s != math.inf]
        if not usable:
            return None
        predicted = {o: self._predict(model, o, include_wait) for o in usable}
        meeting = [
            o
            for o in usable
            if self.profiled(model, o.resource) and self._meets(model, o, slo, predicted[o])
        ]
        to_learn = [o for o in usable if o.free > 0 and not self.profiled(model, o.resource)]
        if to_learn and (qos != "realtime" or not meeting):
            chance = self.explore_probability(model, (o.resource for o in usable))
            if chance > 0 and rng.random() < chance:
                pick = min(
                    to_learn, key=lambda o: (self._count(model, o), o.cost_per_hour, o.resource)
                )
                return Choice(pick.resource, predicted[pick], "explore", pick.wait_s)
        if meeting:
            free = [o for o in meeting if o.free > 0]
            if free:
                pick = min(free, key=lambda o: (o.cost_per_hour, predicted[o], o.resource))
            else:
                pick = min(meeting, key=lambda o: (o.wait_s, o.cost_per_hour, o.resource))
            return Choice(pick.resource, predicted[pick], "meets_slo", pick.wait_s)

        def best(o: Offer) -> tuple[bool, bool, float, float, str]:
            p95 = predicted[o]
            # A wait already in the prediction needs no second penalty.
            busy = o.free == 0 and not include_wait
            return (busy, p95 is None, p95 or 0.0, o.cost_per_hour, o.resource)

        pick = min(usable, key=best)
        return Choice(pick.resource, predicted[pick], "best_effort", pick.wait_s)

    def _profile(self, model: str, resource: str) -> Profile:
        key = (_name("model", model), _name("resource", resource))
        profile = self._profiles.get(key)
        if profile is None:
            sketch = QuantileSketch(self.relative_accuracy, self.half_life)
            profile = self._profiles[key] = Profile(
                model, resource, alpha=self.alpha, sketch=sketch
            )
        return profile

    def _count(self, model: str, offer: Offer) -> int:
        profile = self._profiles.get((model, offer.resource))
        return profile.count if profile else 0

    def _predict(self, model: str, offer: Offer, include_wait: bool) -> float | None:
        profile = self._profiles.get((model, offer.resource))
        p95 = profile.p95_ms if profile else None
        if p95 is None:
            return None
        return p95 + offer.wait_s * 1000 if include_wait else p95

    def _meets(self, model: str, offer: Offer, slo: Slo, p95: float | None) -> bool:
        if slo.latency_ms is not None and (p95 is None or p95 > slo.latency_ms):
            return False
        if slo.deadline_s is not None:
            profile = self._profiles[model, offer.resource]
            run_s = profile.run_s or 0.0
            return offer.wait_s + run_s <= slo.deadline_s
        return True
