"""How close run time predictions came to the real run times: what the simulator reports
per policy and basis, and what the master reports of the jobs it has run."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from .history import BASES, Prediction


@dataclass(frozen=True)
class PredictionError:
    """How close run time predictions came to the real run times. Of ``jobs`` jobs,
    ``predicted`` had a prediction; the figures are over those (jobs that ran 0 s left out),
    and None without any. The absolute percentage error is ``|predicted - real| / real`` (a
    fraction: 0.25 is 25 %); within 2x means between half and twice the real run time."""

    jobs: int
    predicted: int
    mape: float | None
    median_ape: float | None
    within_2x: float | None

    @property
    def coverage(self) -> float:
        """The share of jobs that had any prediction at all."""
        return self.predicted / self.jobs if self.jobs else 0.0


def prediction_errors(pairs: Iterable[tuple[Prediction, float]]) -> dict[str, PredictionError]:
    """Errors of ``(prediction, real run time)`` pairs: over all of them (key ``all``), then
    per basis that occurs, most specific first."""
    everything = list(pairs)
    groups: dict[str, list[tuple[Prediction, float]]] = {}
    for pair in everything:
        groups.setdefault(pair[0].basis, []).append(pair)
    ordered = [b for b in BASES if b in groups] + sorted(set(groups) - set(BASES))
    return {"all": _errors(everything), **{b: _errors(groups[b]) for b in ordered}}


def _errors(pairs: list[tuple[Prediction, float]]) -> PredictionError:
    scored = [(p.seconds, real) for p, real in pairs if p.seconds is not None and real > 0]
    predicted = sum(1 for p, _ in pairs if p.seconds is not None)
    if not scored:
        return PredictionError(len(pairs), predicted, None, None, None)
    ape = [abs(guess - real) / real for guess, real in scored]
    within = sum(1 for guess, real in scored if real / 2 <= guess <= 2 * real)
    return PredictionError(
        len(pairs), predicted, statistics.fmean(ape), statistics.median(ape), within / len(scored)
    )
