"""A real Jupyter server with the AI Grid master in a subprocess, for tests and benchmarks.

>>> with ServerProcess(tmp_path, "--AIGridApp.local_nodes=2") as server:
...     server.client().submit({"code": "print(1)"})
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from .client import Client
from .server.executors.local import free_port


class ServerProcess:
    """``jupyter server`` on 127.0.0.1 with its own state directory, token and runtime dir."""

    def __init__(
        self, root: str | Path, *args: str, port: int | None = None, token: str | None = None
    ) -> None:
        self.root = Path(root)
        self.state_dir = self.root / "aigrid"
        self.args = list(args)
        self.port = port or free_port()
        self.token = token or secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root / "server.log"
        #: Seconds the last stop() took after SIGTERM; None if it had to kill.
        self.stop_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout_s: float = 60.0) -> ServerProcess:
        (self.root / "notebooks").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("AIGRID_URL", "AIGRID_TOKEN")}
        env.update(JUPYTER_RUNTIME_DIR=str(self.root / "runtime"), JUPYTER_TOKEN=self.token)
        cmd = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--port-retries=0",
            f"--ServerApp.root_dir={self.root / 'notebooks'}",
            "--ServerApp.allow_unauthenticated_access=False",
            f"--AIGridApp.state_dir={self.state_dir}",
            *self.args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                msg = f"jupyter server exited with {self.proc.returncode}:\n{self.log()}"
                raise RuntimeError(msg)
            try:
                r = requests.get(
                    self.url + "aigrid/api/cluster",
                    timeout=2,
                    headers={"Authorization": f"token {self.token}"},
                )
                if r.status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        msg = f"jupyter server did not answer within {timeout_s} s:\n{self.log()}"
        raise TimeoutError(msg)

    def client(self) -> Client:
        return Client(self.url, self.token)

    def api(self, *parts: str) -> str:
        """The URL of an AI Grid REST resource."""
        return self.url + "aigrid/api" + "".join("/" + p for p in parts)

    def session(self) -> requests.Session:
        """A requests session that sends the token."""
        s = requests.Session()
        s.headers["Authorization"] = f"token {self.token}"
        return s

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """kill -9: the master gets no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
            self.stop_s = time.monotonic() - started
        except subprocess.TimeoutExpired:
            self.stop_s = None
            self.kill()

    def __enter__(self) -> ServerProcess:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_state(client: Client, job_id: str, states, timeout_s: float = 60.0) -> dict:
    """Poll ``client`` until job ``job_id`` is in one of ``states``; return it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if job["state"] in states:
            return job
        time.sleep(0.1)
    msg = f"job {job_id} still {job['state']} after {timeout_s:g} s"
    raise AssertionError(msg)


def write_tree(root: str | Path, files: dict[str, bytes]) -> Path:
    """Write ``{relative path: bytes}`` under ``root`` (a dataset to upload, say); ``root``."""
    root = Path(root)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root
