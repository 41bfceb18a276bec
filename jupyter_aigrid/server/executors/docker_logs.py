"""A container's stdout and stderr, copied into its rank's log files on the master's machine.

While the master follows a container, one thread per stream appends what the engine sends
as it comes (:func:`follow_logs`). A container that ended while no master followed it has
its logs copied once, from where the files end (:func:`copy_remaining_logs`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

log = logging.getLogger(__name__)


def follow_logs(
    container: Any, name: str, stdout_path: str, stderr_path: str, resume: bool = False
) -> list[threading.Thread]:
    """Stream the container's stdout and stderr into the two files, as they come.

    ``resume`` (a restarted master adopting it): the engine sends the whole log again;
    what the files already hold is skipped, never written over, so nothing captured is
    lost and readers following the files by offset see each byte once. Returns the
    threads (daemons), which end with the container's streams."""
    threads = []
    for stream, path in (("stdout", stdout_path), ("stderr", stderr_path)):
        t = threading.Thread(
            target=_copy_logs,
            args=(container, stream, path, True, _size(path) if resume else 0),
            name=f"aigrid-logs-{name}-{stream}",
            daemon=True,
        )
        t.start()
        threads.append(t)
    return threads


def copy_remaining_logs(container: Any, stdout_path: str, stderr_path: str) -> None:
    """Append what the ended container's streams hold beyond what the files already have."""
    for stream, path in (("stdout", stdout_path), ("stderr", stderr_path)):
        _copy_logs(container, stream, path, False, _size(path))


def drain(threads: list[threading.Thread], timeout_s: float) -> None:
    """Wait, ``timeout_s`` at most in all, for the following threads to write their last."""
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _copy_logs(container: Any, stream: str, path: str, follow: bool, skip: int = 0) -> None:
    """Write one of the container's streams to ``path``: as it comes, or what there is.

    The first ``skip`` bytes are what ``path`` already holds of it: they are passed over and
    the rest appended."""
    try:
        chunks = container.logs(
            stdout=stream == "stdout", stderr=stream == "stderr", stream=True, follow=follow
        )
        with open(path, "ab" if skip else "wb") as out:
            for chunk in chunks:
                cut = min(skip, len(chunk))
                skip -= cut
                out.write(chunk[cut:])
                out.flush()
    except Exception as e:
        log.debug("AI Grid: log stream of %s ended: %s", getattr(container, "name", "?"), e)
