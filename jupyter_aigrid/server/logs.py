"""Reading per-rank log files as lines: from the start, as a tail, or following them live."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..safefs import open_inside
from .model import FINAL_STATES
from .spec import SpecError

#: Longest line handed out in one piece; longer ones are split rather than held in memory.
MAX_LINE = 64 * 1024
#: The most of a file's end that a tail reads, however many lines are asked for.
MAX_TAIL_BYTES = 8 * 1024 * 1024


@dataclass
class LogCursor:
    """Where we are in one rank's stream: complete lines are handed out, a partial one waits."""

    rank: int
    stream: str
    path: Path
    offset: int = 0
    partial: bytes = field(default=b"")
    #: Whether the last read reached the end of the file (as it was then).
    eof: bool = True

    def read_lines(self, final: bool = False, limit: int = 1 << 20) -> list[str]:
        """New complete lines, at most ``limit`` bytes of them; :attr:`eof` says if more wait.

        With ``final`` (the writer has ended), a last line without a newline is complete too.
        """
        try:
            # Never a FIFO or a link a job left in place of its log: those would block us.
            with open_inside(self.path, self.path.parent) as f:
                f.seek(self.offset)
                data = f.read(limit)
        except FileNotFoundError:
            self.eof = True
            return []
        self.eof = len(data) < limit
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > MAX_LINE or (final and self.eof and self.partial):
            lines.append(self.partial)
            self.partial = b""
        return [line.decode("utf-8", errors="replace") for line in lines]

    def tail(self, lines: int) -> list[str]:
        """The last ``lines`` complete lines (within the last ``MAX_TAIL_BYTES``); the cursor
        moves past them."""
        try:
            with open_inside(self.path, self.path.parent) as f:
                size = os.fstat(f.fileno()).st_size
                pos, found = size, 0
                while pos > 0 and found <= lines and size - pos < MAX_TAIL_BYTES:
                    step = min(64 * 1024, pos)
                    pos -= step
                    f.seek(pos)
                    found += f.read(step).count(b"\n")
                f.seek(pos)
                data = f.read(size - pos)
        except OSError:
            return []
        *complete, self.partial = data.split(b"\n")
        if pos > 0 and complete:
            complete = complete[1:]  # the first piece may start mid-line
        self.offset = size
        return (
            [line.decode("utf-8", errors="replace") for line in complete[-lines:]] if lines else []
        )


#: How often a following reader looks for new lines, and re-reads the job's state.
FOLLOW_POLL_S = 0.05
STATE_POLL_S = 0.25


class LogStream:
    """One reader of a job's logs: a tail, everything, or following until the job ends.

    Following without a fixed ``attempt`` moves on to the next attempt when the gang restarts,
    so one stream shows a restarting job from its first line to its last.
    """

    def __init__(
        self,
        master,
        job_id: str,
        user: str,
        admin: bool,
        *,
        rank: int | None,
        attempt: int | None,
        tail: int | None,
        follow: bool,
    ) -> None:
        self.master = master
        self.job_id, self.user, self.admin = job_id, user, admin
        self.rank, self.attempt, self.tail, self.follow = rank, attempt, tail, follow
        self.cursors: list[LogCursor] = []
        self.current_attempt = -1
        self.closed = False

    def close(self) -> None:
        """The reader went away: stop at the next poll instead of when the job ends."""
        self.closed = True

    async def open(self) -> dict:
        """Check the request against the job (raising SpecError/NotFound), return the job."""
        job, files = await self.master.log_files(self.job_id, self.user, self.admin, self.attempt)
        if self.rank is not None and self.rank >= job["replicas"]:
            msg = f"rank must be below the job's {job['replicas']} replica(s), got {self.rank}"
            raise SpecError(msg, field="rank")
        self._use(job, files)
        return job

    def _use(self, job: dict, files: list[tuple[int, str, Path]]) -> None:
        self.current_attempt = job["attempt"] if self.attempt is None else self.attempt
        self.cursors = [
            LogCursor(r, s, p) for r, s, p in files if self.rank is None or r == self.rank
        ]

    async def batches(self, job: dict) -> AsyncIterator[list[dict]]:
        """Yield lists of ``{"rank", "stream", "line"}`` records until there is no more."""
        if self.tail is not None:
            yield [_record(c, line) for c in self.cursors for line in c.tail(self.tail)]
        final = job["state"] in FINAL_STATES
        last_state = asyncio.get_running_loop().time()
        while True:
            for batch in self._drain(final or not self.follow):
                yield batch
            if final or not self.follow or self.closed:
                return
            await asyncio.sleep(FOLLOW_POLL_S)
            now = asyncio.get_running_loop().time()
            if now - last_state < STATE_POLL_S:
                continue
            last_state = now
            job = await self.master.job(self.job_id, self.user, self.admin)
            final = job["state"] in FINAL_STATES
            if self.attempt is None and job["attempt"] != self.current_attempt:
                for batch in self._drain(final=True):
                    yield batch
                job, files = await self.master.log_files(self.job_id, self.user, self.admin)
                self._use(job, files)

    def _drain(self, final: bool) -> Iterator[list[dict]]:
        for c in self.cursors:
            while True:
                lines = c.read_lines(final=final)
                if lines:
                    yield [_record(c, line) for line in lines]
                if c.eof:
                    break


def _record(cursor: LogCursor, line: str) -> dict:
    return {"rank": cursor.rank, "stream": cursor.stream, "line": line}
