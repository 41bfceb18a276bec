"""%%aigrid and %aigrid through a real IPython shell against a real server, end to end."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from jupyter_aigrid.magics import JobFailed, JobHandle, RemoteError
from jupyter_aigrid.magics.commands import PARSERS

DDP_CELL = """
import torch
from jupyter_aigrid import runtime
dist = runtime.init_distributed()
t = torch.ones(1) * scale * (runtime.rank() + 1)
dist.all_reduce(t)
losses = [t.item(), float(runtime.rank())]
print("rank", runtime.rank(), "of", runtime.world_size(), "sum", t.item())
"""


def _job_count(server) -> int:
    return len(server.client().jobs())


def _until(predicate, timeout_s: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_pushes_pulls_and_streams_every_rank(ip, server):
    ip.user_ns["scale"] = 1.5
    with capture_output() as cap:
        result = ip.run_cell_magic(
            "aigrid", "run --gpus 2 --name ddp --push scale --pull losses", DDP_CELL
        )
    assert result is None
    # rank 0's value, computed with the pushed scale: 1.5 * (1 + 2)
    assert ip.user_ns["losses"] == [4.5, 0.0]
    lines = cap.stdout.splitlines()
    assert "[0] rank 0 of 2 sum 4.5" in lines
    assert "[1] rank 1 of 2 sum 4.5" in lines
    job = server.client().jobs()[-1]
    assert (job["name"], job["state"], job["gpus"]) == ("ddp", "succeeded", 2)
    # The widget was displayed above the output, once.
    widgets = [o for o in cap.outputs if "application/vnd.jupyter.widget-view+json" in o.data]
    assert len(widgets) == 1


def test_cell_classes_pickle_and_sys_exit_keeps_pulls(ip):
    cell = (
        "import dataclasses, pickle, sys\n"
        "@dataclasses.dataclass\n"
        "class Point:\n"
        "    x: int\n"
        "p = pickle.loads(pickle.dumps(Point(3)))  # a class of the cell pickles, as in a script\n"
        "sys.exit(0)\n"
    )
    with capture_output():
        ip.run_cell_magic("aigrid", "run --pull p", cell)
    point = ip.user_ns.pop("p")
    assert (type(point).__name__, point.x) == ("Point", 3)


def test_rank0_output_only(ip):
    with capture_output() as cap:
        ip.run_cell_magic(
            "aigrid",
            "run --gpus 2 --output rank0",
            "from jupyter_aigrid import runtime\nprint('hello from', runtime.rank())",
        )
    assert "[0] hello from 0" in cap.stdout
    assert "[1]" not in cap.stdout


def test_remote_error_becomes_the_cells_error(ip, server):
    cell = "import os\nx = 1\nif os.environ['RANK'] == '1':\n    raise ValueError('bad batch')\n"
    with capture_output(), pytest.raises(RemoteError) as info:
        ip.run_cell_magic("aigrid", "run --gpus 2 --pull x", cell)
    err = info.value
    assert (err.rank, err.ename, err.evalue) == (1, "ValueError", "bad batch")
    rendered = "\n".join(err._render_traceback_())
    assert 'File "<aigrid cell>", line 4' in rendered
    assert "raise ValueError('bad batch')" in rendered
    assert "runner.py" not in rendered  # the runner's own frames are not the user's business
    assert "x" not in ip.user_ns or ip.user_ns["x"] != 1
    assert server.client().jobs()[-1]["state"] == "failed"


def test_exit_code_failure_is_job_failed(ip):
    with capture_output(), pytest.raises(JobFailed, match="exited with code 3"):
        ip.run_cell_magic("aigrid", "run", "raise SystemExit(3)")


def test_detach_then_wait(ip, server):
    handle = ip.run_cell_magic(
        "aigrid", "run --detach --gpus 1 --pull y", "import time\ntime.sleep(0.5)\ny = {'k': 42}"
    )
    assert isinstance(handle, JobHandle)
    assert "y" not in ip.user_ns
    with capture_output() as cap:
        ip.run_line_magic("aigrid", f"wait {handle.id}")
    assert ip.user_ns["y"] == {"k": 42}
    assert f"job {handle.id} succeeded; pulled y" in cap.stdout
    # The detached widget followed the job to its end.
    _until(lambda: handle.widget.state == "succeeded", what="widget to see the end")


def test_wait_on_a_job_submitted_elsewhere(ip, server):
    job = server.client().submit({"code": "w = 7", "outputs": ["w"]})
    with capture_output():
        ip.run_line_magic("aigrid", f"wait {job['id']}")
    assert ip.user_ns["w"] == 7


def test_interrupt_cancels_the_job(ip, server):
    client = server.client()
    before = {j["id"] for j in client.jobs()}

    def interrupt_when_running() -> None:
        def running():
            new = [j for j in client.jobs() if j["id"] not in before]
            return new and new[0]["state"] == "running"

        _until(running, what="job to run")
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt_when_running)
    thread.start()
    with capture_output() as cap, pytest.raises(KeyboardInterrupt):
        ip.run_cell_magic(
            "aigrid", "run --gpus 2", "import time\nprint('working', flush=True)\ntime.sleep(120)"
        )
    thread.join()
    job = next(j for j in client.jobs() if j["id"] not in before)
    assert job["state"] == "cancelled"
    assert "cancelled by" in job["reason"]
    assert f"interrupted: cancelling job {job['id']}" in cap.stderr
    assert all(g["job_id"] is None for n in client.cluster()["nodes"] for g in n["gpus"])


def test_widget_matches_the_job_while_queued_and_after(ip, server):
    client = server.client()
    blocker = client.submit({"code": "import time; time.sleep(60)", "gpus": 4})
    _until(lambda: client.job(blocker["id"])["state"] == "running", what="blocker to run")
    handle = ip.run_cell_magic("aigrid", "run --detach --gpus 2 --nodes 2 --priority high", "pass")
    widget = handle.widget
    view = client.job(handle.id)
    assert (
        (widget.state, widget.queue_position)
        == ("queued", view["queue_position"])
        == (
            "queued",
            1,
        )
    )
    assert widget.qos == view["qos"] == "high"
    client.cancel(blocker["id"])
    # Updated by events alone: the widget runs no request loop of its own.
    _until(lambda: widget.state == "succeeded", what="widget to see the job end")
    view = client.job(handle.id)
    assert widget.placement == view["placement"]
    assert {s["node"] for s in widget.placement} == {"node-0", "node-1"}
    assert [s["rank"] for s in widget.placement] == [0, 1]
    assert (widget.state, widget.queue_position, widget.migration) == ("succeeded", None, None)
    html = widget._grid.value
    for slot in view["placement"]:
        assert f"rank {slot['rank']}" in html and slot["node"] in html


def test_status_and_cluster_widgets(ip, server):
    client = server.client()
    job = client.submit({"code": "import time; time.sleep(30)", "gpus": 2, "name": "held"})
    _until(lambda: client.job(job["id"])["state"] == "running", what="job to run")
    status = ip.run_line_magic("aigrid", f"status {job['id']}")
    assert status.state == "running"
    assert status.placement == client.job(job["id"])["placement"]
    cluster = ip.run_line_magic("aigrid", "cluster")
    held = [g for n in cluster.cluster["nodes"] for g in n["gpus"] if g["job_id"] == job["id"]]
    assert len(held) == 2
    assert "SIMULATED" in cluster._html.value and f"job {job['id']}" in cluster._html.value
    with capture_output() as cap:
        ip.run_line_magic("aigrid", f"cancel {job['id']}")
    assert f"job {job['id']}: cancel requested" in cap.stdout
    # The grid is redrawn from the cancellation's events.
    _until(
        lambda: not any(g["job_id"] for n in cluster.cluster["nodes"] for g in n["gpus"]),
        what="cluster widget to free the GPUs",
    )
    _until(lambda: status.state == "cancelled", what="status widget to see the cancel")
    again = ip.run_line_magic("aigrid", "cluster")
    # One live grid per kernel: the earlier one stopped following.
    assert cluster._follower.stopped and not again._follower.stopped
    again.close()


def test_jobs_and_logs_line_magics(ip, server):
    job = server.client().submit({"code": "print('line one')\nprint('line two')", "name": "lg"})
    with capture_output():
        ip.run_line_magic("aigrid", f"wait {job['id']}")
    with capture_output() as cap:
        ip.run_line_magic("aigrid", f"logs {job['id']}")
    assert cap.stdout.splitlines() == ["[0] line one", "[0] line two"]
    with capture_output() as cap:
        ip.run_line_magic("aigrid", "logs -f --tail 1 " + job["id"])
    assert cap.stdout.splitlines() == ["[0] line two"]
    with capture_output() as cap:
        ip.run_line_magic("aigrid", "jobs --state succeeded")
    header, *rows = cap.stdout.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "STATE", "GPUS"]
    assert any(r.split()[:3] == [job["id"], "lg", "succeeded"] for r in rows)
    with capture_output() as cap:
        ip.run_line_magic("aigrid", "templates")
    assert "pytorch-ddp" in cap.stdout and cap.stdout.startswith("TEMPLATE")
    with capture_output() as cap:
        ip.run_line_magic("aigrid", "images")
    assert "pytorch/pytorch:2.13.0" in cap.stdout


def test_line_form_runs_a_script_with_arguments(ip, tmp_path, server):
    script = tmp_path / "train.py"
    script.write_text("import sys\nresult = sys.argv[1:]\nprint('args', result)\n")
    with capture_output() as cap:
        ip.run_line_magic("aigrid", f"run --pull result {script} --epochs 3")
    assert ip.user_ns.pop("result") == ["--epochs", "3"]
    assert "[0] args ['--epochs', '3']" in cap.stdout
    assert server.client().jobs()[-1]["name"] == "train.py"


@pytest.mark.parametrize(
    ("line", "cell", "words"),
    [
        ("run --gpu 2", "pass", ["unrecognized arguments: --gpu", "did you mean --gpus"]),
        ("run --gpus -1", "pass", ["--gpus", ">= 0", "'-1'"]),
        ("run --pull losses,acc", "losses = [1]", ["--pull acc", "never sets acc"]),
        ("run --push lock", "pass", ["--push lock", "cannot be pickled"]),
        ("run --push nothing_here", "pass", ["no variable 'nothing_here'"]),
        ("run --output some", "pass", ["--output", "invalid choice"]),
        ("run --time-limit soon", "pass", ["--time-limit", "90s, 10m or 2h"]),
        ("run train.py", "pass", ["the cell is the code", "%aigrid run train.py"]),
        ("rnu", "pass", ["unknown command 'rnu'", "did you mean 'run'"]),
        ("", "pass", ["%%aigrid run --gpus 2"]),
        ("jobs", "pass", ["only run takes a cell", "%aigrid jobs"]),
        ("run", "", ["empty"]),
        ("run", "\n  \n", ["the cell is empty"]),
        ("run --pull x", "x = (", ["was never closed"]),
    ],
)
def test_bad_input_is_refused_and_nothing_is_submitted(ip, server, line, cell, words):
    ip.user_ns["lock"] = threading.Lock()
    before = _job_count(server)
    with pytest.raises((UsageError, SyntaxError)) as info:
        ip.run_cell_magic("aigrid", line, cell)
    for word in words:
        assert word in str(info.value)
    assert _job_count(server) == before


def test_line_magic_misuse(ip, server):
    before = _job_count(server)
    for line, word in [
        ("run", "give a script"),
        ("run missing.py", "cannot read missing.py"),
        ("status", "the following arguments are required: ID"),
        ("logs 1 --rank x", "invalid int value"),
        ("status 9999", "no job '9999'"),
    ]:
        with pytest.raises(UsageError, match=word):
            ip.run_line_magic("aigrid", line)
    assert _job_count(server) == before


def test_help_documents_every_option(ip):
    doc = ip.find_cell_magic("aigrid").__doc__
    for parser in PARSERS.values():
        for action in parser._actions:
            for option in action.option_strings:
                assert option in doc, option
    assert "In [2]: %%aigrid run --gpus 2" in doc
    with capture_output() as cap:
        ip.run_line_magic("aigrid", "run --help")
    assert "--checkpoint-interval" in cap.stdout and "--pull" in cap.stdout


def test_kernel_started_by_the_server_finds_it(server):
    """No URL, no token, no environment: the kernel finds the server that started it."""
    from jupyter_client import BlockingKernelClient

    session = server.session()
    kernel = session.post(server.url + "api/kernels", json={"name": "python3"}, timeout=30)
    kernel.raise_for_status()
    kernel_id = kernel.json()["id"]
    try:
        connection = server.root / "runtime" / f"kernel-{kernel_id}.json"
        _until(connection.exists, what="kernel connection file")
        kc = BlockingKernelClient()
        kc.load_connection_file(str(connection))
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            outputs: list[str] = []
            reply = kc.execute_interactive(
                "import os\nassert 'AIGRID_URL' not in os.environ\n"
                "%load_ext jupyter_aigrid\n%aigrid jobs\n",
                timeout=60,
                output_hook=lambda msg: outputs.append(json.dumps(msg["content"])),
            )
        finally:
            kc.stop_channels()
        assert reply["content"]["status"] == "ok", outputs
        assert any("ID" in o and "STATE" in o for o in outputs), outputs
    finally:
        session.delete(server.url + f"api/kernels/{kernel_id}", timeout=30)


LISTENING_CELL = """
import time
from jupyter_aigrid import runtime
state = runtime.restore()
step = state["step"] if state else 0
while step < 600:
    step += 1
    if runtime.should_checkpoint():
        runtime.checkpoint({"step": step})
    time.sleep(0.05)
