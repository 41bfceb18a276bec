"""Performance profiles and the QoS choice of a resource; the inference simulator."""

from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import replace

import pytest

from jupyter_aigrid.server.profiles import (
    QOS_CLASSES,
    Offer,
    Profile,
    ProfileBook,
    QuantileSketch,
    Slo,
)
from jupyter_aigrid.sim.inference import Degradation, reference_workload, simulate

Z95 = 1.6448536269514722
FAST, SLOW = "simulated:a100", "simulated:t4"


def lognormal(rng: random.Random, median_ms: float, sigma: float = 0.25) -> float:
    return rng.lognormvariate(math.log(median_ms), sigma)


def offers(*specs: tuple[str, float], free: int = 1) -> list[Offer]:
    return [Offer(name, free, 0.0, cost) for name, cost in specs]


def feed(book: ProfileBook, model: str, resource: str, median_ms: float, n: int) -> None:
    rng = random.Random(f"{resource}:{median_ms}")
    for i in range(n):
        book.observe(model, resource, lognormal(rng, median_ms), now=float(i))


# -- the sketch and the profile ------------------------------------------------------------


@pytest.mark.parametrize("accuracy", [0.01, 0.02])
def test_sketch_quantiles_within_relative_accuracy_of_exact(accuracy: float) -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3.0, 0.8) for _ in range(20_000)]
    sketch = QuantileSketch(accuracy, half_life=None)
    for v in values:
        sketch.add(v)
    ordered = sorted(values)
    for q in (0.01, 0.25, 0.5, 0.9, 0.95, 0.99):
        exact = ordered[math.ceil(q * len(ordered)) - 1]  # least x with F(x) >= q
        assert abs(sketch.quantile(q) / exact - 1) <= accuracy + 1e-9, q
    assert sketch.buckets < 1024  # bounded: log buckets, not one per value


def test_sketch_memory_is_bounded() -> None:
    sketch = QuantileSketch(0.01, half_life=None, max_buckets=64)
    for i in range(1, 5000):
        sketch.add(1.01**i)  # spans ~2,500 buckets' worth of range
    assert sketch.buckets <= 64
    # Collapsing merges the lowest buckets: high quantiles keep their accuracy.
    assert sketch.quantile(0.99) == pytest.approx(1.01 ** (0.99 * 4999), rel=0.02)


def test_profile_converges_to_lognormal_quantiles() -> None:
    rng = random.Random(3)
    median, sigma = 20.0, 0.3
    profile = Profile("m", FAST, sketch=QuantileSketch(0.01, half_life=None))
    for i in range(20_000):
        profile.observe(latency_ms=rng.lognormvariate(math.log(median), sigma), items=4, now=i)
    true_p95 = median * math.exp(Z95 * sigma)
    # 1% from the sketch, the rest sampling error of 20,000 draws (~0.5% at p95).
    assert profile.p50_ms == pytest.approx(median, rel=0.02)
    assert profile.p95_ms == pytest.approx(true_p95, rel=0.025)
    assert profile.ewma_ms == pytest.approx(median * math.exp(sigma**2 / 2), rel=0.1)
    # items per second of latency: 4 x E[1000 / latency]
    assert profile.throughput == pytest.approx(4000 / median * math.exp(sigma**2 / 2), rel=0.1)
    assert profile.count == 20_000
    assert profile.updated_at == 19_999


def test_decaying_profile_tracks_the_current_distribution() -> None:
    rng = random.Random(5)
    profile = Profile("m", FAST)  # the default decay
    for _ in range(1000):
        profile.observe(latency_ms=lognormal(rng, 10.0, 0.2), now=0)
    assert profile.p95_ms == pytest.approx(10 * math.exp(Z95 * 0.2), rel=0.2)
    for _ in range(300):  # ~6 half-lives later the old distribution is gone, tail included
        profile.observe(latency_ms=lognormal(rng, 80.0, 0.2), now=1)
    assert profile.p50_ms == pytest.approx(80.0, rel=0.15)
    assert profile.p95_ms == pytest.approx(80 * math.exp(Z95 * 0.2), rel=0.2)
    # ... and back down: the stale high tail must fade too.
    for _ in range(300):
        profile.observe(latency_ms=lognormal(rng, 10.0, 0.2), now=2)
    assert profile.p95_ms == pytest.approx(10 * math.exp(Z95 * 0.2), rel=0.2)


