"""The example notebooks, executed headless with nbclient against a real server."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).parent.parent / "examples"
WIDGET = "application/vnd.jupyter.widget-view+json"


def execute(name: str, server, monkeypatch) -> dict[str, dict]:
    """Run a notebook; return its code cells by tag."""
    monkeypatch.setenv("AIGRID_URL", server.url)
    monkeypatch.setenv("AIGRID_TOKEN", server.token)
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    ).execute()
    return {
        tag: cell
        for cell in nb.cells
        if cell.cell_type == "code"
        for tag in cell.metadata.get("tags", [])
    }


def text(cell: dict, stream: str = "stdout") -> str:
    return "".join(
        o.get("text", "")
        for o in cell.outputs
        if o.output_type == "stream" and o.get("name") == stream
    )


def has_widget(cell: dict) -> bool:
    return any(WIDGET in o.get("data", {}) for o in cell.outputs)


@pytest.mark.slow
def test_quickstart(server, monkeypatch):
    cells = execute("quickstart.ipynb", server, monkeypatch)
    assert has_widget(cells["cluster"])
    train = cells["train"]
    assert has_widget(train)
    out = text(train).splitlines()
    epochs = [line for line in out if line.startswith("[0] epoch")]
    assert len(epochs) == 8
    assert [line for line in out if line.startswith("[1] epoch")] == [
        line.replace("[0]", "[1]", 1) for line in epochs
    ]
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", text(cells["check"])).groups())
    assert last < first / 10
    assert "weights [" in text(cells["check"])
    assert has_widget(cells["detach"])
    wait = cells["wait"]
    assert "succeeded; pulled answer" in text(wait)
    assert any(o.get("data", {}).get("text/plain") == "42" for o in wait.outputs)
    error = next(o for o in cells["error"].outputs if o.output_type == "error")
    assert error.ename == "RemoteError"
    tb = "\n".join(error.traceback)
    assert "rank 1" in tb and "ValueError: rank 1 found a bad batch" in tb
    assert 'File "<aigrid cell>", line 3' in tb
    jobs = text(cells["jobs"])
    assert re.search(r"quickstart\s+succeeded\s+2", jobs)
    assert re.search(r"broken\s+failed\s+2", jobs)


@pytest.mark.slow
def test_cluster(server, monkeypatch):
    cells = execute("cluster.ipynb", server, monkeypatch)
    assert has_widget(cells["cluster"])
    held = text(cells["held"])
    nodes = {m for m in re.findall(r"'(node-\d)'", held)}
    assert held.count("', 'node-") == 3 and nodes == {"node-0", "node-1"}
    assert re.search(r"spread\s+running\s+2", text(cells["jobs"]))
    assert "cancel requested" in text(cells["cancel"])
    assert text(cells["freed"]).strip() == "4/4 GPUs free"
