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
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import requests

from .server.model import FINAL_STATES

API = "aigrid/api"


class AIGridError(RuntimeError):
    """The master refused a request (``status``), or could not be reached (``status`` 0)."""

    def __init__(self, message: str, status: int = 0, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field

    def __str__(self) -> str:
        return f"{self.message} (field: {self.field})" if self.field else self.message


def discover_server() -> tuple[str, str]:
    """The URL and token of a running Jupyter server with the AI Grid extension.

    ``AIGRID_URL`` / ``AIGRID_TOKEN`` win; otherwise the newest running server of this user
    found in Jupyter's runtime directory.
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
    info = servers[0]
    return info["url"], info.get("token", "")


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

    def _request(self, method: str, *parts: str, stream: bool = False, **kwargs: Any):
        try:
            resp = self.session.request(
                method,
                self._url(*parts),
                stream=stream,
                timeout=None if stream else self.timeout,
                **kwargs,
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

    def result(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", "jobs", str(job_id), "result").json()

    def cluster(self) -> dict[str, Any]:
        return self._request("GET", "cluster").json()

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
            for raw in resp.iter_lines():
                if raw:
                    yield json.loads(raw)

    def wait(
        self, job_id: str, poll_s: float = 0.5, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Block until the job has ended; return it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["state"] in FINAL_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                msg = f"job {job_id} is still {job['state']} after {timeout_s:g} s"
                raise TimeoutError(msg)
            time.sleep(poll_s)
