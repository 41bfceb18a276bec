"""``/events``: job state and placement changes as NDJSON, read back or followed live."""

from __future__ import annotations

import asyncio
import contextlib
import json

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..model import FINAL_STATES
from ..store import EVENTS_BATCH
from .base import AIGridHandler, query_bool, query_int
from .logs import NDJSON

#: A blank line this often keeps proxies from closing a quiet stream and finds gone clients.
HEARTBEAT_S = 10.0


class EventsHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        """Events ``{"seq", "time", "type", "schema_id", "job_id", "data"}``, one per line.

        ``since`` sends the events after that seq (without it: none, only new ones when
        following); ``job`` keeps one job's events; ``follow=1`` keeps the response open for
        new events (with ``job``, until that job has ended). The header ``X-AIGrid-Seq`` gives
        the seq the stream starts after, so a client can read the state first and then apply
        only what changed since.
        """
        self._closed = False
        job_id = self.get_query_argument("job", None) or None
        since = query_int(self, "since")
        follow = query_bool(self, "follow")
        signal = self.master.new_events() if follow else None
        records, seq = await self.master.events(self.owner, self.is_admin, since, job_id)
        self.set_header("Content-Type", NDJSON)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        self.set_header("X-AIGrid-Seq", str(since if since is not None else seq))
        try:
            seq = await self._send_all(records, seq, job_id)
            while follow and not self._closed:
                over = await self._job_over(job_id)
                if not over:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(signal.wait(), HEARTBEAT_S)
                    signal = self.master.new_events()
                records, seq = await self.master.events(self.owner, self.is_admin, seq, job_id)
                # The job's last events were stored before it read as ended: they are sent.
                seq = await self._send_all(records or ([] if over else [None]), seq, job_id)
                if over:
                    break
        except StreamClosedError:
            return
        self.finish(set_content_type=NDJSON)

    async def _send_all(self, records: list, seq: int, job_id: str | None) -> int:
        """Send ``records`` and, while batches come back full, the ones after them."""
        await self._send(records)
        while len(records) >= EVENTS_BATCH and not self._closed:
            records, seq = await self.master.events(self.owner, self.is_admin, seq, job_id)
            await self._send(records)
        return seq

    async def _send(self, records: list) -> None:
        self.write("".join("\n" if r is None else json.dumps(r) + "\n" for r in records))
        await self.flush()

    async def _job_over(self, job_id: str | None) -> bool:
        if job_id is None:
            return False
        job = await self.master.job(job_id, self.owner, self.is_admin)
        return job["state"] in FINAL_STATES

    def on_connection_close(self) -> None:
        self._closed = True
