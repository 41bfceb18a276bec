"""The REST and log-stream client: the only way the CLI, magics and widgets reach the master.

>>> from jupyter_aigrid.client import Client
>>> c = Client()                      # finds the running Jupyter server and its token
>>> job = c.submit({"code": "print('hi')", "gpus": 2})
>>> for entry in c.logs(job["id"], follow=True):
...     print(entry["rank"], entry["line"])
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import requests

from .uploading import upload_dataset
from .vocabulary import FINAL_STATES
from .wire import CHUNK_BYTES, AIGridError

__all__ = ["CHUNK_BYTES", "AIGridError", "Client"]

API = "aigrid/api"
#: Seconds without even a heartbeat after which an event stream counts as dead.
EVENTS_SILENCE_S = 35.0
#: Seconds to wait for the master to hash a dataset (committing an upload, verifying copies).
HASHING_S = 3600.0


def _ancestor_pids() -> list[int]:
    """This process's parent, grandparent, ...: a kernel's parent is the server that started it."""
    import psutil

    try:
        return [p.pid for p in psutil.Process().parents()]
    except psutil.Error:
        return [os.getppid()]


def discover_server() -> tuple[str, str]:
    """The URL and token of a running Jupyter server with the AI Grid extension.

    ``AIGRID_URL`` / ``AIGRID_TOKEN`` win. Otherwise, in a kernel, the server that started it
    (found among this user's running servers in Jupyter's runtime directory by its pid); else
    the newest running server.
    """
    url = os.environ.get("AIGRID_URL")
    if url:
        return url, os.environ.get("AIGRID_TOKEN", "")
    from jupyter_server.serverapp import list_running_servers

    servers = sorted(list_running_servers(), key=lambda s: s.get("pid", 0), reverse=True)
    if not servers:
        msg = (
            "no running Jupyter server found; start one (jupyter lab), or pass --url and "
            "--token (or set AIGRID_URL and AIGRID_TOKEN)"
        )
        raise AIGridError(msg)
    by_pid = {s.get("pid"): s for s in servers}
    parent = next((by_pid[p] for p in _ancestor_pids() if p in by_pid), None)
    info = parent or servers[0]
    return info["url"], info.get("token", "")


class EventStream:
    """Events of ``GET /events`` as they arrive; blank heartbeat lines are skipped."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self.seq = int(response.headers.get("X-AIGrid-Seq", "0"))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (r for r in self.records() if r is not None)

    def records(self, heartbeats: bool = False) -> Iterator[dict[str, Any] | None]:
        """Events; with ``heartbeats``, also ``None`` for each heartbeat of a quiet stream."""
        try:
            for raw in self.response.iter_lines(chunk_size=None):
                if raw.strip():
                    yield json.loads(raw)
                elif heartbeats:
                    yield None
        except (requests.RequestException, AttributeError, ValueError):
            # Closed from another thread, or the server went away: the stream just ends.
            return

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 30.0
    ) -> None:
        if url is None:
            url, found_token = discover_server()
            token = token if token is not None else found_token
        self.url = url.rstrip("/") + "/"
        self.token = token or ""
        self.timeout = timeout
        self.session = requests.Session()
        if self.token:
            self.session.headers["Authorization"] = f"token {self.token}"

    def _url(self, *parts: str) -> str:
        return self.url + API + "".join("/" + quote(p, safe="") for p in parts)

    def _request(
        self,
        method: str,
        *parts: str,
        stream: bool = False,
        read_timeout: float | None = None,
        **kwargs: Any,
    ):
        """``read_timeout`` bounds the silence of a stream (default: unbounded), or the wait
        for an answer that takes long work on the master (default: ``timeout``)."""
        long_wait = stream or read_timeout is not None
        timeout = (self.timeout, read_timeout) if long_wait else self.timeout
        try:
            resp = self.session.request(
                method, self._url(*parts), stream=stream, timeout=timeout, **kwargs
            )
        except requests.RequestException as e:
            msg = f"cannot reach the AI Grid master at {self.url}: {e}"
            raise AIGridError(msg) from e
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"message": resp.text.strip() or resp.reason}
            raise AIGridError(
                body.get("message") or resp.reason, resp.status_code, body.get("field")
            )
        return resp

    # -- jobs -------------------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "jobs", data=json.dumps(spec)).json()

    def jobs(self, state: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"state": state, "owner": owner}.items() if v}
        return self._request("GET", "jobs", params=params).json()["jobs"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", "jobs", str(job_id)).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("DELETE", "jobs", str(job_id)).json()

    def checkpoint(self, job_id: str) -> dict[str, Any]:
        """Ask a running job's ranks for a checkpoint now; the job, its ``checkpoint.request``
        pending. 409 when it is not running, does not listen, or is already checkpointing."""
        return self._request("POST", "jobs", str(job_id), "checkpoint", data="{}").json()

    def migrate(self, job_id: str, node: str | None = None) -> dict[str, Any]:
        """Move a running job: checkpoint, stop, transfer, restore (onto ``node``, else where
        the scheduler finds room); the job, its ``migration`` in state ``checkpointing``."""
        body = {} if node is None else {"node": node}
        return self._request("POST", "jobs", str(job_id), "migrate", data=json.dumps(body)).json()

    def result(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", "jobs", str(job_id), "result").json()

    def output(self, job_id: str, name: str) -> bytes:
        """The pickle of rank 0's global ``name`` (one of the JobSpec's ``outputs``)."""
        return self._request("GET", "jobs", str(job_id), "outputs", name).content

    def events(
        self, since: int | None = None, job_id: str | None = None, follow: bool = False
    ) -> EventStream:
        """Job events as an iterator; ``.seq`` says where it starts (see ``GET /events``).

        Use it as a context manager, or call ``close()``, to end a followed stream early.
        """
        params: dict[str, Any] = {"follow": int(follow)}
        if since is not None:
            params["since"] = since
        if job_id is not None:
            params["job"] = job_id
        # The server sends a heartbeat every 10 s: a longer silence is a dead connection.
        return EventStream(
            self._request(
                "GET", "events", params=params, stream=True, read_timeout=EVENTS_SILENCE_S
            )
        )

    def simulate(
        self, policy: str, options: dict[str, Any] | None = None, preempt_overhead_s: float = 40.0
    ) -> dict[str, Any]:
        """Replay the master's finished jobs under ``policy`` (admins only)."""
        body = {
            "policy": policy,
            "options": options or {},
            "preempt_overhead_s": preempt_overhead_s,
        }
        return self._request("POST", "simulate", data=json.dumps(body)).json()

    def cluster(self) -> dict[str, Any]:
        return self._request("GET", "cluster").json()

    # -- datasets ---------------------------------------------------------------------------------

    def datasets(self) -> list[dict[str, Any]]:
        """Every dataset, each with its versions and their copies (``GET /datasets``)."""
        return self._request("GET", "datasets").json()["datasets"]

    def dataset(self, name: str) -> dict[str, Any]:
        return self._request("GET", "datasets", name).json()

    def delete_dataset(self, name: str, version: int | None = None) -> dict[str, Any]:
        """Delete a dataset, or one version of it: ``{"deleted", "versions"}``. 409 while an
        unfinished job uses it (the message names the jobs)."""
        params = {} if version is None else {"version": version}
        return self._request("DELETE", "datasets", name, params=params).json()

    def verify_dataset(self, name: str) -> dict[str, Any]:
        """Hash every copy of every version now; the dataset, each copy's state updated."""
        return self._request(
            "POST", "datasets", name, "verify", data="{}", read_timeout=HASHING_S
        ).json()

    def register_dataset(self, name: str, node: str, path: str) -> dict[str, Any]:
        """Make data already on ``node`` (``path`` relative to its dataset root) a version of
        ``name``, hashed in place (admins)."""
        body = {"name": name, "node": node, "path": path}
        return self._request(
            "POST", "datasets", data=json.dumps(body), read_timeout=HASHING_S
        ).json()

    def upload_dataset(
        self,
        path: str | os.PathLike[str],
        name: str,
        node: str | None = None,
        progress: Callable[[int, int], object] | None = None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> dict[str, Any]:
        """Upload a file or a folder as a new version of dataset ``name``; return the dataset.

        Each file is hashed here (BLAKE3) and declared, then sent in chunks read from disk.
        An unfinished upload of the same name and files is resumed, so running this again
        after an interruption sends only what the master has not acknowledged.
        ``progress(sent, total)`` follows the bytes on the master. See
        :mod:`jupyter_aigrid.uploading`.
        """
        return upload_dataset(self, path, name, node, progress, chunk_bytes)

    # -- uploads: the steps upload_dataset takes --------------------------------------------------

    def create_upload(
        self, name: str, files: list[dict[str, Any]], node: str | None = None
    ) -> dict[str, Any]:
        """Declare an upload's files (``[{"path", "size", "hash"}]``); the upload."""
        body: dict[str, Any] = {"name": name, "files": files}
        if node is not None:
            body["node"] = node
        return self._request("POST", "uploads", data=json.dumps(body)).json()

    def uploads(self) -> list[dict[str, Any]]:
        """This user's unfinished uploads, each file with what the master has ``received``."""
        return self._request("GET", "uploads").json()["uploads"]

    def upload(self, upload_id: str) -> dict[str, Any]:
        return self._request("GET", "uploads", upload_id).json()

    def delete_upload(self, upload_id: str) -> dict[str, Any]:
        return self._request("DELETE", "uploads", upload_id).json()

    def put_chunk(self, upload_id: str, path: str, offset: int, body: Any) -> int:
        """Append ``body`` (bytes, or a file-like object with a length) to file ``path`` of
        the upload at ``offset``; what the file has received now. 409 when ``offset`` is not
        what it has received."""
        return self._request(
            "PUT",
            "uploads",
            upload_id,
            "data",
            params={"path": path, "offset": offset},
            data=body,
            headers={"Content-Type": "application/octet-stream"},
        ).json()["received"]

    def commit_upload(self, upload_id: str) -> dict[str, Any]:
        """Make a complete upload a version of its dataset (hashed and compared on the
        master); the dataset."""
        return self._request(
            "POST", "uploads", upload_id, "commit", data="{}", read_timeout=HASHING_S
        ).json()

    # -- inference profiles -----------------------------------------------------------------------

    def profiles(self, model: str | None = None) -> dict[str, Any]:
        """The latency profiles the master learnt from inference jobs (``GET /profiles``):
        ``{"profiles": [{"model", "resource", "count", "ewma_ms", "p50_ms", "p95_ms",
        "throughput", "run_s", "updated_at", "cost_per_hour"}], "resources": [{"resource",
        "cost_per_hour", "gpus", "free"}]}``, numbers ``None`` while unknown; only ``model``'s
        profiles when it is given."""
        params = {} if model is None else {"model": model}
        try:
            return self._request("GET", "profiles", params=params).json()
        except AIGridError as e:
            if e.status != 404 or not e.message.lstrip().startswith("<"):
                raise
            # Jupyter's own HTML "page not found": a master older than inference profiles.
            msg = f"the AI Grid master at {self.url} does not serve profiles (GET /profiles: 404)"
            raise AIGridError(msg, 404) from e

    def templates(self) -> list[dict[str, Any]]:
        """The job templates (``GET /templates``)."""
        return self._request("GET", "templates").json()["templates"]

    def images(self) -> list[dict[str, Any]]:
        """The base-image catalog (``GET /images``)."""
        return self._request("GET", "images").json()["images"]

    def logs(
        self, job_id: str, rank: int | None = None, follow: bool = False, tail: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Log lines as ``{"rank", "stream", "line"}``; with ``follow`` until the job ends."""
        params: dict[str, Any] = {"follow": int(follow)}
        if rank is not None:
            params["rank"] = rank
        if tail is not None:
            params["tail"] = tail
        with self._request("GET", "jobs", str(job_id), "logs", params=params, stream=True) as resp:
            try:
                for raw in resp.iter_lines(chunk_size=None):
                    if raw:
                        yield json.loads(raw)
            except requests.RequestException as e:
                msg = f"lost the connection to the AI Grid master at {self.url}: {e}"
                raise AIGridError(msg) from e

    def wait(self, job_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Block until the job has ended; return it. Follows the job's events: no polling."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            # The stream opens first, so no change between it and the read below is missed;
            # it ends when the job has ended, and sends a heartbeat line every few seconds.
            with self.events(job_id=str(job_id), follow=True) as stream:
                if self.job(job_id)["state"] not in FINAL_STATES:
                    for _ in stream.records(heartbeats=True):
                        if deadline is not None and time.monotonic() > deadline:
                            break
            job = self.job(job_id)
            if job["state"] in FINAL_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                msg = f"job {job_id} is still {job['state']} after {timeout_s:g} s"
                raise TimeoutError(msg)
