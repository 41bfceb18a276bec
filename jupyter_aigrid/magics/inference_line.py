"""An inference job's line in the job widget (:func:`inference_html`), and the small pieces
it shares with the profiles widget (:mod:`~jupyter_aigrid.magics.profiles`): how simulated
resources are named and labelled, numbers, rates and SLO verdicts."""

from __future__ import annotations

import html
import math
from typing import Any

from ..formatting import format_duration, format_latency_ms
from .job_html import badge

SIMULATED_COLOUR = "#ef6c00"
VERDICT_COLOURS = {True: "#2e7d32", False: "#e53935", None: "#9e9e9e"}
#: Why the master chose a resource (``Choice.reason``), as people read it.
REASONS = {
    "meets_slo": "predicted to meet the SLO at least cost",
    "explore": "no profile yet: run there to learn its latency",
    "best_effort": "no resource is predicted to meet the SLO: best effort",
}


def is_simulated(resource: str) -> bool:
    """``simulated`` and ``simulated:<model>`` name CPU slots that stand in for GPUs."""
    return resource == "simulated" or resource.startswith("simulated:")


def number(value: Any) -> float | None:
    """``value`` as a float, or None when it is not a number (bool and NaN are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def per_second(value: Any) -> str:
    """A throughput: ``12.5/s``; ``-`` when unknown."""
    v = number(value)
    return "-" if v is None else f"{v:.1f}/s"


def per_hour(value: Any) -> str:
    """A cost: ``2.50/h``; ``-`` when unknown."""
    v = number(value)
    return "-" if v is None else f"{v:.2f}/h"


def simulated_pill() -> str:
    return f'<span class="aigrid-simulated">{badge("SIMULATED", SIMULATED_COLOUR)}</span>'


def meets(p95_ms: Any, slo_ms: float | None) -> bool | None:
    """Whether a profile's p95 is within the SLO; None when either is unknown."""
    p95 = number(p95_ms)
    return None if p95 is None or slo_ms is None else p95 <= slo_ms


def inference_view(job: dict[str, Any]) -> dict[str, Any] | None:
    """A job's ``inference`` record; for an inference job whose record has none (the master
    has not chosen yet, or predates the field), what its spec asked for."""
    info = job.get("inference")
    if isinstance(info, dict):
        return info
    if job.get("kind") != "inference":
        return None
    spec = job.get("spec") or {}
    return {
        "model": spec.get("model"),
        "qos": spec.get("qos") or "interactive",
        "slo": spec.get("slo") or {},
        "resource": None,
        "predicted_p95_ms": None,
        "reason": None,
        "observed": None,
        "slo_met": None,
    }


def _slo_text(slo: Any) -> str:
    slo = slo if isinstance(slo, dict) else {}
    parts = []
    if slo.get("latency_ms") is not None:
        parts.append(f"p95 &le; {format_latency_ms(slo['latency_ms'])}")
    if slo.get("deadline_s") is not None:
        parts.append(f"deadline {format_duration(slo['deadline_s'])}")
    return "SLO " + (", ".join(parts) if parts else "-")


def inference_html(job: dict[str, Any]) -> str:
    """``inference resnet50 · QoS realtime · SLO p95 ≤ 50 ms · on NVIDIA H100 (why) · p95
    predicted 41 ms, observed 47 ms · SLO met``; ``""`` for jobs that are not inference."""
    info = inference_view(job)
    if info is None:
        return ""
    parts = [
        f"<b>inference</b> <code>{html.escape(str(info.get('model') or '?'))}</code>",
        f"QoS <b>{html.escape(str(info.get('qos') or 'interactive'))}</b>",
        _slo_text(info.get("slo")),
    ]
    resource = info.get("resource")
    if resource:
        where = f"on <b>{html.escape(str(resource))}</b>"
        if is_simulated(str(resource)):
            where += " " + simulated_pill()
        reason = info.get("reason")
        if reason:
            where += f" <i>({html.escape(REASONS.get(str(reason), str(reason)))})</i>"
        parts.append(where)
    else:
        parts.append("resource not chosen yet")
    observed = info.get("observed") if isinstance(info.get("observed"), dict) else {}
    predicted, seen = info.get("predicted_p95_ms"), observed.get("p95_ms")
    if number(predicted) is not None or number(seen) is not None:
        p95 = f"p95 predicted {format_latency_ms(predicted)}, observed {format_latency_ms(seen)}"
        if observed.get("count"):
            p95 += f" ({observed['count']} reports"
            if number(observed.get("throughput")) is not None:
                p95 += f", {per_second(observed['throughput'])}"
            p95 += ")"
        parts.append(p95)
    met = info.get("slo_met")
    verdict = {True: "SLO met", False: "SLO missed"}.get(met, "SLO not known yet")
    parts.append(badge(verdict, VERDICT_COLOURS.get(met, VERDICT_COLOURS[None])))
    return f"<div class='aigrid-inference'>{' &middot; '.join(parts)}</div>"
