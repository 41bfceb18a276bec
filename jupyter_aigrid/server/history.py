"""Run times of finished jobs, and the run-time predictions the policies plan with."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .frozen import EMPTY as _EMPTY
from .frozen import FrozenMap
from .model import Request

#: Finished jobs kept per job type for its median, per (type, GPUs) as recent siblings, and
#: per (owner, template, GPUs, code) for the same job run again.
_TYPE_SAMPLES = 64
_SIBLINGS = 8
_SAME_CODE = 5
#: Jobs of one kind submitted within this window of each other count as siblings (a sweep).
SIBLING_WINDOW_S = 7 * 86400.0

#: Where a prediction came from, most specific first: the same code run again by the same owner
#: with the same template and GPUs; a recent sibling; the job type's recent runs; the owner's,
#: the GPU count's and all jobs' means; the declared time limit (alone, or below the history's
#: figure); nothing at all.
SAME_CODE, SIBLING, TYPE, OWNER, GPUS, GLOBAL, LIMIT, NONE = (
    "same-code", "sibling", "type", "owner", "gpus", "global", "limit", "none",
)  # fmt: skip
BASES = (SAME_CODE, SIBLING, TYPE, OWNER, GPUS, GLOBAL, LIMIT, NONE)


@dataclass(frozen=True)
class Prediction:
    """A run time estimate and its ``basis`` (one of :data:`BASES`): what a policy sees through
    :meth:`History.estimate_s`, with where it came from. ``seconds`` is None only with basis
    ``none``."""

    seconds: float | None
    basis: str


def _code_key(request: Request) -> tuple[str, str, int, str]:
    return (request.owner, request.template, request.gpus, request.code_hash)


@dataclass(frozen=True)
class History:
    """Run times of finished jobs: the only source, with a declared time limit, of duration
    estimates. A job's own true duration is never here before it has ended.

    The same code run again by the same owner, template and GPU count takes about as long as
    it did before, so that match comes first (the median of its last few runs). Jobs of one
    kind submitted close together (a sweep, retries) run for similar times, far more alike
    than jobs of the same kind in general; so next comes the most recent finished sibling
    (same type and GPU count, submitted within a week of it), then the median of its type's
    recent runs, then the means of its owner and GPU count, then of all jobs.
    """

    by_type: Mapping[str, tuple[int, float]] = field(default_factory=lambda: _EMPTY)
    by_owner: Mapping[str, tuple[int, float]] = field(default_factory=lambda: _EMPTY)
    by_gpus: Mapping[int, tuple[int, float]] = field(default_factory=lambda: _EMPTY)
    total: tuple[int, float] = (0, 0.0)
    #: type -> (recent run times, their median)
    type_median: Mapping[str, tuple[tuple[float, ...], float]] = field(
        default_factory=lambda: _EMPTY
    )
    #: (type, GPUs) -> recent (submitted_at, run time), oldest first
    siblings: Mapping[tuple[str, int], tuple[tuple[float, float], ...]] = field(
        default_factory=lambda: _EMPTY
    )
    #: (owner, template, GPUs, code hash) -> (recent run times, their median). One key per
    #: distinct job, so a persistent map: adding to a long history copies no big dict.
    same_code: Mapping[tuple[str, str, int, str], tuple[tuple[float, ...], float]] = field(
        default_factory=FrozenMap
    )
    #: Estimates already worked out from this (immutable) history.
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    def add(self, request: Request, run_s: float) -> History:
        """This history plus one finished job that ran ``run_s`` seconds in all."""

        def plus(table: Mapping, key) -> Mapping:
            n, total = table.get(key, (0, 0.0))
            return MappingProxyType({**table, key: (n + 1, total + run_s)})

        kind = request.job_type
        type_median, siblings, same_code = self.type_median, self.siblings, self.same_code
        if kind:
            recent = (*type_median.get(kind, ((), 0.0))[0], run_s)[-_TYPE_SAMPLES:]
            ordered = sorted(recent)
            type_median = MappingProxyType(
                {**type_median, kind: (recent, ordered[len(ordered) // 2])}
            )
            key = (kind, request.gpus)
            mine = (*siblings.get(key, ()), (request.submitted_at, run_s))[-_SIBLINGS:]
            siblings = MappingProxyType({**siblings, key: mine})
        if request.code_hash:
            code = _code_key(request)
            runs = (*same_code.get(code, ((), 0.0))[0], run_s)[-_SAME_CODE:]
            same_code = same_code.set(code, (runs, statistics.median(runs)))
        return History(
            by_type=plus(self.by_type, kind) if kind else self.by_type,
            by_owner=plus(self.by_owner, request.owner),
            by_gpus=plus(self.by_gpus, request.gpus),
            total=(self.total[0] + 1, self.total[1] + run_s),
            type_median=type_median,
            siblings=siblings,
            same_code=same_code,
        )

    def estimate_s(self, request: Request) -> float | None:
        """Expected run time, capped by the declared time limit; or the limit alone; or None
        when nothing at all is known."""
        # The policies' hottest call: the memo lookup is inlined, not shared with predict().
        key = (request.job_type, request.gpus, request.submitted_at, request.owner)
        if request.code_hash:
            key = (*key, request.template, request.code_hash)
        try:
            found = self._memo[key]
        except KeyError:
            found = self._memo[key] = self._from_history(request)
        if found is None:
            return request.time_limit_s
        return min(found[0], request.time_limit_s) if request.time_limit_s else found[0]

    def predict(self, request: Request) -> Prediction:
        """What :meth:`estimate_s` says (the same figure, always), and which match gave it."""
        seconds = self.estimate_s(request)
        if seconds is None:
            return Prediction(None, NONE)
        key = (request.job_type, request.gpus, request.submitted_at, request.owner)
        if request.code_hash:
            key = (*key, request.template, request.code_hash)
        found = self._memo[key]
        return Prediction(seconds, LIMIT if found is None or seconds < found[0] else found[1])

    def _from_history(self, request: Request) -> tuple[float, str] | None:
        if request.code_hash:
            same = self.same_code.get(_code_key(request))
            if same:
                return same[1], SAME_CODE
        kind = request.job_type
        if kind:
            near = [
                run
                for submitted, run in self.siblings.get((kind, request.gpus), ())
                if abs(submitted - request.submitted_at) <= SIBLING_WINDOW_S
            ]
            if near:
                return near[-1], SIBLING
            samples, median = self.type_median.get(kind, ((), 0.0))
            if samples:
                return (median if len(samples) >= 3 else statistics.fmean(samples)), TYPE
        for table, key, basis in (
            (self.by_owner, request.owner, OWNER),
            (self.by_gpus, request.gpus, GPUS),
        ):
            found = table.get(key) if key else None
            if found:
                return found[1] / found[0], basis
        return (self.total[1] / self.total[0], GLOBAL) if self.total[0] else None
