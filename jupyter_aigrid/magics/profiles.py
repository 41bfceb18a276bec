"""What the notebook shows of the latency profiles the master learnt for inference with QoS
(:class:`ProfileWidget`, ``%aigrid profiles``): a plot, a table and plain text. An inference
job's own line in the job widget is :func:`~jupyter_aigrid.magics.inference_line.inference_html`.

The master keeps one profile per (model, resource type) and places an inference job on the
type that meets its SLO at least cost, so the widget puts exactly that side by side: p50 and
p95 per resource type against the SLO, and what each type costs. Simulated GPUs are CPU slots
whose latencies say nothing about a real GPU: they are labelled wherever they appear.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Iterable
from typing import Any

import ipywidgets as widgets
from traitlets import Any as AnyTrait
from traitlets import Float, Unicode

from ..client import Client
from ..formatting import format_latency_ms
from .inference_line import (
    SIMULATED_COLOUR,
    is_simulated,
    meets,
    number,
    per_hour,
    per_second,
    simulated_pill,
)

P50_COLOUR = "#90caf9"
P95_COLOUR = "#1e88e5"
SLO_COLOUR = "#e53935"
#: The plot's geometry in pixels: margins around the plot area, one group of bars per resource.
PLOT_HEIGHT = 230
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 56, 76, 30, 58
GROUP_W, BAR_W = 124, 32
LABEL_CHARS = 19
_CELL = "border:1px solid #ddd;padding:2px 8px"


def _when(value: Any) -> str:
    """A profile's ``updated_at`` (Unix time or ISO text) to the minute."""
    v = number(value)
    if v is not None:
        return dt.datetime.fromtimestamp(v).strftime("%Y-%m-%d %H:%M")
    return str(value)[:16].replace("T", " ") if value else "-"


