"""The cluster widget: nodes x GPUs coloured by the job on each GPU, redrawn on every job
event (and on a timer only while NVML reports utilisation, which changes without events)."""

from __future__ import annotations

import contextlib
import html
import threading
from typing import Any

import ipywidgets as widgets
from traitlets import Any as AnyTrait

from ..client import AIGridError, Client
from ..formatting import format_bytes
from .widgets import EventFollower

#: Distinct colours for the jobs in the cluster grid.
JOB_COLOURS = ("#42a5f5", "#66bb6a", "#ffa726", "#ab47bc", "#26c6da", "#ef5350", "#8d6e63")
#: The master counts GPU memory in MiB (NVML's bytes / 2**20).
MIB = 1024**2


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
            if g.get("memory_mb"):
                used = g.get("memory_used_mb")
                total = format_bytes(g["memory_mb"] * MIB)
                title += f", memory {format_bytes(used * MIB)} / {total}" if used else f", {total}"
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
