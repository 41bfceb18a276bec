"""Live ipywidgets of a job and of the cluster, updated from the master's event stream.

Each widget follows ``GET /events`` on a daemon thread of its own: an event about the job (or
any event, while it waits in the queue, since others move its position) makes it read the job
again. Nothing polls the master; only the elapsed time ticks locally, once a second.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
from traitlets import Any as AnyTrait
from traitlets import Float, Int, List, Unicode

from ..client import AIGridError, Client
from ..vocabulary import FINAL_STATES
from .profiles import inference_html, inference_view

STATE_COLOURS = {
    "queued": "#9e9e9e",
    "starting": "#1e88e5",
    "running": "#43a047",
    "succeeded": "#2e7d32",
    "failed": "#e53935",
    "cancelled": "#757575",
    "preempted": "#fb8c00",
}
#: Distinct colours for the jobs in the cluster grid.
JOB_COLOURS = ("#42a5f5", "#66bb6a", "#ffa726", "#ab47bc", "#26c6da", "#ef5350", "#8d6e63")
RETRY_S = 2.0
log = logging.getLogger(__name__)


class EventFollower(threading.Thread):
    """Calls ``on_change(event | None)`` for each event (``None`` once the stream is open, so
    the state can be read after nothing can be missed); reconnects if the server goes away."""

    def __init__(
        self, client: Client, on_change: Callable[[dict | None], bool], name: str = "aigrid-events"
    ) -> None:
        super().__init__(name=name, daemon=True)
        # requests' sessions are not shared across threads: this thread gets its own.
        self.client = Client(client.url, client.token, timeout=client.timeout)
        self.on_change = on_change
        self._halt = threading.Event()
        self._stream = None

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                with self.client.events(follow=True) as stream:
                    self._stream = stream
                    if self.on_change(None):
                        return
                    for event in stream.records(heartbeats=True):
                        if self._halt.is_set():
                            return
                        if event is not None and self.on_change(event):
                            return
            except Exception:  # a widget must never take the kernel's threads down
                log.debug("AI Grid event stream broke; reconnecting", exc_info=True)
            self._halt.wait(RETRY_S)

    def wait_stopped(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True once the follower has been stopped."""
        return self._halt.wait(timeout)

    @property
    def stopped(self) -> bool:
        return self._halt.is_set()

    def stop(self) -> None:
        self._halt.set()
        if self._stream is not None:
            self._stream.close()


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def _badge(text: str, colour: str) -> str:
    return (
        f'<span style="background:{colour};color:white;border-radius:3px;padding:0 6px">'
        f"{html.escape(text)}</span>"
    )


