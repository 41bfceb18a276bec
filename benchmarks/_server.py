"""Start and stop a throwaway Jupyter server with the AI Grid extension, for the benchmarks.

    with BenchServer(["--AIGridApp.local_nodes=1"]) as srv:
        srv.session().get(srv.api("cluster"))

Each server gets a random free port on 127.0.0.1, a random token, and its own temporary
directory (state dir, root dir and Jupyter runtime dir), removed again on exit.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(min(rank, len(ordered))) - 1]


class BenchServer:
    def __init__(self, extra_args: list[str] | None = None) -> None:
        self.extra_args = list(extra_args or [])
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.tmp = Path(tempfile.mkdtemp(prefix="aigrid-bench-"))
        self.state_dir = self.tmp / "state"
        self.root_dir = self.tmp / "root"
        self.runtime_dir = self.tmp / "runtime"
        for d in (self.state_dir, self.root_dir, self.runtime_dir):
            d.mkdir()
        self.log_path = self.tmp / "server.log"
        self.proc: subprocess.Popen | None = None
        self.stop_s: float | None = None
        self._log = None

    # -- helpers ---------------------------------------------------------------------------

    def api(self, *parts: str) -> str:
        return self.url + "aigrid/api" + "".join("/" + p for p in parts)

    def session(self) -> requests.Session:
        s = requests.Session()
        s.headers["Authorization"] = f"token {self.token}"
        return s

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> BenchServer:
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(self.runtime_dir)}
        for name in ("JUPYTER_TOKEN", "AIGRID_URL", "AIGRID_TOKEN"):
            env.pop(name, None)
        cmd = [
            sys.executable, "-m", "jupyter_server",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--port-retries=0",
            f"--IdentityProvider.token={self.token}",
            "--allow-root",
            "--no-browser",
            "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={self.root_dir}",
            f"--AIGridApp.state_dir={self.state_dir}",
            *self.extra_args,
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, cwd=str(self.tmp))
        deadline = time.monotonic() + START_TIMEOUT_S
        s = self.session()
        try:
            while True:
                if self.proc.poll() is not None:
                    msg = (f"the Jupyter server exited with code {self.proc.returncode} "
                           f"before it answered; its log:\n{self.log_tail()}")
                    raise RuntimeError(msg)
                try:
                    if s.get(self.api("cluster"), timeout=2).status_code == 200:
                        return self
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    msg = (f"the Jupyter server did not answer within {START_TIMEOUT_S:g} s; "
                           f"its log:\n{self.log_tail()}")
                    raise RuntimeError(msg)
                time.sleep(0.1)
        finally:
            s.close()

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                t0 = time.monotonic()
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                    self.stop_s = time.monotonic() - t0
                except subprocess.TimeoutExpired:
                    print(f"warning: server did not stop within {STOP_TIMEOUT_S:g} s after "
                          "SIGTERM; killing it", file=sys.stderr)
                    self.proc.kill()
                    self.proc.wait()
        finally:
            if self._log is not None:
                self._log.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> BenchServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
