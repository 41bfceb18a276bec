"""A submitted job as the notebook holds it: its widget, its output, its result."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from IPython.display import display

from ..client import AIGridError, Client
from ..vocabulary import FINAL_STATES
from .transfer import JobFailed, RemoteError, decode_pull
from .widgets import JobWidget

OUTPUT_MODES = ("all", "rank0", "none")


class JobHandle:
    """What ``%%aigrid run --detach`` returns (and what every run is built on).

    In [1]: h = %aigrid run --detach --gpus 2 train.py
    In [2]: h.wait()          # blocks; returns the pulled values as a dict
    In [3]: h.cancel()        # or %aigrid cancel <id>
    In [4]: h.migrate("node-1")   # or %aigrid migrate <id> --node node-1; h.checkpoint()
    """

    def __init__(
        self,
        client: Client,
        job: dict[str, Any],
        pull: list[str] | None = None,
        widget: bool = True,
        code_name: str | None = None,
    ) -> None:
        self.client = client
        #: What tracebacks call the job's code (the cell, or the script's path).
        self.code_name = code_name
        self.id: str = job["id"]
        self.name: str = job["name"]
        self.pull = list(pull if pull is not None else job["spec"].get("outputs", []))
        self.job = job
        self.widget = JobWidget(client, job) if widget else None

    def __repr__(self) -> str:
        return f"<JobHandle {self.id} ({self.name}): {self.job['state']}>"

    def _repr_mimebundle_(self, **kwargs: Any):
        if self.widget is None:
            return {"text/plain": repr(self)}
        return self.widget._repr_mimebundle_(**kwargs)

    @property
    def state(self) -> str:
        return self.refresh()["state"]

    def refresh(self) -> dict[str, Any]:
        self.job = self.client.job(self.id)
        return self.job

    def cancel(self) -> dict[str, Any]:
        try:
            self.job = self.client.cancel(self.id)
        except AIGridError as e:
            if e.status != 409:  # it ended meanwhile: nothing to cancel
                raise
        return self.job

    def checkpoint(self) -> dict[str, Any]:
        """Ask the job's ranks for a checkpoint now; the job, its ``checkpoint.request``
        pending. ``AIGridError`` (409) if it is not running or does not listen for them."""
        return self._show(self.client.checkpoint(self.id))

    def migrate(self, node: str | None = None) -> dict[str, Any]:
        """Move the running job (checkpoint, stop, transfer, restore) onto ``node``, or where
        the scheduler finds room; the job, its ``migration`` under way. The widget follows it."""
        return self._show(self.client.migrate(self.id, node=node))

    def _show(self, job: dict[str, Any]) -> dict[str, Any]:
        self.job = job
        if self.widget is not None:
            self.widget.update(job)
        return job

    def stream(self, output: str = "all") -> None:
        """Print each rank's lines, ``[rank] line``, until the job ends (stderr to stderr)."""
        if output == "none":
            return
        rank = 0 if output == "rank0" else None
        for entry in self.client.logs(self.id, rank=rank, follow=True):
            out = sys.stderr if entry["stream"] == "stderr" else sys.stdout
            print(f"[{entry['rank']}] {entry['line']}", file=out, flush=True)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job ends; return the pulled values, or raise its error."""
        self.job = self.client.wait(self.id, timeout_s=timeout)
        return self.values()

    def values(self) -> dict[str, Any]:
        """The pulled values of a job that succeeded; ``RemoteError`` or ``JobFailed`` else."""
        job = self.job if self.job["state"] in FINAL_STATES else self.refresh()
        if self.widget is not None:
            self.widget.update(job)
        if job["state"] != "succeeded":
            error = self.client.result(self.id).get("error")
            if error is not None and job["state"] == "failed":
                raise RemoteError(self.id, error, job.get("reason"), self.code_name)
            raise JobFailed(job)
        values, failed = {}, []
        for name in self.pull:
            try:
                values[name] = decode_pull(self.client.output(self.id, name))
            except Exception as e:  # e.g. the kernel lacks a module the value needs
                failed.append(f"{name} ({type(e).__name__}: {e})")
        if failed:
            raise PullError(values, failed)
        return values


class PullError(RuntimeError):
    """Some pulled values could not be unpickled here; ``values`` holds the others."""

    def __init__(self, values: dict[str, Any], failed: list[str]) -> None:
        self.values = values
        super().__init__(f"could not bring back {', '.join(failed)}")


def run_blocking(handle: JobHandle, output: str) -> dict[str, Any]:
    """Stream the job's output until it ends, cancelling it on a kernel interrupt."""
    try:
        if handle.widget is not None:
            display(handle.widget)
        handle.stream(output)
        return handle.wait()
    except KeyboardInterrupt:
        _cancel_after_interrupt(handle)
        raise


def _cancel_after_interrupt(handle: JobHandle) -> None:
    print(f"interrupted: cancelling job {handle.id}", file=sys.stderr, flush=True)
    while True:
        try:
            handle.cancel()
            break
        except KeyboardInterrupt:  # a second Ctrl-C must not leave the job running
            continue
        except AIGridError as e:
            print(f"could not cancel job {handle.id}: {e}", file=sys.stderr)
            return
    with contextlib.suppress(KeyboardInterrupt, TimeoutError, AIGridError):
        handle.job = handle.client.wait(handle.id, timeout_s=60)
        if handle.widget is not None:
            handle.widget.update(handle.job)
