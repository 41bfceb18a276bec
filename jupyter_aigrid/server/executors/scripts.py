"""A job's code as the script its replicas run: written once per attempt, where they read it.

Every executor writes the job's ``code`` with :func:`write_script` into a folder its replicas
can read (the job's scratch folder on the node, or a folder mounted read-only into the
containers) and runs it with :func:`runner_argv`. On Ray the function runs on the node, in
the replica's actor, so it takes plain values and needs nothing of the master.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ...safefs import write_atomic

#: The job reads its script and never writes it: a retry or a restore must find the code
#: the attempt was started with.
SCRIPT_MODE = 0o444
#: What runs a script: the runner sets up the job's side (logs, outputs, checkpoint signal).
RUNNER_MODULE = "jupyter_aigrid.runner"


def script_path(folder: str | Path, attempt: int) -> Path:
    """``<folder>/main-<attempt>.py``: one script per attempt, so a retry never overwrites
    the code an earlier attempt's replicas still read."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        msg = f"attempt must be an integer >= 0, got {attempt!r}"
        raise ValueError(msg)
    return Path(folder) / f"main-{attempt}.py"


def write_script(folder: str | Path, attempt: int, code: str) -> Path:
    """Write ``code`` as the attempt's script in ``folder`` (created if need be); its path.

    The write is atomic and durable (a replica never reads a torn script, and a crash
    leaves the old one or the new one), and the script is left read-only. The replicas of
    one attempt share the script: when it is already there, unchanged and read-only, it is
    kept as it is, so a gang pays for one durable write, not one per rank.
    """
    if not isinstance(code, str):
        msg = f"code must be Python source text (str), got {type(code).__name__}"
        raise TypeError(msg)
    path = script_path(folder, attempt)
    data = code.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if _already_written(path, data):
        return path
    write_atomic(path, data)
    # Through a descriptor opened without following links: a link planted at the script's
    # name (the job may write in its scratch folder) is never chmod-ed through.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, SCRIPT_MODE)
    finally:
        os.close(fd)
    return path


def runner_argv(python: str, script: str | Path, args: list[str]) -> list[str]:
    """The command line that runs ``script`` with ``args`` under ``python``, unbuffered."""
    return [python, "-u", "-m", RUNNER_MODULE, str(script), *args]


def _already_written(path: Path, data: bytes) -> bool:
    """Is ``path`` our read-only script holding exactly ``data`` (a regular file, not a link,
    with no other name a job could write it through)?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if (
            not stat.S_ISREG(st.st_mode)
            or stat.S_IMODE(st.st_mode) != SCRIPT_MODE
            or st.st_nlink != 1
            or st.st_uid != os.geteuid()
            or st.st_size != len(data)
        ):
            return False
        return f.read(len(data) + 1) == data