class JobWidget(widgets.VBox):
    """A job's state, queue position, placement, QoS class, elapsed time, the staging of its
    datasets (see :func:`staging_html`), latest checkpoint and migration timeline (see
    :func:`migration_html`), and for inference jobs the resource chosen for their SLO and
    how it went (see :func:`~jupyter_aigrid.magics.profiles.inference_html`).

    The traits mirror ``GET /jobs/{id}``; ``placement`` is its list of slots (rank, node,
    GPUs). Created by ``%%aigrid run`` and ``%aigrid status``; ``close()`` stops following.
    """

    job_id = Unicode()
    job_name = Unicode()
    state = Unicode()
    reason = Unicode(allow_none=True)
    queue_position = Int(allow_none=True)
    placement = List()
    qos = Unicode()
    template = Unicode()
    image = Unicode()
    migration = AnyTrait(allow_none=True)
    checkpoint = AnyTrait(allow_none=True)
    #: What a starting job is doing (``staging``, ``restoring``, ...), and its data staging
    #: with the bytes done as the latest ``job_staging`` event said.
    phase = Unicode(allow_none=True)
    staging = AnyTrait(allow_none=True)
    elapsed_s = Float(allow_none=True)
    #: An inference job's ``inference`` record (model, qos, slo, resource, predictions).
    inference = AnyTrait(allow_none=True)

    def __init__(self, client: Client, job: dict[str, Any], follow: bool = True) -> None:
        self._header = widgets.HTML()
        self._grid = widgets.HTML()
        #: The staging line, the checkpoint line and the migration timeline (empty while
        #: there is none of them).
        self._timeline = widgets.HTML()
        super().__init__([self._header, self._grid, self._timeline])
        self.add_class("aigrid-job")
        self._client = Client(client.url, client.token, timeout=client.timeout)
        self._started: float | None = None
        #: (attempt, bytes done) of the latest staging progress event.
        self._staged: tuple[Any, int] | None = None
        self._lock = threading.Lock()
        self.update(job)
        self._follower: EventFollower | None = None
        if follow and job["state"] not in FINAL_STATES:
            self._follower = EventFollower(client, self._on_change, name=f"aigrid-job-{job['id']}")
            self._follower.start()
            threading.Thread(target=self._tick, name="aigrid-elapsed", daemon=True).start()

    def _on_change(self, event: dict | None) -> bool:
        """Read the job again when the change may concern it; True once it has ended."""
        mine = event is not None and event["job_id"] == self.job_id
        if mine and event.get("type") == "job_staging" and self._staging_progress(event["data"]):
            return False  # only the bytes moved: nothing else to read
        if mine or event is None or self.state == "queued":
            try:
                self.update(self._client.job(self.job_id))
            except AIGridError:
                return False
        return self.state in FINAL_STATES

    def _tick(self) -> None:
        follower = self._follower
        while follower is not None and not follower.wait_stopped(1.0):
            with self._lock:
                if self.state in FINAL_STATES:
                    return
                if self._started is not None:
                    self.elapsed_s = round(time.time() - self._started, 3)
                    self._render()

    def _staging_progress(self, data: dict[str, Any]) -> bool:
        """Take the bytes done from a ``job_staging`` event (the job stores them only at the
        start and the end); True if it was only progress."""
        with self._lock:
            self._staged = (data.get("attempt"), int(data.get("done") or 0))
            if data.get("state") != "progress":
                return False
            if isinstance(self.staging, dict) and self.staging.get("state") == "staging":
                self.staging = self._with_progress(self.staging)
                self._render()
            return True

    def _with_progress(self, staging: dict[str, Any]) -> dict[str, Any]:
        """``staging`` with the most bytes done that an event told of for its attempt."""
        if self._staged is None or self._staged[0] != staging.get("attempt"):
            return staging
        return {**staging, "done": max(int(staging.get("done") or 0), self._staged[1])}

    def update(self, job: dict[str, Any]) -> None:
        """Show ``job`` (a ``GET /jobs/{id}`` body)."""
        with self._lock:
            self.job_id = job["id"]
            self.job_name = job["name"]
            self.state = job["state"]
            self.reason = job.get("reason")
            self.queue_position = job.get("queue_position")
            self.placement = job.get("placement") or []
            self.inference = inference_view(job)
            # An inference job is served in its own class (realtime, interactive, batch).
            inference_qos = (self.inference or {}).get("qos")
            self.qos = inference_qos or job.get("qos") or job.get("priority", "")
            description = job.get("description") or {}
            self.template = description.get("template", "")
            self.image = (description.get("image") or {}).get("ref", "")
            self.migration = job.get("migration")
            self.checkpoint = job.get("checkpoint")
            self.phase = job.get("phase")
            staging = job.get("staging")
            self.staging = self._with_progress(staging) if isinstance(staging, dict) else None
            self.elapsed_s = job.get("elapsed_s")
            started = job.get("started_at")
            self._started = (
                dt.datetime.fromisoformat(started).timestamp()
                if started and job["state"] not in FINAL_STATES
                else None
            )
            self._render()

    def _render(self) -> None:
        state = self.state
        parts = [
            f"<b>job {html.escape(self.job_id)}</b> {html.escape(self.job_name)}",
            _badge(state, STATE_COLOURS.get(state, "#616161")),
        ]
        if self.queue_position:
            parts.append(f"queue position {self.queue_position}")
        parts.append(f"QoS {html.escape(self.qos)}")
        if self.template:
            parts.append(f"template {html.escape(self.template)}")
        if self.image:
            parts.append(f"image {html.escape(self.image)}")
        migration = self.migration
        if isinstance(migration, dict):
            migration = migration.get("state")
        parts.append(f"migration {html.escape(str(migration)) if migration else '-'}")
        parts.append(f"elapsed {_clock(self.elapsed_s)}")
        reason = f"<div><i>{html.escape(self.reason)}</i></div>" if self.reason else ""
        self._header.value = " &middot; ".join(parts) + reason
        self._grid.value = placement_table(self.placement)
        view = {
            "migration": self.migration,
            "checkpoint": self.checkpoint,
            "phase": self.phase,
            "staging": self.staging,
            "inference": self.inference,
        }
        self._timeline.value = (
            inference_html(view)
            + staging_html(view)
            + checkpoint_html(view)
            + migration_html(view, now=time.time())
        )

    def close(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        super().close()


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


#: A migration's phases, in the order they run.
MIGRATION_PHASES = ("checkpointing", "stopping", "transferring", "restoring")
MIGRATION_COLOURS = {
    "done": "#2e7d32",
    "failed": "#e53935",
    "current": "#1e88e5",
    "finished": "#c8e6c9",
    "pending": "#f5f5f5",
}
CHECKPOINT_COLOURS = {"pending": "#1e88e5", "written": "#2e7d32", "timeout": "#e53935"}
_CELL = "border:1px solid #ccc;padding:2px 8px;text-align:center"


def human_bytes(n: Any) -> str:
    """``12345678`` -> ``12.3 MB`` (decimal units); ``-`` when unknown."""
    if n is None:
        return "-"
    try:
        size = float(n)
    except (TypeError, ValueError):
        return html.escape(str(n))
    units = ("B", "kB", "MB", "GB", "TB")
    i = 0
    while abs(size) >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{int(size)} B" if i == 0 else f"{size:.1f} {units[i]}"


def human_seconds(s: Any) -> str:
    """``12.34`` -> ``12.3 s``, ``75`` -> ``1m 15s``; ``-`` when unknown."""
    if s is None:
        return "-"
    try:
        seconds = float(s)
    except (TypeError, ValueError):
        return html.escape(str(s))
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def _timestamp(iso: Any) -> float | None:
    try:
        return dt.datetime.fromisoformat(str(iso)).timestamp()
    except (TypeError, ValueError):
        return None


def _nodes(nodes: Any) -> str:
    if not nodes:
        return "?"
    if isinstance(nodes, str):
        return html.escape(nodes)
    return html.escape(",".join(str(n) for n in nodes))


def migration_html(job: dict[str, Any], now: float | None = None) -> str:
    """A job's migration (``job["migration"]``) as a strip of its phases; ``""`` if none.

    Each phase shows how long it took and the bytes it moved; the running one is highlighted
    (with its time so far when ``now``, a Unix time, is given), the ones still to come are
    grey, and a failed migration shows its error. Everything from the job is escaped.
    """
    m = job.get("migration")
    if not isinstance(m, dict):
        return ""
    state = str(m.get("state") or "")
    ended = state in ("done", "failed")
    phases = [p for p in m.get("phases") or [] if isinstance(p, dict)]
    seen = [str(p.get("phase")) for p in phases]
    # The phases still to come: those after the last one reached (none once it has ended).
    after = max((MIGRATION_PHASES.index(n) + 1 for n in seen if n in MIGRATION_PHASES), default=0)
    if not seen and m.get("kind") == "resume":
        after = len(MIGRATION_PHASES)  # a resume's phases are known only as they come
    pending = [] if ended else [n for n in MIGRATION_PHASES[after:] if n not in seen]

    heads, cells = [], []
    for i, p in enumerate(phases):
        name = seen[i]
        running = p.get("finished_at") is None and not ended
        # A failed migration's last unfinished phase is where it failed.
        broke = state == "failed" and p.get("finished_at") is None and i == len(phases) - 1
        if broke:
            style, mark = f"background:{MIGRATION_COLOURS['failed']};color:white", " &#10007;"
        elif running or (name == state and not ended):
            style, mark = f"background:{MIGRATION_COLOURS['current']};color:white", " &hellip;"
        else:
            style, mark = f"background:{MIGRATION_COLOURS['finished']}", ""
        took = p.get("duration_s")
        if took is None and running and now is not None:
            started = _timestamp(p.get("started_at"))
            took = None if started is None else max(0.0, now - started)
        heads.append(f'<th style="{_CELL};{style}">{html.escape(name)}{mark}</th>')
        cells.append(
            f'<td style="{_CELL}">{human_seconds(took)} &middot; {human_bytes(p.get("bytes"))}</td>'
        )
    for name in pending:
        # Just started, before the master has timed its first phase: the state is the phase.
        if name == state:
            style, mark = f"background:{MIGRATION_COLOURS['current']};color:white", " &hellip;"
        else:
            style, mark = f"background:{MIGRATION_COLOURS['pending']};color:#9e9e9e", ""
        heads.append(f'<th style="{_CELL};{style}">{html.escape(name)}{mark}</th>')
        cells.append(f'<td style="{_CELL};color:#9e9e9e">-</td>')

    colour = MIGRATION_COLOURS.get(state, MIGRATION_COLOURS["current"])
    label = "resume" if m.get("kind") == "resume" else "migration"
    title = [
        f"<b>{label} {html.escape(str(m.get('id', '')))}</b>",
        _badge(state or "?", colour),
        f"{_nodes(m.get('from'))} &rarr; {_nodes(m.get('to'))}",
    ]
    if m.get("checkpoint"):
        title.append(f"checkpoint {html.escape(str(m['checkpoint']))}")
    if m.get("started_at") and m.get("finished_at"):
        start, end = _timestamp(m["started_at"]), _timestamp(m["finished_at"])
        if start is not None and end is not None:
            title.append(f"took {human_seconds(max(0.0, end - start))}")
    reason = f"<div><i>{html.escape(str(m['reason']))}</i></div>" if m.get("reason") else ""
    error = ""
    if m.get("error"):
        error = (
            f'<div style="color:{MIGRATION_COLOURS["failed"]}"><b>error:</b> '
            f"{html.escape(str(m['error']))}</div>"
        )
    table = ""
    if heads:
        table = (
            "<table style='border-collapse:collapse;margin-top:2px'>"
            f"<tr>{''.join(heads)}</tr><tr>{''.join(cells)}</tr></table>"
        )
    return (
        f"<div class='aigrid-migration'><div>{' &middot; '.join(title)}</div>"
        f"{reason}{table}{error}</div>"
    )


def staging_html(job: dict[str, Any]) -> str:
    """``staging data: 45% (120.0 MB of 268.0 MB)`` while the job's phase is ``staging``
    (its datasets verified, or copied, onto its nodes); ``""`` otherwise."""
    staging = job.get("staging")
    if job.get("phase") != "staging" or not isinstance(staging, dict):
        return ""
    total, done = staging.get("bytes"), staging.get("done") or 0
    text = "staging data"
    if isinstance(total, int) and total > 0 and isinstance(done, int):
        done = min(done, total)
        text += f": {100 * done // total}% ({human_bytes(done)} of {human_bytes(total)})"
    names = [str(d.get("dataset")) for d in staging.get("datasets") or [] if isinstance(d, dict)]
    if names:
        text += f" &middot; {html.escape(', '.join(dict.fromkeys(names)))}"
    return f"<div class='aigrid-staging'>{_badge('staging', '#1e88e5')} {text}</div>"


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
        detail = [human_bytes(latest.get("bytes"))]
        if step is not None:
            detail.insert(0, f"step {html.escape(str(step))}")
        parts.append(
            f"latest checkpoint <b>{html.escape(str(latest.get('name', '?')))}</b> "
            f"({', '.join(detail)})"
        )
    if isinstance(request, dict):
        state = str(request.get("state") or "?")
        text = f"checkpoint request {html.escape(str(request.get('id', '')))} " + _badge(
            state, CHECKPOINT_COLOURS.get(state, "#616161")
        )
        if request.get("reason"):
            text += f" <i>{html.escape(str(request['reason']))}</i>"
        parts.append(text)
    return f"<div class='aigrid-checkpoint'>{' &middot; '.join(parts)}</div>"


class ClusterWidget(widgets.VBox):
    """Nodes x GPUs as a grid coloured by the job holding each GPU, simulated GPUs marked,
    utilisation shown where NVML gives it. Redrawn on every job event."""

    cluster = AnyTrait()

    def __init__(self, client: Client, follow: bool = True, utilisation_s: float = 5.0) -> None:
        self._html = widgets.HTML()
        super().__init__([self._html])
        self.add_class("aigrid-cluster")
        self._client = Client(client.url, client.token, timeout=client.timeout)
        self._lock = threading.Lock()
        self.refresh()
        self._follower: EventFollower | None = None
        if follow:
            self._follower = EventFollower(client, self._on_change, name="aigrid-cluster")
            self._follower.start()
            threading.Thread(
                target=self._utilisation, args=(utilisation_s,), name="aigrid-util", daemon=True
            ).start()

    def _on_change(self, event: dict | None) -> bool:
        with contextlib.suppress(AIGridError):
            self.refresh()
        return False

    def _utilisation(self, every_s: float) -> None:
        # NVML's counters change without events: only then is the grid read on a timer.
        while self._follower is not None and not self._follower.wait_stopped(every_s):
            if any("utilization_pct" in g for n in self.cluster["nodes"] for g in n["gpus"]):
                self._on_change(None)

    def refresh(self) -> None:
        with self._lock:
            self.cluster = self._client.cluster()
            self._html.value = cluster_grid(self.cluster)

    def close(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        super().close()


def cluster_grid(cluster: dict[str, Any]) -> str:
    colours: dict[str, str] = {}
    rows = []
    for node in cluster["nodes"]:
        cells = []
        for g in node["gpus"]:
            job = g.get("job_id")
            colour = "#eeeeee"
            if job is not None:
                colour = colours.setdefault(job, JOB_COLOURS[len(colours) % len(JOB_COLOURS)])
            title = f"{g['model']} {g['uuid']}"
            text = f"GPU {g['index']}"
            if job is not None:
                text += f"<br>job {html.escape(job)} r{g['rank']}"
            if "utilization_pct" in g:
                text += f"<br>{g['utilization_pct']}%"
            border = "2px dashed #999" if g["simulated"] else "1px solid #999"
            cells.append(
                f'<td title="{html.escape(title)}" style="background:{colour};border:{border};'
                f'padding:4px 8px;text-align:center;min-width:60px">{text}</td>'
            )
        rows.append(
            f"<tr><th style='text-align:left;padding-right:8px'>{html.escape(node['name'])}</th>"
            f"{''.join(cells)}</tr>"
        )
    simulated = (
        "<div><b>SIMULATED GPUs</b> (dashed): CPU slots, no real GPU on this machine.</div>"
        if cluster.get("simulated")
        else ""
    )
    summary = (
        f"<div>{cluster['gpus_free']}/{cluster['gpus_total']} GPUs free &middot; "
        f"{html.escape(cluster['executor'])} executor</div>"
    )
    return f"{summary}{simulated}<table style='border-collapse:collapse'>{''.join(rows)}</table>"