def test_sketch_and_profile_json_round_trip() -> None:
    rng = random.Random(11)
    book = ProfileBook()
    for i in range(500):
        book.observe("m", FAST, lognormal(rng, 15.0), items=2, now=float(i))
    book.observe_run("m", FAST, 42.0, now=600.0)
    book.observe("m", "cpu", 0.0, now=601.0)  # a zero latency is kept, not divided by
    rows = [json.loads(json.dumps(p.to_row())) for p in book.all()]
    again = ProfileBook.from_rows(rows)
    assert [p.to_row() for p in again.all()] == [p.to_row() for p in book.all()]
    restored = again.get("m", FAST)
    assert restored is not None
    assert restored.run_s == 42.0
    assert restored.updated_at == 600.0
    # The decay state survives: the same next results give the same quantiles.
    for v in (90.0, 95.0, 99.0, 120.0):
        book.observe("m", FAST, v, now=700.0)
        again.observe("m", FAST, v, now=700.0)
        assert again.get("m", FAST).p95_ms == pytest.approx(book.get("m", FAST).p95_ms)
    assert again.get("m", FAST).p95_ms > 60  # and those results moved it


def test_merge_adds_observations() -> None:
    a, b = QuantileSketch(half_life=None), QuantileSketch(half_life=None)
    for v in range(1, 101):
        a.add(float(v))
        b.add(float(v + 100))
    a.merge(b)
    assert a.count == 200
    assert a.quantile(0.5) == pytest.approx(100, rel=0.02)
    assert a.quantile(0.95) == pytest.approx(190, rel=0.02)


# -- choosing --------------------------------------------------------------------------------


def run_requests(
    book: ProfileBook,
    qos: str,
    medians: dict[str, float],
    costs: dict[str, float],
    slo: Slo,
    n: int,
    seed: int = 0,
) -> list[str]:
    """``n`` choices, each followed by its result from the chosen type's distribution."""
    rng, latency_rng = random.Random(seed), random.Random(seed + 1)
    picks = []
    for i in range(n):
        choice = book.choose("m", slo, qos, offers(*costs.items()), rng)
        assert choice is not None
        picks.append(choice.resource)
        latency = lognormal(latency_rng, medians[choice.resource])
        book.observe("m", choice.resource, latency, now=float(i))
    return picks


@pytest.mark.parametrize("seed", range(5))
def test_realtime_goes_to_the_resource_that_meets_its_slo(seed: int) -> None:
    medians = {FAST: 10.0, SLOW: 60.0}
    costs = {FAST: 3.0, SLOW: 0.5}  # the slow one is cheaper: cost alone would pick it
    book = ProfileBook(explore=0.1)
    picks = run_requests(book, "realtime", medians, costs, Slo(latency_ms=30), 600, seed)
    fast_profiled = [i for i, p in enumerate(picks) if p == FAST][book.min_samples - 1]
    assert fast_profiled < 200  # cold start is bounded
    assert set(picks[fast_profiled + 1 :]) == {FAST}
    assert picks.count(FAST) >= 600 - 200


def test_interactive_explores_then_never_uses_the_missing_resource() -> None:
    medians = {FAST: 10.0, SLOW: 60.0}
    costs = {FAST: 3.0, SLOW: 0.5}
    book = ProfileBook(explore=0.3)
    picks = run_requests(book, "interactive", medians, costs, Slo(latency_ms=30), 2000)
    both = max(
        [i for i, p in enumerate(picks) if p == r][book.min_samples - 1] for r in (FAST, SLOW)
    )
    assert both < 1500
    assert set(picks[both + 1 :]) == {FAST}


