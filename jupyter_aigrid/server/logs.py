"""Reading per-rank log files as lines, from the start, as a tail, or following them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

#: Longest line handed out in one piece; longer ones are split rather than held in memory.
MAX_LINE = 64 * 1024


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
            with open(self.path, "rb") as f:
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
        """The last ``lines`` complete lines; the cursor moves past them."""
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                pos, found = size, 0
                while pos > 0 and found <= lines:
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
