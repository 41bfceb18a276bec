"""``/jobs/{id}/logs``: every rank's output as NDJSON lines, tailed or followed live."""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..logs import LogStream
from .base import AIGridHandler, query_bool, query_int

NDJSON = "application/x-ndjson; charset=utf-8"


class LogsHandler(AIGridHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        """Lines ``{"rank": R, "stream": "stdout"|"stderr", "line": "..."}``, one per line.

        ``rank`` picks one rank, ``tail`` starts with the last N lines of each stream,
        ``attempt`` reads one attempt of a restarted gang (default: the current one),
        ``follow=1`` keeps the response open until the job has ended and every line has
        been sent, moving on to the next attempt when the gang restarts.
        """
        self._stream = stream = LogStream(
            self.master,
            job_id,
            self.owner,
            self.is_admin,
            rank=query_int(self, "rank"),
            attempt=query_int(self, "attempt"),
            tail=query_int(self, "tail"),
            follow=query_bool(self, "follow"),
        )
        job = await stream.open()
        self.set_header("Content-Type", NDJSON)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        try:
            async for batch in stream.batches(job):
                self.write("".join(json.dumps(record) + "\n" for record in batch))
                await self.flush()
        except StreamClosedError:
            return
        self.finish(set_content_type=NDJSON)

    def on_connection_close(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.close()