def test_realtime_never_explores_while_a_profiled_resource_meets() -> None:
    book = ProfileBook(explore=1.0)  # the bound at its loosest
    feed(book, "m", FAST, 10.0, 30)
    choices = [
        book.choose("m", Slo(latency_ms=30), "realtime", offers((FAST, 3), (SLOW, 0.5)), rng)
        for rng in (random.Random(s) for s in range(300))
    ]
    assert {c.resource for c in choices} == {FAST}
    assert {c.reason for c in choices} == {"meets_slo"}
    # interactive may: with probability explore x (1 - 20/40) = 0.5
    explored = [
        book.choose("m", Slo(latency_ms=30), "interactive", offers((FAST, 3), (SLOW, 0.5)), rng)
        for rng in (random.Random(s) for s in range(300))
    ]
    share = sum(c.reason == "explore" and c.resource == SLOW for c in explored) / 300
    assert 0.4 < share < 0.6


def test_realtime_explores_when_nothing_profiled_meets() -> None:
    book = ProfileBook(explore=1.0)
    feed(book, "m", SLOW, 60.0, 30)  # profiled, misses
    choices = [
        book.choose("m", Slo(latency_ms=30), "realtime", offers((FAST, 3), (SLOW, 0.5)), rng)
        for rng in (random.Random(s) for s in range(300))
    ]
    explored = [c for c in choices if c.reason == "explore"]
    assert 0.4 < len(explored) / 300 < 0.6  # explore x (1 - 20/40)
    assert {c.resource for c in explored} == {FAST}
    assert {(c.resource, c.reason) for c in choices if c not in explored} == {(SLOW, "best_effort")}


@pytest.mark.parametrize("bound", [0.05, 0.1, 0.3])
def test_exploration_rate_never_exceeds_its_bound(bound: float) -> None:
    book = ProfileBook(explore=bound)
    rng = random.Random(1)
    kinds = (("a", 1.0), ("b", 2.0), ("c", 3.0))
    n = 20_000
    explored = sum(
        book.choose("m", Slo(latency_ms=50), "interactive", offers(*kinds), rng).reason == "explore"
        for _ in range(n)
    )
    sd = math.sqrt(bound * (1 - bound) / n)
    assert abs(explored / n - bound) < 4 * sd  # nothing profiled yet: exactly the bound
    feed(book, "m", "a", 10.0, 20)  # a third of the results it needs: 2/3 of the bound
    explored = sum(
        book.choose("m", Slo(latency_ms=50), "interactive", offers(*kinds), rng).reason == "explore"
        for _ in range(n)
    )
    assert abs(explored / n - bound * 2 / 3) < 4 * sd


def test_exploration_over_a_learning_run_stays_under_the_bound() -> None:
    book = ProfileBook(explore=0.2)
    medians = {"a": 10.0, "b": 20.0, "c": 40.0}
    costs = {"a": 3.0, "b": 2.0, "c": 1.0}
    rng = random.Random(2)
    reasons = []
    for i in range(3000):
        choice = book.choose("m", Slo(latency_ms=100), "batch", offers(*costs.items()), rng)
        reasons.append(choice.reason)
        book.observe("m", choice.resource, lognormal(rng, medians[choice.resource]), now=i)
    assert 0 < reasons.count("explore") <= 0.2 * 3000
    assert reasons[-100:] == ["meets_slo"] * 100  # all profiled: c is cheapest and meets
    assert book.profiled("m", "a") and book.profiled("m", "b") and book.profiled("m", "c")


@pytest.mark.parametrize("qos", QOS_CLASSES)
def test_degraded_resource_is_abandoned_after_a_few_results(qos: str) -> None:
    book = ProfileBook()
    feed(book, "m", "cheap", 10.0, 200)
    feed(book, "m", "dear", 30.0, 200)
    slo, rng = Slo(latency_ms=50), random.Random(0)
    both = offers(("cheap", 1.0), ("dear", 3.0))
    assert book.choose("m", slo, qos, both, rng).resource == "cheap"
    latency_rng = random.Random(9)
    for results in range(1, 101):  # its latency rises from 10 ms to 80 ms
        book.observe("m", "cheap", lognormal(latency_rng, 80.0), now=1000.0 + results)
        if book.choose("m", slo, qos, both, rng).resource == "dear":
            break
    assert results <= 10
    assert book.choose("m", slo, qos, both, rng).reason == "meets_slo"


