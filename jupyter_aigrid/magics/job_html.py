"""The HTML of a job's parts in the notebook's job widget: its placement, data staging,
checkpoints, what its owner may do with it, and its migration timeline.

Plain functions from a job view (``GET /jobs/{id}``) to HTML; everything from the job is
escaped. Nothing here decides anything: what a user may do is the job's ``actions`` and the
timeline is its ``migration.steps``, both computed by the master (``server/views.py``), so
the widget and the sidebar show the same. Sizes and times are written by
:mod:`jupyter_aigrid.formatting`.
"""

from __future__ import annotations

import html
from typing import Any

from ..formatting import format_bytes, format_duration

#: Background and text colour of a timeline step, by its status (``views.migration_steps``).
STEP_STYLES = {
    "done": "background:#c8e6c9",
    "active": "background:#1e88e5;color:white",
    "failed": "background:#e53935;color:white",
    "pending": "background:#f5f5f5;color:#9e9e9e",
    "skipped": "background:#f5f5f5;color:#9e9e9e;text-decoration:line-through",
}
#: What follows a step's name: the active one is still going, the failed one broke.
STEP_MARKS = {"active": " &hellip;", "failed": " &#10007;"}
MIGRATION_COLOURS = {"done": "#2e7d32", "failed": "#e53935", "active": "#1e88e5"}
CHECKPOINT_COLOURS = {"pending": "#1e88e5", "written": "#2e7d32", "timeout": "#e53935"}
_CELL = "border:1px solid #ccc;padding:2px 8px;text-align:center"


def badge(text: str, colour: str) -> str:
    """``text`` in white on a rounded ``colour`` label."""
    return (
        f'<span style="background:{colour};color:white;border-radius:3px;padding:0 6px">'
        f"{html.escape(text)}</span>"
    )


def placement_table(placement: list[dict[str, Any]]) -> str:
    """Nodes as rows, their GPUs as cells, each cell naming the rank on it."""
    if not placement:
        return ""
    rows: dict[str, list[str]] = {}
    for slot in placement:
        for gpu in slot["gpus"] or [{"index": None, "simulated": None}]:
            label = "CPU" if gpu["index"] is None else f"GPU {gpu['index']}"
            sim = " (simulated)" if gpu.get("simulated") else ""
            rows.setdefault(slot["node"], []).append(
                f'<td style="border:1px solid #ccc;padding:2px 6px">{label}{sim}: '
                f"<b>rank {slot['rank']}</b></td>"
            )
    head = "<tr><th style='text-align:left;padding-right:8px'>"
    body = "".join(f"{head}{html.escape(node)}</th>{''.join(c)}</tr>" for node, c in rows.items())
    return f"<table style='border-collapse:collapse'>{body}</table>"


def _nodes(nodes: Any) -> str:
    if not nodes:
        return "?"
    if isinstance(nodes, str):
        return html.escape(nodes)
    return html.escape(",".join(str(n) for n in nodes))


def _step_cells(step: dict[str, Any]) -> tuple[str, str]:
    """A timeline step's header (name, coloured by status) and its duration and bytes."""
    status = str(step.get("status") or "")
    style = STEP_STYLES.get(status, STEP_STYLES["pending"])
    head = (
        f'<th style="{_CELL};{style}" title="{html.escape(status)}">'
        f"{html.escape(str(step.get('phase')))}{STEP_MARKS.get(status, '')}</th>"
    )
    if step.get("duration_s") is None and step.get("bytes") is None:
        return head, f'<td style="{_CELL};color:#9e9e9e">-</td>'
    took, size = format_duration(step.get("duration_s")), format_bytes(step.get("bytes"))
    return head, f'<td style="{_CELL}">{took} &middot; {size}</td>'


