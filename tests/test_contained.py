"""Reading what jobs wrote: links and FIFOs a job plants are refused, and never block."""

from __future__ import annotations

import asyncio
import os
import pickle

import pytest

from jupyter_aigrid.durable import open_inside, regular_files_inside
from jupyter_aigrid.server.logs import LogCursor


def test_open_inside_reads_regular_files_below_the_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_bytes(b"ok")
    with open_inside(tmp_path / "a" / "f.txt", tmp_path) as f:
        assert f.read() == b"ok"
    with pytest.raises(FileNotFoundError):
        open_inside(tmp_path / "a" / "missing", tmp_path)
    with pytest.raises(FileNotFoundError):
        open_inside(tmp_path.parent / "elsewhere", tmp_path)


def test_a_link_anywhere_below_the_folder_is_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.pkl").write_bytes(b"secret")
    results = tmp_path / "results"
    results.mkdir()
    # The job swaps its outputs folder for a link to someone else's folder.
    os.symlink(secret, results / "outputs")
    with pytest.raises(FileNotFoundError):
        open_inside(results / "outputs" / "key.pkl", results)
    assert regular_files_inside(results / "outputs", results) == []
    # ... or a file for a link to one.
    os.unlink(results / "outputs")
    (results / "outputs").mkdir()
    os.symlink(secret / "key.pkl", results / "outputs" / "key.pkl")
    (results / "outputs" / "mine.pkl").write_bytes(b"12345")
    with pytest.raises(FileNotFoundError):
        open_inside(results / "outputs" / "key.pkl", results)
    assert regular_files_inside(results / "outputs", results) == [("mine.pkl", 5)]


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "rank-0.jsonl")
    with pytest.raises(FileNotFoundError):
        open_inside(tmp_path / "rank-0.jsonl", tmp_path)  # would block for ever if opened
    os.mkfifo(tmp_path / "rank-0.stdout")
    cursor = LogCursor(0, "stdout", tmp_path / "rank-0.stdout")
    assert cursor.read_lines() == [] and cursor.tail(10) == []


async def test_a_job_cannot_pass_off_a_link_or_a_fifo_as_its_results(api, aigrid_state):
    victim = aigrid_state / "victim"
    victim.mkdir()
    (victim / "token.pkl").write_bytes(pickle.dumps("do not read"))
    code = f"""
import os
results = os.environ["AIGRID_RESULT_DIR"]
os.makedirs(results, exist_ok=True)
os.symlink({str(victim)!r}, os.path.join(results, "outputs"))
os.mkfifo(os.path.join(results, "rank-0.jsonl"))
"""
    job = await api.submit({"code": code, "outputs": ["token"]})
    done = await api.wait(job["id"])
    # The job did plant both (else this test would prove nothing).
    (results,) = aigrid_state.glob(f"jobs/*/{job['id']}/0/results")
    assert (results / "outputs").is_symlink(), done
    assert (results / "rank-0.jsonl").is_fifo(), done
    # The result does not hang on the FIFO, and lists nothing of the linked folder.
    result = await asyncio.wait_for(api.call("GET", "jobs", job["id"], "result"), 10)
    assert result["outputs"] == [], (done, result)
    status, error = await api.error("GET", "jobs", job["id"], "outputs", "token")
    assert status == 404, error
