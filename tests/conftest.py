from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from tornado.httpclient import HTTPClientError

from jupyter_aigrid.testing import ServerProcess

# An illegal state transition is an error in tests (in production it is logged and refused);
# servers the tests start in subprocesses inherit it.
os.environ.setdefault("AIGRID_STRICT_TRANSITIONS", "1")

pytest_plugins = ["pytest_jupyter.jupyter_server"]

FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
def aigrid_state(tmp_path: Path) -> Path:
    return tmp_path / "aigrid"


#: Fixtures that start a Jupyter server (in this process or another): a test that uses one
#: is an end-to-end test, and is kept out of the fast lane (``pytest -m "not slow"``).
SERVER_FIXTURES = frozenset({"jp_serverapp", "jp_fetch", "aigrid_master", "api", "server", "ip"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def aigrid_config() -> dict:
    """AIGridApp traits for the test server; a test may override this fixture."""
    return {"local_nodes": 2, "simulated_gpus": 2, "local_cpus_per_node": 4}


@pytest.fixture
def jp_server_config(aigrid_state: Path, aigrid_config: dict) -> dict:
    return {
        "ServerApp": {
            # Terminals have an unauthenticated websocket route, which this server refuses.
            "jpserver_extensions": {"jupyter_aigrid": True, "jupyter_server_terminals": False},
            "allow_unauthenticated_access": False,
            "reraise_server_extension_failures": True,
        },
        "AIGridApp": {
            "state_dir": str(aigrid_state),
            "tick_interval_s": 0.2,
            "stop_grace_s": 3.0,
            **aigrid_config,
        },
    }


@pytest.fixture(autouse=True)
def _no_illegal_transitions():
    """A state change that its machine's table forbids fails the test that made it."""
    from jupyter_aigrid.server.states import REFUSED

    REFUSED.clear()
    yield
    assert not REFUSED, f"illegal state transitions: {REFUSED}"


@pytest.fixture(autouse=True)
def _no_leftover_replicas(tmp_path: Path):
    """Whatever a test leaves running is killed, so one test's jobs never leak into the next."""
    yield
    for pidfile in tmp_path.rglob("*.exit.pid"):
        with contextlib.suppress(ValueError, OSError):
            os.killpg(int(pidfile.read_text().strip()), signal.SIGKILL)


class Api:
    """Small helpers over jp_fetch: JSON in, JSON out, errors as (status, body)."""

    def __init__(self, fetch) -> None:
        self.fetch = fetch

    async def call(self, method: str, *parts: str, body=None, params=None, raw=False, **kw):
        data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
        resp = await self.fetch(
            "aigrid",
            "api",
            *parts,
            method=method,
            body=data,
            params=params,
            allow_nonstandard_methods=True,
            **kw,
        )
        return resp if raw else json.loads(resp.body)

    async def error(self, method: str, *parts: str, **kw) -> tuple[int, dict]:
        with pytest.raises(HTTPClientError) as info:
            await self.call(method, *parts, **kw)
        return info.value.code, json.loads(info.value.response.body)

    async def submit(self, spec: dict) -> dict:
        return await self.call("POST", "jobs", body=spec)

    async def job(self, job_id: str, **kw) -> dict:
        return await self.call("GET", "jobs", job_id, **kw)

    async def wait(self, job_id: str, states=FINAL, timeout_s: float = 120.0, **kw) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            job = await self.job(job_id, **kw)
            if job["state"] in states:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['state']}: {job}")
            await asyncio.sleep(0.1)

    async def logs(self, job_id: str, **params) -> list[dict]:
        resp = await self.call(
            "GET", "jobs", job_id, "logs", params=params, raw=True, request_timeout=120
        )
        return [json.loads(line) for line in resp.body.decode().splitlines() if line]


@pytest.fixture
def aigrid_master(jp_serverapp, jp_asyncio_loop):
    """The running master. pytest-jupyter does not run the server's post-start hook, which is
    where extensions start their background work, so start ours as the server would."""
    manager = jp_serverapp.extension_manager
    jp_asyncio_loop.run_until_complete(manager.start_extension("jupyter_aigrid"))
    return jp_serverapp.web_app.settings["aigrid_master"]


@pytest.fixture
def api(jp_fetch, aigrid_master) -> Api:
    return Api(jp_fetch)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server in a subprocess (2 logical nodes x 2 simulated GPUs), one per module."""
    root = tmp_path_factory.mktemp("server")
    with ServerProcess(
        root,
        "--AIGridApp.local_nodes=2",
        "--AIGridApp.simulated_gpus=2",
        "--AIGridApp.local_cpus_per_node=4",
        "--AIGridApp.tick_interval_s=0.2",
    ) as srv:
        yield srv


@pytest.fixture
def ip(server):
    """An IPython shell with the extension loaded, connected to ``server``."""
    shell = InteractiveShell.instance()
    if "aigrid" not in shell.magics_manager.magics["cell"]:
        shell.run_line_magic("load_ext", "jupyter_aigrid")
    with capture_output():
        shell.run_line_magic("aigrid", f"connect {server.url} --token {server.token}")
    yield shell
    for name in ("losses", "y", "w", "scale"):
        shell.user_ns.pop(name, None)
