"""The live ipywidget of a job, and the event follower every live widget is updated by.

Each widget follows ``GET /events`` on a daemon thread of its own: an event about the job (or
any event, while it waits in the queue, since others move its position) makes it read the job
again. Nothing polls the master; only the elapsed time ticks locally, once a second.
"""

from __future__ import annotations

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
from ..formatting import format_duration
from ..vocabulary import FINAL_STATES
from .inference_line import inference_html, inference_view
from .job_html import (
    actions_html,
    badge,
    checkpoint_html,
    migration_html,
    placement_table,
    staging_html,
)

STATE_COLOURS = {
    "queued": "#9e9e9e",
    "starting": "#1e88e5",
    "running": "#43a047",
    "succeeded": "#2e7d32",
    "failed": "#e53935",
    "cancelled": "#757575",
    "preempted": "#fb8c00",
}
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


class JobWidget(widgets.VBox):
    """A job's state, queue position, placement, QoS class, elapsed time, the staging of its
    datasets, latest checkpoint, what its owner may do with it now and its migration timeline
    (see :mod:`~jupyter_aigrid.magics.job_html`), and for inference jobs the resource chosen
    for their SLO and how it went (see
    :func:`~jupyter_aigrid.magics.inference_line.inference_html`).

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
    #: What its owner may do now, as the master says: ``{"cancel"|"checkpoint"|"migrate":
    #: {"allowed", "reason"}}``.
    actions = AnyTrait(allow_none=True)

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
            self.actions = job.get("actions")
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
            badge(state, STATE_COLOURS.get(state, "#616161")),
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
        parts.append(f"elapsed {format_duration(self.elapsed_s)}")
        reason = f"<div><i>{html.escape(self.reason)}</i></div>" if self.reason else ""
        self._header.value = " &middot; ".join(parts) + reason
        self._grid.value = placement_table(self.placement)
        view = {
            "id": self.job_id,
            "state": self.state,
            "actions": self.actions,
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
            + actions_html(view)
            + migration_html(view)
        )

    def close(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        super().close()