def test_cheapest_free_then_soonest_free() -> None:
    book = ProfileBook(explore=0.0)
    for name in ("a", "b", "c"):
        feed(book, "m", name, 10.0, 25)
    slo, rng = Slo(latency_ms=50), random.Random(0)
    busy = [Offer("a", 0, 3.0, 1.0), Offer("b", 2, 0.0, 2.0), Offer("c", 1, 0.0, 3.0)]
    assert book.choose("m", slo, "batch", busy, rng).resource == "b"  # a is busy
    waits = [Offer("a", 0, 3.0, 1.0), Offer("b", 0, 1.0, 2.0), Offer("c", 0, 1.0, 3.0)]
    choice = book.choose("m", slo, "batch", waits, rng)
    assert (choice.resource, choice.wait_s) == ("b", 1.0)  # soonest, then cheaper
    gone = [Offer("a", 0, math.inf, 1.0)]
    assert book.choose("m", slo, "batch", gone, rng) is None
    assert book.choose("m", slo, "batch", [], rng) is None


def test_deadline_rule() -> None:
    book = ProfileBook(explore=0.0)
    for name in ("near", "far"):
        feed(book, "m", name, 10.0, 25)
        book.observe_run("m", name, 10.0, now=0.0)
    rng = random.Random(0)
    near, far = Offer("near", 0, 5.0, 2.0), Offer("far", 0, 25.0, 1.0)
    # 25 + 10 > 30: the cheaper one misses the deadline
    assert book.choose("m", Slo(deadline_s=30), "batch", [near, far], rng).resource == "near"
    # both meet; neither is free now: the one free soonest
    assert book.choose("m", Slo(deadline_s=60), "batch", [near, far], rng).resource == "near"
    free_far = Offer("far", 1, 0.0, 1.0)
    assert book.choose("m", Slo(deadline_s=60), "batch", [near, free_far], rng) == (
        book.choose("m", Slo(deadline_s=60), "batch", [free_far], rng)
    )
    # nothing meets 12 s with a 10 s run: best effort, and it says so
    late = book.choose("m", Slo(deadline_s=12), "batch", [near, far], rng)
    assert late.reason == "best_effort"
    # without a run time only the wait is checked
    other = ProfileBook(explore=0.0)
    feed(other, "m", "near", 10.0, 25)
    assert other.choose("m", Slo(deadline_s=6), "batch", [near], rng).reason == "meets_slo"
    assert other.choose("m", Slo(deadline_s=4), "batch", [near], rng).reason == "best_effort"


def test_best_effort_picks_the_lowest_predicted_p95_free_now_first() -> None:
    book = ProfileBook(explore=0.0)
    feed(book, "m", "slow", 200.0, 25)
    feed(book, "m", "slower", 400.0, 25)
    feed(book, "m", "quick", 100.0, 25)
    rng, slo = random.Random(0), Slo(latency_ms=50)
    pool = [Offer("slow", 1, 0.0, 1.0), Offer("slower", 1, 0.0, 0.1), Offer("quick", 0, 2.0, 1)]
    choice = book.choose("m", slo, "realtime", pool, rng)
    assert (choice.resource, choice.reason) == ("slow", "best_effort")
    assert choice.predicted_p95_ms == pytest.approx(200 * math.exp(Z95 * 0.25), rel=0.2)
    # When the wait counts in the latency, 2 s of it makes "quick" the worst.
    pool[2] = Offer("quick", 0, 0.05, 1.0)  # 50 ms wait + ~150 ms p95 beats ~300 ms
    assert book.choose("m", slo, "realtime", pool, rng, include_wait=True).resource == "quick"


