"""The master dies while a gang's data is staged; the next one stages it again (or keeps
what was done), sweeps what a cut-short copy left, and the job reads the right bytes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_recovery import crash_in, finished, master, submit

from jupyter_aigrid import contents
from jupyter_aigrid.server.executors.local import LocalExecutor

READ = (
    "import os, pathlib\n"
    "p = pathlib.Path(os.environ['AIGRID_DATA']) / 'toy' / 'data.bin'\n"
    "print(os.environ['AIGRID_NODE'], len(p.read_bytes()), p.read_bytes()[:4].hex())\n"
)


def two_nodes(tmp_path: Path) -> LocalExecutor:
    return LocalExecutor(tmp_path, nodes=2, simulated_gpus=1, cpus_per_node=4)


@pytest.mark.parametrize("where", ["data_staging.stage", "data_staging._staged_data"])
async def test_a_master_dying_while_staging_stages_again(tmp_path, where):
    a = master(tmp_path, two_nodes(tmp_path))
    source = tmp_path / "nodes" / "node-0" / "datasets" / "src"
    source.mkdir(parents=True)
    (source / "data.bin").write_bytes(bytes(range(256)) * 4096)
    manifest = contents.build_manifest(source)
    a.recovery.recover()
    a.recovery.error = None
    a.data._record_registered("toy", "node-0", "src", manifest.to_json(), "u")
    # node-0 is busy, so the reader goes to node-1, where the data must be copied first.
    blocker = submit(a, {"command": ["sleep", "600"], "gpus": 1})
    deadline = time.monotonic() + 30
    while a.store.job(blocker).state != "running":
        assert time.monotonic() < deadline
        a._tick()
        time.sleep(0.02)
    reader = submit(a, {"code": READ, "gpus": 1, "datasets": ["toy"]})
    crash_in(a, where)
    # What a copy killed half-way leaves behind: a temp folder beside where it was going.
    half = tmp_path / "nodes" / "node-1" / "datasets" / ".aigrid" / "toy" / ".x.tmp-0123"
    half.mkdir(parents=True, exist_ok=True)
    (half / "data.bin").write_bytes(b"partial")

    b = master(tmp_path, two_nodes(tmp_path))
    await b.start()
    try:
        done = await finished(b, reader)
        assert done["state"] == "succeeded", done["reason"]
        assert done["restarts"] == 0 and done["staging"]["state"] == "done"
        [out] = (tmp_path / "jobs").glob(f"*/{reader}/*/rank-0.stdout")
        assert out.read_text() == f"node-1 {256 * 4096} 00010203\n"
        assert not half.exists()
        locations = {loc["node"]: loc for loc in b.store.dataset_locations("toy")}
        assert locations["node-1"]["state"] == "verified"
        copy = tmp_path / "nodes" / "node-1" / "datasets" / locations["node-1"]["path"]
        assert contents.verify_tree(copy, manifest) == []
        leftovers = list((copy.parent).iterdir())
        assert leftovers == [copy], leftovers
        # The links of a job that has ended are gone after the next restart; the data stays.
        views = tmp_path / "nodes" / "node-1" / "datasets" / ".aigrid-jobs"
        assert [p.name for p in views.iterdir()] == [b.files.key(reader)]
        await b.cancel(blocker, "u")
    finally:
        await b.stop()
    c = master(tmp_path, two_nodes(tmp_path))
    await c.start()
    await c.stop()
    assert list(views.iterdir()) == [] and contents.verify_tree(copy, manifest) == []