# -- the profiles: plot, table, text -----------------------------------------------------------


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value``."""
    if value <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    return next(m * base for m in (1, 2, 5, 10) if m * base >= value * (1 - 1e-9))


def _label(resource: str) -> str:
    return resource if len(resource) <= LABEL_CHARS else resource[: LABEL_CHARS - 1] + "…"


def profile_plot_svg(
    rows: list[dict[str, Any]], slo_ms: float | None = None, title: str = ""
) -> str:
    """p50 and p95 bars per resource type (one model's profiles) on a linear millisecond
    axis from 0, with the SLO as a dashed horizontal line; ``""`` for no rows.

    Bars are ``<rect class="aigrid-p50|aigrid-p95" data-ms=...>`` and the line is ``<line
    class="aigrid-slo">``, so both can be read back; simulated resources are in a group of
    class ``aigrid-simulated``, drawn dashed and labelled SIMULATED.
    """
    if not rows:
        return ""
    values = [number(r.get(k)) for r in rows for k in ("p50_ms", "p95_ms")]
    top = max([v for v in values if v is not None] + [slo_ms or 0.0])
    y_max = _nice_ceiling(top * 1.1)
    plot_h = PLOT_HEIGHT - PAD_TOP - PAD_BOTTOM
    # Room for two groups at least, so that a lone resource leaves space for the legend.
    width = PAD_LEFT + PAD_RIGHT + GROUP_W * max(len(rows), 2)
    right = width - PAD_RIGHT
    bottom = PAD_TOP + plot_h

    def y(v: float) -> float:
        return PAD_TOP + plot_h * (1 - v / y_max)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="aigrid-profile-plot" width="{width}" '
        f'height="{PLOT_HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<text x="{PAD_LEFT}" y="14" font-weight="bold">{html.escape(title)}</text>',
        f'<rect x="{right - 96}" y="5" width="10" height="10" fill="{P50_COLOUR}"/>'
        f'<text x="{right - 82}" y="14">p50</text>'
        f'<rect x="{right - 52}" y="5" width="10" height="10" fill="{P95_COLOUR}"/>'
        f'<text x="{right - 38}" y="14">p95</text>',
    ]
    for i in range(6):
        tick = y_max * i / 5
        ty = y(tick)
        out.append(
            f'<line x1="{PAD_LEFT}" y1="{ty:.2f}" x2="{right}" y2="{ty:.2f}" stroke="#eee"/>'
            f'<text x="{PAD_LEFT - 4}" y="{ty + 4:.2f}" text-anchor="end">{tick:g}</text>'
        )
    out.append(
        f'<text x="12" y="{PAD_TOP + plot_h / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 12 {PAD_TOP + plot_h / 2:.0f})">latency (ms)</text>'
    )
    for i, row in enumerate(rows):
        resource = str(row.get("resource", "?"))
        simulated = is_simulated(resource)
        x0 = PAD_LEFT + GROUP_W * i
        centre = x0 + GROUP_W / 2
        dash = ' stroke="#555" stroke-dasharray="4 2" fill-opacity="0.6"' if simulated else ""
        group = ' class="aigrid-simulated"' if simulated else ""
        out.append(f'<g data-resource="{html.escape(resource)}"{group}>')
        for key, cls, colour, x in (
            ("p50_ms", "aigrid-p50", P50_COLOUR, centre - BAR_W - 2),
            ("p95_ms", "aigrid-p95", P95_COLOUR, centre + 2),
        ):
            v = number(row.get(key))
            if v is None:
                continue
            out.append(
                f'<rect class="{cls}" data-ms="{v:g}" x="{x:.2f}" y="{y(v):.2f}" '
                f'width="{BAR_W}" height="{bottom - y(v):.2f}" fill="{colour}"{dash}>'
                f"<title>{html.escape(resource)} {key[:3]}: {format_latency_ms(v)}</title></rect>"
                f'<text x="{x + BAR_W / 2:.2f}" y="{y(v) - 3:.2f}" text-anchor="middle" '
                f'font-size="9">{v:.3g}</text>'
            )
        if number(row.get("p50_ms")) is None and number(row.get("p95_ms")) is None:
            out.append(
                f'<text x="{centre:.2f}" y="{bottom - 6}" text-anchor="middle" '
                f'fill="#9e9e9e">no data</text>'
            )
        out.append(
            f'<text x="{centre:.2f}" y="{bottom + 15}" text-anchor="middle">'
            f"<title>{html.escape(resource)}</title>{html.escape(_label(resource))}</text>"
        )
        if simulated:
            out.append(
                f'<text x="{centre:.2f}" y="{bottom + 29}" text-anchor="middle" '
                f'fill="{SIMULATED_COLOUR}" font-weight="bold">SIMULATED</text>'
            )
        out.append("</g>")
    out.append(f'<line x1="{PAD_LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#555"/>')
    if slo_ms is not None:
        sy = y(slo_ms)
        out.append(
            f'<line class="aigrid-slo" data-ms="{slo_ms:g}" x1="{PAD_LEFT}" y1="{sy:.2f}" '
            f'x2="{right}" y2="{sy:.2f}" stroke="{SLO_COLOUR}" stroke-width="2" '
            f'stroke-dasharray="6 3"/>'
            f'<text x="{right + 4}" y="{sy + 4:.2f}" fill="{SLO_COLOUR}">'
            f"SLO {format_latency_ms(slo_ms)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _by_model(profiles: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Profiles grouped by model (in name order), fastest p95 first; unknown p95 last."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in profiles:
        grouped.setdefault(str(row.get("model", "?")), []).append(row)
    for rows in grouped.values():
        rows.sort(key=lambda r: (number(r.get("p95_ms")) is None, number(r.get("p95_ms")) or 0))
    return dict(sorted(grouped.items()))


_COLUMNS = ("resource", "count", "p50", "p95", "EWMA", "throughput", "cost/h")


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        str(row.get("count") if row.get("count") is not None else "-"),
        format_latency_ms(row.get("p50_ms")),
        format_latency_ms(row.get("p95_ms")),
        format_latency_ms(row.get("ewma_ms")),
        per_second(row.get("throughput")),
        per_hour(row.get("cost_per_hour")),
    ]


def profiles_table_html(payload: dict[str, Any], slo_ms: float | None = None) -> str:
    """One table row per (model, resource type), and whether its p95 meets ``slo_ms``."""
    grouped = _by_model(payload.get("profiles") or [])
    if not grouped:
        return ""
    heads = ["model", *_COLUMNS] + (["SLO"] if slo_ms is not None else []) + ["updated"]
    head = "".join(f'<th style="{_CELL};text-align:left">{html.escape(h)}</th>' for h in heads)
    body = []
    for model, rows in grouped.items():
        for row in rows:
            resource = str(row.get("resource", "?"))
            label = html.escape(resource)
            if is_simulated(resource):
                label += " " + simulated_pill()
            cells = [f"<code>{html.escape(model)}</code>", label, *_cells(row)]
            if slo_ms is not None:
                met = meets(row.get("p95_ms"), slo_ms)
                cells.append({True: "meets", False: "misses", None: "?"}[met])
            cells.append(html.escape(_when(row.get("updated_at"))))
            align = ["left", "left"] + ["right"] * (len(cells) - 2)
            body.append(
                "<tr>"
                + "".join(
                    f'<td style="{_CELL};text-align:{a}">{c}</td>'
                    for c, a in zip(cells, align, strict=True)
                )
                + "</tr>"
            )
    return (
        f"<table class='aigrid-profiles' style='border-collapse:collapse'><tr>{head}</tr>"
        f"{''.join(body)}</table>"
    )


def resources_html(payload: dict[str, Any]) -> str:
    """The resource types of the cluster: GPUs free of all, and cost per GPU-hour."""
    items = []
    for r in payload.get("resources") or []:
        resource = str(r.get("resource", "?"))
        text = f"<b>{html.escape(resource)}</b>"
        if is_simulated(resource):
            text += " " + simulated_pill()
        if r.get("gpus"):
            text += f" {r.get('free', '?')}/{r['gpus']} free"
        items.append(f"{text} {per_hour(r.get('cost_per_hour'))}")
    return f"<div>resources: {' &middot; '.join(items)}</div>" if items else ""


def _simulated_note(payload: dict[str, Any]) -> str:
    names = [str(r.get("resource", "")) for r in payload.get("profiles") or []]
    names += [str(r.get("resource", "")) for r in payload.get("resources") or []]
    if not any(is_simulated(n) for n in names):
        return ""
    return (
        f"<div>{simulated_pill()} resources are CPU slots standing in for GPUs: their "
        "latencies are measured on the CPU, not on the GPU they are named after.</div>"
    )


def _empty_text(model: str | None) -> str:
    what = f"of model {model} " if model else ""
    return (
        f"no latency profiles {what}yet: the master learns them from inference jobs "
        "(%%aigrid infer) that call runtime.report(latency_ms=..., items=...)"
    )


def profiles_text(
    payload: dict[str, Any], slo_ms: float | None = None, model: str | None = None
) -> str:
    """The profiles as a fixed-width table, for terminals and plain-text front ends."""
    grouped = _by_model(payload.get("profiles") or [])
    if not grouped:
        return _empty_text(model)
    heads = ["MODEL", *(c.upper() for c in _COLUMNS)] + (["SLO"] if slo_ms is not None else [])
    rows = []
    for name, profiles in grouped.items():
        for row in profiles:
            resource = str(row.get("resource", "?"))
            if is_simulated(resource):
                resource += " (SIMULATED)"
            cells = [name, resource, *_cells(row)]
            if slo_ms is not None:
                met = meets(row.get("p95_ms"), slo_ms)
                cells.append({True: "meets", False: "misses", None: "?"}[met])
            rows.append(cells)
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    header = "  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()
    if slo_ms is not None:
        header = f"SLO p95 {format_latency_ms(slo_ms)}\n{header}"
    return "\n".join([header, *lines])


class ProfileWidget(widgets.VBox):
    """Latency per resource type of one model (or every model): a p50/p95 bar plot per model
    with the SLO as a line, a table (count, p50, p95, EWMA, throughput, cost/h), and the
    cluster's resource types with their cost. Simulated resources are labelled SIMULATED.

    In [1]: %aigrid profiles --model resnet50 --slo 50ms
    In [2]: w = _; w.refresh()          # read GET /profiles again

    Built from the ``GET /profiles`` body (``payload``); without a ``client`` it shows a
    given payload and cannot refresh.
    """

    payload = AnyTrait()
    model = Unicode(allow_none=True)
    slo_ms = Float(allow_none=True)

    def __init__(
        self,
        client: Client | None = None,
        model: str | None = None,
        slo_ms: float | None = None,
        payload: dict[str, Any] | None = None,
    ) -> None:
        self._title = widgets.HTML()
        self._button = widgets.Button(description="Refresh", icon="refresh")
        self._plots = widgets.HTML()
        self._table = widgets.HTML()
        self._notes = widgets.HTML()
        super().__init__(
            [widgets.HBox([self._title, self._button]), self._plots, self._table, self._notes]
        )
        self.add_class("aigrid-profiles")
        self._client = client
        self.model = model
        self.slo_ms = slo_ms
        self._button.on_click(lambda _: self.refresh())
        self._button.disabled = client is None
        if payload is not None:
            self.show(payload)
        elif client is not None:
            self.refresh()
        else:
            msg = "ProfileWidget needs a client to read GET /profiles, or a payload to show"
            raise ValueError(msg)

    def refresh(self) -> dict[str, Any]:
        """Read the profiles from the master again and show them; the payload."""
        if self._client is None:
            msg = "this ProfileWidget was built from a payload and has no client to refresh with"
            raise RuntimeError(msg)
        payload = self._client.profiles(self.model)
        self.show(payload)
        return payload

    def show(self, payload: dict[str, Any]) -> None:
        """Draw ``payload`` (a ``GET /profiles`` body)."""
        self.payload = payload
        grouped = _by_model(payload.get("profiles") or [])
        what = f"model <code>{html.escape(self.model)}</code>" if self.model else "every model"
        slo = (
            f" &middot; SLO p95 {format_latency_ms(self.slo_ms)}" if self.slo_ms is not None else ""
        )
        self._title.value = f"<b>latency profiles</b> of {what}{slo}"
        if not grouped:
            self._plots.value = f"<div><i>{html.escape(_empty_text(self.model))}</i></div>"
        else:
            plots = [profile_plot_svg(rows, self.slo_ms, name) for name, rows in grouped.items()]
            self._plots.value = (
                "<div style='display:flex;flex-wrap:wrap;gap:12px'>"
                + "".join(f"<div>{p}</div>" for p in plots)
                + "</div>"
            )
        self._table.value = profiles_table_html(payload, self.slo_ms)
        self._notes.value = resources_html(payload) + _simulated_note(payload)

    def __repr__(self) -> str:
        return profiles_text(self.payload or {}, self.slo_ms, self.model)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        # ipywidgets cuts text/plain at 110 characters: a table needs all of it.
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        return {**bundle, "text/plain": repr(self)}