def test_choices_replay_exactly_from_a_seed() -> None:
    def run() -> list[str]:
        return run_requests(
            ProfileBook(explore=0.5),
            "batch",
            {"a": 10.0, "b": 20.0},
            {"a": 2.0, "b": 1.0},
            Slo(latency_ms=100),
            300,
            seed=4,
        )

    assert run() == run()


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda b: b.choose("m", Slo(1), "gold", [], random.Random()), "qos"),
        (lambda b: b.observe("m", "r", -1.0), "latency_ms"),
        (lambda b: b.observe("m", "r", math.nan), "latency_ms"),
        (lambda b: b.observe("m", "r", 5.0, items=0), "items"),
        (lambda b: b.observe("", "r", 5.0), "model"),
        (lambda b: b.observe_run("m", "r", -2.0), "run_s"),
        (lambda b: Offer("r", -1, 0.0, 1.0), "offer.free"),
        (lambda b: Offer("r", 1, -1.0, 1.0), "offer.wait_s"),
        (lambda b: Offer("r", 1, 0.0, -1.0), "offer.cost_per_hour"),
        (lambda b: Slo(latency_ms=0), "slo.latency_ms"),
        (lambda b: Slo(deadline_s=-5), "slo.deadline_s"),
        (lambda b: Slo.from_dict({"p99_ms": 5}), "p99_ms"),
        (lambda b: ProfileBook(explore=1.5), "explore"),
        (lambda b: ProfileBook(min_samples=0), "min_samples"),
        (lambda b: ProfileBook(alpha=0), "alpha"),
        (lambda b: QuantileSketch(relative_accuracy=1.0), "relative_accuracy"),
        (lambda b: QuantileSketch.from_json('{"version": 2}'), "version"),
        (lambda b: Profile.from_row({"model": "m", "resource": "r"}), "count"),
    ],
)
def test_bad_inputs_name_the_field(call, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        call(ProfileBook())


# -- the simulator ---------------------------------------------------------------------------


def test_simulated_profile_policy_beats_least_loaded_on_realtime() -> None:
    workload = reference_workload(load=0.7, duration_s=20)
    profile = simulate(workload, "profile", seed=0)
    blind = simulate(workload, "least_loaded", seed=0)
    assert profile.classes["realtime"].requests == blind.classes["realtime"].requests > 1000
    assert profile.classes["realtime"].slo_attainment >= 0.97
    assert profile.classes["realtime"].slo_attainment > blind.classes["realtime"].slo_attainment
    assert profile.classes["realtime"].placed[FAST] > 0.95
    assert blind.classes["realtime"].placed["cpu"] > 0.1  # least loaded sends some to CPUs
    assert profile.reasons["meets_slo"] > profile.reasons.get("explore", 0)


def test_simulated_degradation_moves_interactive_off_the_degraded_type() -> None:
    workload = reference_workload(load=0.5, duration_s=40)
    healthy = simulate(workload, "profile", seed=1, since_s=25)
    degraded = simulate(
        workload, "profile", seed=1, degradation=Degradation(SLOW, 3.0, 20.0), since_s=25
    )
    assert healthy.classes["interactive"].placed.get(SLOW, 0) > 0.5
    assert degraded.classes["interactive"].placed.get(SLOW, 0) < 0.05
    assert degraded.classes["interactive"].slo_attainment > 0.95
    assert (
        statistics.fmean(m.slo_attainment for m in degraded.classes.values())
        > statistics.fmean(m.slo_attainment for m in healthy.classes.values()) - 0.05
    )


def test_simulator_rejects_bad_workloads_and_policies() -> None:
    workload = reference_workload(load=0.5, duration_s=1)
    with pytest.raises(ValueError, match="reference"):
        replace(workload, reference="simulated:h100")
    with pytest.raises(ValueError, match="distinct qos"):
        replace(workload, classes=workload.classes * 2)
    with pytest.raises(ValueError, match="policy"):
        simulate(workload, "random")