print("resumed" if state else "fresh", "at", state and state["step"])
"""


def test_checkpoint_and_migrate_magics(ip, server):
    client = server.client()
    with capture_output():
        handle = ip.run_cell_magic("aigrid", "run --gpus 1 --detach --name mover", LISTENING_CELL)
    job_id = handle.job["id"]
    _until(lambda: client.job(job_id)["checkpoint"]["listening"], what="the job to listen")
    with capture_output() as cap:
        ip.run_line_magic("aigrid", f"checkpoint {job_id}")
    assert f"job {job_id}: checkpoint" in cap.stdout
    _until(
        lambda: client.job(job_id)["checkpoint"]["request"]["state"] == "written",
        what="the checkpoint",
    )
    source = client.job(job_id)["placement"][0]["node"]
    with capture_output() as cap:
        ip.run_line_magic("aigrid", f"migrate {job_id}")
    assert f"job {job_id}: migration 1 started (checkpointing)" in cap.stdout, cap.stdout
    done = _until(
        lambda: (j := client.job(job_id))["migration"]["state"] in ("done", "failed") and j,
        what="the migration",
    )
    assert done["migration"]["state"] == "done", done["migration"]
    assert done["placement"][0]["node"] != source
    with pytest.raises(UsageError, match="nope"):
        ip.run_line_magic("aigrid", f"migrate {job_id} --node nope")
    client.cancel(job_id)
