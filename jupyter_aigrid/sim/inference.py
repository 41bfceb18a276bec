"""A discrete-event simulator of inference requests with QoS on a heterogeneous cluster.

The cluster is a few *resource types*, each a pool of identical units (GPUs or CPU slots)
with a price per unit-hour and a *slowdown*: a request's service time on it is the one on
the reference type times the slowdown. Requests of each QoS class arrive as a Poisson
process; a request's service time on the reference is lognormal (``median_ms``, ``sigma``),
drawn once per request, so every policy serves the very same requests. A request's latency
is its queueing wait plus its service time.

A *policy* sends each request to a resource type when it arrives. There it waits in the
type's queue, served realtime first, then interactive, then batch (FIFO within a class), and
runs to completion on one unit, with one exception: batch only fills idle capacity, so a
realtime request that finds no unit free takes the unit of the batch request that started
last, which loses its progress and goes back to the policy to be placed again.

Policies: ``profile`` asks :meth:`ProfileBook.choose` with one offer per type (``free``:
units free now, for realtime counting those running batch; ``wait_s``: the wait for a unit,
estimated from the profiles' mean service times of what runs and what queues ahead of the
request) and the wait counted in the latency, and feeds each completed request's service
time back into the book; ``least_loaded`` picks the type with the fewest requests (running
and queued) per unit; ``round_robin`` cycles over all units. The last two never look at
speed, which is what they cost.

*Load* is offered work over capacity, both in reference-unit-seconds per second:
``sum over classes of rate x mean service time on the reference`` over ``sum over types of
units / slowdown``. :meth:`Workload.at_load` sets the rates so that the classes split the
offered work by their ``share``.

*Cost* is what busy units cost: busy unit-hours (lost, preempted work included) times the
type's price, per hour of simulated arrivals. Reserved capacity costs the same under every
policy and is left out.

A :class:`Degradation` multiplies a type's service times by ``factor`` for every request
that starts on it from ``at_s`` on: the profile policy must notice from results alone.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
from collections import deque
from dataclasses import dataclass, field, replace

from ..server.profiles import Offer, ProfileBook, Slo, check_qos

POLICIES = ("profile", "least_loaded", "round_robin")
_PRIORITY = {"realtime": 0, "interactive": 1, "batch": 2}


@dataclass(frozen=True)
class ResourceType:
    name: str
    units: int
    slowdown: float
    cost_per_hour: float


@dataclass(frozen=True)
class QosClass:
    qos: str
    model: str
    slo: Slo
    median_ms: float  # on the reference type
    sigma: float
    share: float = 0.0  # of the offered work
    rate: float = 0.0  # requests per second; at_load() sets it from share

    def __post_init__(self) -> None:
        check_qos(self.qos)

    @property
    def mean_ms(self) -> float:
        return self.median_ms * math.exp(self.sigma**2 / 2)


@dataclass(frozen=True)
class Degradation:
    resource: str
    factor: float
    at_s: float


@dataclass(frozen=True)
class Workload:
    resources: tuple[ResourceType, ...]
    classes: tuple[QosClass, ...]
    duration_s: float  # arrivals stop then; the requests in flight still finish
    reference: str

    def __post_init__(self) -> None:
        names = [r.name for r in self.resources]
        if len(set(names)) != len(names) or any(r.units < 1 for r in self.resources):
            msg = f"resources must have distinct names and >= 1 unit each, not {self.resources}"
            raise ValueError(msg)
        if self.reference not in names or next(
            r.slowdown != 1 for r in self.resources if r.name == self.reference
        ):
            msg = f"reference must name one of the resources ({names}), with slowdown 1"
            raise ValueError(msg)
        qos = [c.qos for c in self.classes]
        if len(set(qos)) != len(qos):
            msg = f"classes must have distinct qos, not {qos}"
            raise ValueError(msg)

    @property
    def capacity(self) -> float:
        """Reference units: what the cluster serves per second, in reference-seconds."""
        return sum(r.units / r.slowdown for r in self.resources)

    @property
    def load(self) -> float:
        return sum(c.rate * c.mean_ms / 1000 for c in self.classes) / self.capacity

    def at_load(self, load: float) -> Workload:
        total = sum(c.share for c in self.classes)
        classes = tuple(
            replace(c, rate=load * self.capacity * c.share / total / (c.mean_ms / 1000))
            for c in self.classes
        )
        return replace(self, classes=classes)


def reference_workload(load: float = 0.7, duration_s: float = 120.0) -> Workload:
    """4 fast dear GPUs, 12 GPUs 4x slower at a seventh of the price, 32 CPU slots 20x slower.

    Realtime (a small ranking model, p95 <= 20 ms) is met only on the fast GPUs;
    interactive (an image model, p95 <= 200 ms) also on the slow ones; batch (done within
    30 s) anywhere.
    """
    resources = (
        ResourceType("simulated:a100", 4, 1.0, 2.5),
        ResourceType("simulated:t4", 12, 4.0, 0.35),
        ResourceType("cpu", 32, 20.0, 0.1),
    )
    classes = (
        QosClass("realtime", "ranker", Slo(latency_ms=20), 4.0, 0.3, share=0.15),
        QosClass("interactive", "vision", Slo(latency_ms=200), 20.0, 0.4, share=0.35),
        QosClass("batch", "embed", Slo(deadline_s=30), 250.0, 0.3, share=0.5),
    )
    return Workload(resources, classes, duration_s, "simulated:a100").at_load(load)


@dataclass(frozen=True)
class ClassMetrics:
    requests: int
    slo_attainment: float
    mean_ms: float
    p95_ms: float
    #: resource type -> share of this class's requests that ran there (last placement).
    placed: dict[str, float]


@dataclass(frozen=True)
class InferenceResult:
    policy: str
    load: float
    classes: dict[str, ClassMetrics]
    cost_per_hour: float
    preemptions: int
    reasons: dict[str, int] = field(default_factory=dict)  # profile policy: choices by reason


@dataclass
class _Request:
    qos: int
    arrival: float
    z: float  # standard normal: the same "difficulty" wherever the request runs
    end: float = math.nan
    resource: int = -1
    started: float = 0.0
    token: int = 0


class _Pool:
    def __init__(self, kind: ResourceType) -> None:
        self.kind = kind
        self.running: list[_Request | None] = [None] * kind.units
        self.queues: tuple[deque[_Request], ...] = (deque(), deque(), deque())
        self.busy_s = 0.0

    def queued(self) -> int:
        return sum(len(q) for q in self.queues)

    def occupied(self) -> int:
        return sum(r is not None for r in self.running)


def _arrivals(workload: Workload, seed: int) -> list[_Request]:
    requests = []
    for cls in workload.classes:
        rng = random.Random(f"{seed}:{cls.qos}")  # noqa: S311 (a simulation, no secrets)
        t = rng.expovariate(cls.rate) if cls.rate > 0 else math.inf
        while t < workload.duration_s:
            requests.append(_Request(_PRIORITY[cls.qos], t, rng.gauss(0.0, 1.0)))
            t += rng.expovariate(cls.rate)
    requests.sort(key=lambda r: r.arrival)
    return requests


class _Simulation:
    def __init__(
        self, workload: Workload, policy: str, seed: int, degradation: Degradation | None
    ) -> None:
        if policy not in POLICIES:
            msg = f"policy must be one of {', '.join(POLICIES)}, not {policy!r}"
            raise ValueError(msg)
        self.workload = workload
        self.policy = policy
        self.degradation = degradation
        self.pools = [_Pool(r) for r in workload.resources]
        self.by_qos = {_PRIORITY[c.qos]: c for c in workload.classes}
        self.book = ProfileBook()
        self.rng = random.Random(f"{seed}:policy")  # noqa: S311
        self.units = itertools.cycle(
            [i for i, p in enumerate(self.pools) for _ in range(p.kind.units)]
        )
        self.events: list[tuple[float, int, int, int, int, _Request]] = []
        self.seq = itertools.count()
        self.preemptions = 0
        self.reasons: dict[str, int] = {}

    def run(self, requests: list[_Request]) -> None:
        pending = deque(requests)
        while pending or self.events:
            if self.events and (not pending or self.events[0][0] <= pending[0].arrival):
                now, _, pool, unit, token, request = heapq.heappop(self.events)
                if request.token == token:  # else it was preempted since
                    self._finish(now, pool, unit, request)
            else:
                request = pending.popleft()
                self._dispatch(request.arrival, request)

    def _service_s(self, request: _Request, pool: _Pool, now: float) -> float:
        cls = self.by_qos[request.qos]
        seconds = cls.median_ms / 1000 * pool.kind.slowdown * math.exp(cls.sigma * request.z)
        deg = self.degradation
        if deg is not None and deg.resource == pool.kind.name and now >= deg.at_s:
            seconds *= deg.factor
        return seconds

    def _start(self, now: float, index: int, unit: int, request: _Request) -> None:
        pool = self.pools[index]
        pool.running[unit] = request
        request.started = now
        request.token += 1
        end = now + self._service_s(request, pool, now)
        heapq.heappush(self.events, (end, next(self.seq), index, unit, request.token, request))

    def _dispatch(self, now: float, request: _Request) -> None:
        request.resource = self._place(request, now)
        self._enqueue(now, request.resource, request)

    def _enqueue(self, now: float, index: int, request: _Request) -> None:
        pool = self.pools[index]
        for unit, running in enumerate(pool.running):
            if running is None:
                self._start(now, index, unit, request)
                return
        if request.qos == 0:
            batch = [(r.started, u) for u, r in enumerate(pool.running) if r and r.qos == 2]
            if batch:
                _, unit = max(batch)
                victim = pool.running[unit]
                assert victim is not None
                victim.token += 1  # its completion event no longer counts
                pool.busy_s += now - victim.started
                self.preemptions += 1
                self._start(now, index, unit, request)
                self._dispatch(now, victim)  # back to the policy, from scratch
                return
        pool.queues[request.qos].append(request)

    def _finish(self, now: float, index: int, unit: int, request: _Request) -> None:
        pool = self.pools[index]
        pool.running[unit] = None
        pool.busy_s += now - request.started
        request.end = now
        if self.policy == "profile":
            cls = self.by_qos[request.qos]
            service = now - request.started
            self.book.observe(cls.model, pool.kind.name, service * 1000, now=now)
            self.book.observe_run(cls.model, pool.kind.name, service, now=now)
        for queue in pool.queues:
            if queue:
                self._start(now, index, unit, queue.popleft())
                return

    def _place(self, request: _Request, now: float) -> int:
        if self.policy == "round_robin":
            return next(self.units)
        if self.policy == "least_loaded":
            return min(
                range(len(self.pools)),
                key=lambda i: (
                    (self.pools[i].occupied() + self.pools[i].queued()) / self.pools[i].kind.units
                ),
            )
        cls = self.by_qos[request.qos]
        offers = [self._offer(request, pool, now) for pool in self.pools]
        choice = self.book.choose(cls.model, cls.slo, cls.qos, offers, self.rng, include_wait=True)
        assert choice is not None  # every pool is finite
        self.reasons[choice.reason] = self.reasons.get(choice.reason, 0) + 1
        return next(i for i, p in enumerate(self.pools) if p.kind.name == choice.resource)

    def _mean_s(self, qos: int, pool: _Pool) -> float:
        profile = self.book.get(self.by_qos[qos].model, pool.kind.name)
        return profile.ewma_ms / 1000 if profile and profile.ewma_ms is not None else 0.0

    def _offer(self, request: _Request, pool: _Pool, now: float) -> Offer:
        """Units free now (realtime may take batch's) or the wait the profiles predict."""
        kind = pool.kind
        takes = [r is None or (request.qos == 0 and r.qos == 2) for r in pool.running]
        free = sum(takes)
        if free:
            return Offer(kind.name, free, 0.0, kind.cost_per_hour)
        # When each unit frees, by the profiles; then the requests ahead take them in turn.
        frees = sorted(
            max(r.started + self._mean_s(r.qos, pool) - now, 0.0)
            for r in pool.running
            if r is not None
        )
        for qos in range(request.qos + 1):
            for ahead in pool.queues[qos]:
                soonest = heapq.heappop(frees)
                heapq.heappush(frees, soonest + self._mean_s(ahead.qos, pool))
        return Offer(kind.name, 0, frees[0], kind.cost_per_hour)

    def result(self, requests: list[_Request], since_s: float) -> InferenceResult:
        classes = {}
        for qos, cls in sorted(self.by_qos.items()):
            mine = [r for r in requests if r.qos == qos and r.arrival >= since_s]
            latency = sorted((r.end - r.arrival) * 1000 for r in mine)
            met = sum(_meets(cls.slo, ms) for ms in latency)
            placed: dict[str, float] = {}
            for r in mine:
                name = self.pools[r.resource].kind.name
                placed[name] = placed.get(name, 0.0) + 1 / len(mine)
            classes[cls.qos] = ClassMetrics(
                requests=len(mine),
                slo_attainment=met / len(mine) if mine else math.nan,
                mean_ms=statistics.fmean(latency) if mine else math.nan,
                p95_ms=latency[int(0.95 * (len(latency) - 1))] if mine else math.nan,
                placed=placed,
            )
        cost = sum(p.busy_s / 3600 * p.kind.cost_per_hour for p in self.pools)
        return InferenceResult(
            policy=self.policy,
            load=self.workload.load,
            classes=classes,
            cost_per_hour=cost / (self.workload.duration_s / 3600),
            preemptions=self.preemptions,
            reasons=dict(sorted(self.reasons.items())),
        )


def _meets(slo: Slo, latency_ms: float) -> bool:
    if slo.latency_ms is not None and latency_ms > slo.latency_ms:
        return False
    return slo.deadline_s is None or latency_ms <= slo.deadline_s * 1000


def simulate(
    workload: Workload,
    policy: str,
    seed: int = 0,
    degradation: Degradation | None = None,
    since_s: float = 0.0,
) -> InferenceResult:
    """Serve ``workload``'s requests (drawn from ``seed``) with ``policy``; the figures.

    The per-class figures count the requests that arrive from ``since_s`` on (0: all,
    the cold start included); cost and preemptions always cover the whole run.
    """
    requests = _arrivals(workload, seed)
    sim = _Simulation(workload, policy, seed, degradation)
    sim.run(requests)
    return sim.result(requests, since_s)
