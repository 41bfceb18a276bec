"""Reading what jobs wrote: links and FIFOs a job plants are refused, and never block."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import pickle
import stat

import blake3
import pytest

from jupyter_aigrid import safefs
from jupyter_aigrid.safefs import open_inside, regular_files_inside
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


# -- the safe file layer itself ----------------------------------------------------------------


def test_a_refusal_names_the_component_and_its_mode(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_bytes(b"x")
    os.symlink(tmp_path / "real", tmp_path / "link")
    os.mkfifo(tmp_path / "real" / "pipe")
    with pytest.raises(safefs.Refused) as e:
        safefs.open_below(tmp_path, "link/f")
    assert e.value.path == "link" and stat.S_ISLNK(e.value.mode)
    assert isinstance(e.value, FileNotFoundError) and "link is refused, a symlink" in str(e.value)
    with pytest.raises(safefs.Refused) as e:
        safefs.open_below(tmp_path, "real/pipe")
    assert e.value.path == "real/pipe" and stat.S_ISFIFO(e.value.mode)
    # A file where a folder should be is missing, not refused; the trusted root may be a
    # link for open_below, never for open_inside.
    with pytest.raises(FileNotFoundError) as e:
        safefs.open_below(tmp_path, "real/f/g")
    assert not isinstance(e.value, safefs.Refused)
    os.close(safefs.open_below(tmp_path / "link", "f"))
    with pytest.raises(FileNotFoundError):
        safefs.open_inside(tmp_path / "link" / "f", tmp_path / "link")


@pytest.mark.parametrize("kernel", [True, False], ids=["copy_file_range", "read-write"])
@pytest.mark.parametrize("algorithm", ["sha256", "blake3"])
def test_copy_hashed_digests_what_landed(tmp_path, monkeypatch, kernel, algorithm):
    """The digest is of the copy as it landed, slice by slice, for either hash; one byte
    over the expected size shows a source that grew."""
    monkeypatch.setattr(safefs, "SLICE", 7000)
    monkeypatch.setattr(safefs, "CHUNK", 3000)
    if not kernel:

        def refuse(*args):
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    new = hashlib.sha256 if algorithm == "sha256" else blake3.blake3
    data = os.urandom(50_001)
    (tmp_path / "src").write_bytes(data + b"grown")
    seen = []
    with open(tmp_path / "src", "rb") as source:
        out = safefs.create_new(tmp_path / "dst")
        try:
            digest, size = safefs.copy_hashed(
                source.fileno(), out, new(), len(data) + 1, seen.append
            )
        finally:
            os.close(out)
    landed = (tmp_path / "dst").read_bytes()
    assert size == len(data) + 1 == len(landed) == sum(seen) and len(seen) > 1
    hasher = new()
    hasher.update(landed)
    assert digest == hasher.hexdigest()


def test_create_new_replaces_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "new")
    os.close(safefs.create_new(tmp_path / "new"))
    assert victim.read_text() == "precious" and not (tmp_path / "new").is_symlink()
