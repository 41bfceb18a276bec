"""``/jobs/{id}/logs``: every rank's output as NDJSON lines, tailed or followed live."""

from __future__ import annotations

import asyncio
import json

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..logs import LogCursor
from ..model import FINAL_STATES
from ..spec import SpecError
from .base import AIGridHandler, query_bool, query_int

NDJSON = "application/x-ndjson; charset=utf-8"
FOLLOW_POLL_S = 0.05
#: How often a following stream re-reads the job's state (to know when to end).
STATE_POLL_S = 0.25


class LogsHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        """Lines ``{"rank": R, "stream": "stdout"|"stderr", "line": "..."}``, one per line.

        ``rank`` picks one rank, ``tail`` starts with the last N lines of each stream,
        ``attempt`` reads an earlier attempt of a restarted gang, ``follow=1`` keeps the
        response open until the job has ended and every line has been sent.
        """
        rank = query_int(self, "rank")
        tail = query_int(self, "tail")
        attempt = query_int(self, "attempt")
        follow = query_bool(self, "follow")
        job, files = await self.master.log_files(job_id, self.owner, self.is_admin, attempt)
        if rank is not None and rank >= job["replicas"]:
            msg = f"rank must be below the job's {job['replicas']} replica(s), got {rank}"
            raise SpecError(msg, field="rank")
        cursors = [LogCursor(r, s, p) for r, s, p in files if rank is None or r == rank]
        self.set_header("Content-Type", NDJSON)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        if tail is not None:
            for c in cursors:
                self._send(c, c.tail(tail))
        final = job["state"] in FINAL_STATES
        try:
            while True:
                for c in cursors:
                    while True:
                        self._send(c, c.read_lines(final=final or not follow))
                        await self.flush()
                        if c.eof:
                            break
                if final or not follow:
                    break
                await asyncio.sleep(FOLLOW_POLL_S)
                if self._state_due():
                    state = (await self.master.job(job_id, self.owner, self.is_admin))["state"]
                    final = state in FINAL_STATES
        except StreamClosedError:
            return
        self.finish(set_content_type=NDJSON)

    def _state_due(self) -> bool:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - getattr(self, "_last_state", 0.0) >= STATE_POLL_S:
            self._last_state = now
            return True
        return False

    def _send(self, cursor: LogCursor, lines: list[str]) -> None:
        for line in lines:
            self.write(
                json.dumps({"rank": cursor.rank, "stream": cursor.stream, "line": line}) + "\n"
            )