def migration_html(job: dict[str, Any]) -> str:
    """A job's migration (``job["migration"]``) as a strip of the steps the master gave
    (``migration.steps``: each phase done, active, failed, pending or skipped, with its
    duration and bytes); ``""`` if the job has none. A failed migration shows its error."""
    m = job.get("migration")
    if not isinstance(m, dict):
        return ""
    state = str(m.get("state") or "")
    steps = [s for s in m.get("steps") or [] if isinstance(s, dict)]
    cells = [_step_cells(step) for step in steps]
    colour = MIGRATION_COLOURS.get(state, MIGRATION_COLOURS["active"])
    label = "resume" if m.get("kind") == "resume" else "migration"
    title = [
        f"<b>{label} {html.escape(str(m.get('id', '')))}</b>",
        badge(state or "?", colour),
        f"{_nodes(m.get('from'))} &rarr; {_nodes(m.get('to'))}",
    ]
    if m.get("checkpoint"):
        title.append(f"checkpoint {html.escape(str(m['checkpoint']))}")
    if m.get("duration_s") is not None:
        title.append(f"took {format_duration(m['duration_s'])}")
    if m.get("bytes") is not None:
        title.append(f"moved {format_bytes(m['bytes'])}")
    reason = f"<div><i>{html.escape(str(m['reason']))}</i></div>" if m.get("reason") else ""
    error = ""
    if m.get("error"):
        error = (
            f'<div style="color:{MIGRATION_COLOURS["failed"]}"><b>error:</b> '
            f"{html.escape(str(m['error']))}</div>"
        )
    table = ""
    if cells:
        heads, values = zip(*cells, strict=True)
        table = (
            "<table style='border-collapse:collapse;margin-top:2px'>"
            f"<tr>{''.join(heads)}</tr><tr>{''.join(values)}</tr></table>"
        )
    return (
        f"<div class='aigrid-migration'><div>{' &middot; '.join(title)}</div>"
        f"{reason}{table}{error}</div>"
    )


def staging_html(job: dict[str, Any]) -> str:
    """``staging data: 45% (115 MiB of 256 MiB)`` while the job's phase is ``staging``
    (its datasets verified, or copied, onto its nodes); ``""`` otherwise."""
    staging = job.get("staging")
    if job.get("phase") != "staging" or not isinstance(staging, dict):
        return ""
    total, done = staging.get("bytes"), staging.get("done") or 0
    text = "staging data"
    if isinstance(total, int) and total > 0 and isinstance(done, int):
        done = min(done, total)
        text += f": {100 * done // total}% ({format_bytes(done)} of {format_bytes(total)})"
    names = [str(d.get("dataset")) for d in staging.get("datasets") or [] if isinstance(d, dict)]
    if names:
        text += f" &middot; {html.escape(', '.join(dict.fromkeys(names)))}"
    return f"<div class='aigrid-staging'>{badge('staging', '#1e88e5')} {text}</div>"


def checkpoint_html(job: dict[str, Any]) -> str:
    """A job's latest checkpoint and pending request (``job["checkpoint"]``); ``""`` if none."""
    c = job.get("checkpoint")
    if not isinstance(c, dict):
        return ""
    latest, request = c.get("latest"), c.get("request")
    if not latest and not request:
        return "<div>checkpoints: listening, none written yet</div>" if c.get("listening") else ""
    parts = []
    if isinstance(latest, dict):
        step = latest.get("step")
        detail = [format_bytes(latest.get("bytes"))]
        if step is not None:
            detail.insert(0, f"step {html.escape(str(step))}")
        if latest.get("seconds") is not None:
            detail.append(f"written in {format_duration(latest['seconds'])}")
        parts.append(
            f"latest checkpoint <b>{html.escape(str(latest.get('name', '?')))}</b> "
            f"({', '.join(detail)})"
        )
    if isinstance(request, dict):
        state = str(request.get("state") or "?")
        text = f"checkpoint request {html.escape(str(request.get('id', '')))} " + badge(
            state, CHECKPOINT_COLOURS.get(state, "#616161")
        )
        if request.get("reason"):
            text += f" <i>{html.escape(str(request['reason']))}</i>"
        parts.append(text)
    return f"<div class='aigrid-checkpoint'>{' &middot; '.join(parts)}</div>"


#: The actions the widget offers, as the magic that does each.
ACTION_MAGICS = {"checkpoint": "%aigrid checkpoint {id}", "migrate": "%aigrid migrate {id}"}


def actions_html(job: dict[str, Any]) -> str:
    """What the owner may do with a running job now, as the master says (``job["actions"]``):
    the magic for each action allowed, the master's reason for each refused; ``""`` for a job
    that is not running (its state says it all) or a view without ``actions``."""
    actions = job.get("actions")
    if job.get("state") != "running" or not isinstance(actions, dict):
        return ""
    parts = []
    for name, magic in ACTION_MAGICS.items():
        verdict = actions.get(name)
        if not isinstance(verdict, dict):
            continue
        if verdict.get("allowed"):
            parts.append(f"<code>{html.escape(magic.format(id=job.get('id', '')))}</code>")
        else:
            why = html.escape(str(verdict.get("reason") or "not allowed now"))
            parts.append(f"{name}: <i>not now, {why}</i>")
    return f"<div class='aigrid-actions'>{' &middot; '.join(parts)}</div>" if parts else ""
