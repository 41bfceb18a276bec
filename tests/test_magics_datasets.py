"""Datasets from the notebook: ``%aigrid dataset ...`` and ``%%aigrid run --dataset`` through a
real IPython shell against a real server (2 logical nodes), the client's resumable upload,
and the widgets' staging line and upload progress."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from test_magics import _until

from jupyter_aigrid import contents, uploading
from jupyter_aigrid.client import AIGridError, Client
from jupyter_aigrid.magics import JobWidget
from jupyter_aigrid.magics.datasets import UploadProgress
from jupyter_aigrid.testing import write_tree

CHUNK = 64 * 1024
NOWHERE = "http://127.0.0.1:9"  # nothing listens: any real request fails at once


_tree = write_tree


def _copies(dataset: dict[str, Any]) -> dict[str, str]:
    """node -> state of the latest version's copies."""
    return {c["node"]: c["state"] for c in dataset["versions"][-1]["locations"]}


class RecordingClient(Client):
    """A real client that records each acknowledged chunk as (path, offset, bytes)."""

    def __init__(self, server) -> None:
        super().__init__(server.url, server.token)
        self.puts: list[tuple[str, int, int]] = []

    def put_chunk(self, upload_id: str, path: str, offset: int, body: Any) -> int:
        received = super().put_chunk(upload_id, path, offset, body)
        self.puts.append((path, offset, received - offset))
        return received


# -- end to end through the magics --------------------------------------------------------------


RUN_READER = """
import os
root = os.path.join(os.environ["AIGRID_DATA"], "tiny")
text = open(os.path.join(root, "a.txt")).read().strip()
print("rank", os.environ["RANK"], "read", text, sorted(os.listdir(root)))
"""


def test_upload_list_and_a_job_on_two_nodes_reads_the_data(ip, server, tmp_path):
    data = _tree(
        tmp_path / "tiny",
        {"a.txt": b"hello grid\n", "sub/b.csv": b"x,y\n1,2\n", "c.bin": os.urandom(3000)},
    )
    with capture_output() as cap:
        ip.run_line_magic("aigrid", f"dataset upload {data} --name tiny")
    root = contents.build_manifest(data).root
    lines = cap.stdout.splitlines()
    assert lines[0] == "hashing tiny: 3 files, 2.9 KiB", lines
    assert "uploading tiny: 100% (2.9 KiB of 2.9 KiB" in cap.stdout
    assert lines[-1].startswith(
        f"uploaded tiny@1: 3 files, 2.9 KiB, root {root[:12]} (2.9 KiB sent"
    )

    dataset = server.client().dataset("tiny")
    assert (dataset["latest"], dataset["files"], dataset["root"]) == (1, 3, root)
    assert _copies(dataset) == {"node-0": "verified"}

    with capture_output() as cap:
        ip.run_line_magic("aigrid", "dataset list")
    table = cap.outputs[0].data
    html = table["text/html"]
    assert "<td" in html and ">tiny</td>" in html and ">v1</td>" in html
    assert f">{root[:12]}</code>" in html and ">3</td>" in html
    assert "node-0 <span" in html and ">verified</span>" in html
    header, row = table["text/plain"].splitlines()
    assert header.split() == ["NAME", "LATEST", "SIZE", "FILES", "ROOT", "COPIES"]
    assert row.split() == ["tiny", "v1", "2.9", "KiB", "3", root[:12], "node-0", "verified"]

    # One rank per node: node-1 has no copy, so the job stages one there first.
    with capture_output() as cap:
        ip.run_cell_magic(
            "aigrid", "run --gpus 2 --nodes 2 --dataset tiny --name reader", RUN_READER
        )
    listing = "['a.txt', 'c.bin', 'sub']"
    assert f"[0] rank 0 read hello grid {listing}" in cap.stdout.splitlines()
    assert f"[1] rank 1 read hello grid {listing}" in cap.stdout.splitlines()
    job = server.client().jobs()[-1]
    assert (job["name"], job["state"], job["datasets"]) == ("reader", "succeeded", ["tiny@1"])
    assert {s["node"] for s in job["placement"]} == {"node-0", "node-1"}
    assert job["staging"]["state"] == "done" and job["phase"] is None
    assert _copies(server.client().dataset("tiny")) == {"node-0": "verified", "node-1": "verified"}

    # The same files again: the version that holds them is named, and nothing is sent.
    with capture_output() as cap:
        ip.run_line_magic("aigrid", f"dataset upload {data} --name tiny")
    assert cap.stdout.splitlines()[-1] == (
        f"tiny@1 already holds these files (root {root[:12]}): nothing to send"
    )
    assert server.client().dataset("tiny")["latest"] == 1


def test_a_job_names_a_version_and_bad_references_submit_nothing(ip, server, tmp_path):
    data = _tree(tmp_path / "pinned", {"v.txt": b"one\n"})
    client = server.client()
    client.upload_dataset(data, "pinned")
    (data / "v.txt").write_bytes(b"two\n")
    assert client.upload_dataset(data, "pinned")["latest"] == 2
    cell = "import os\nprint(open(os.environ['AIGRID_DATA'] + '/pinned/v.txt').read().strip())"
    with capture_output() as cap:
        ip.run_cell_magic("aigrid", "run --dataset pinned@1", cell)
    assert "[0] one" in cap.stdout.splitlines()
    before = len(client.jobs())
    for ref, words in [
        ("nope", "there is no dataset 'nope'"),
        ("pinned@7", "has no version '7'"),
    ]:
        with pytest.raises(UsageError, match=words) as info:
            ip.run_cell_magic("aigrid", f"run --dataset {ref}", "pass")
        assert str(info.value).startswith("%aigrid run: datasets[0]")
    assert len(client.jobs()) == before


def test_rm_is_refused_while_a_running_job_uses_the_dataset(ip, server, tmp_path):
    client = server.client()
    data = _tree(tmp_path / "busy", {"f.txt": b"first\n"})
    client.upload_dataset(data, "busy")
    (data / "f.txt").write_bytes(b"second\n")
    client.upload_dataset(data, "busy")
    handle = ip.run_cell_magic(
        "aigrid", "run --detach --dataset busy@1 --name holder", "import time\ntime.sleep(60)"
    )
    try:
        _until(lambda: client.job(handle.id)["state"] == "running", what="the job to run")
        for line in ("dataset rm busy", "dataset rm busy --version 1"):
            with pytest.raises(UsageError) as info:
                ip.run_line_magic("aigrid", line)
            assert str(info.value) == (
                f"%aigrid dataset rm: dataset 'busy' is in use by job(s) {handle.id} (running); "
                "cancel them first"
            )
        # The version the job does not read can go.
        with capture_output() as cap:
            ip.run_line_magic("aigrid", "dataset rm busy --version 2")
        assert cap.stdout == "deleted version 2 of dataset busy\n"
        assert [v["version"] for v in client.dataset("busy")["versions"]] == [1]
    finally:
        client.cancel(handle.id)
        handle.widget.close()
    _until(lambda: client.job(handle.id)["state"] == "cancelled", what="the cancel")
    with capture_output() as cap:
        ip.run_line_magic("aigrid", "dataset rm busy")
    assert cap.stdout == "deleted dataset busy (version 1)\n"
    with pytest.raises(AIGridError) as info:
        client.dataset("busy")
    assert info.value.status == 404
    with pytest.raises(UsageError, match=r"^%aigrid dataset rm: no dataset 'busy'$"):
        ip.run_line_magic("aigrid", "dataset rm busy")


def test_verify_reports_each_copy_and_finds_a_damaged_one(ip, server, tmp_path):
    data = _tree(tmp_path / "checked", {"a.txt": b"intact\n", "b.txt": b"also intact\n"})
    dataset = server.client().upload_dataset(data, "checked")
    with capture_output() as cap:
        ip.run_line_magic("aigrid", "dataset verify checked")
    assert cap.stdout == "checked@1 on node-0: verified\n"
    # Damage the copy on node-0 behind the master's back (same size, other bytes).
    copy = next(
        p for p in server.root.rglob(dataset["root"]) if p.parent.name == "checked" and p.is_dir()
    )
    os.chmod(copy / "a.txt", 0o600)
    (copy / "a.txt").write_bytes(b"broken\n")
    with capture_output() as cap, pytest.raises(UsageError, match="has corrupt copies"):
        ip.run_line_magic("aigrid", "dataset verify checked")
    assert cap.stdout.startswith("checked@1 on node-0: corrupt (a.txt: content differs")
    assert _copies(server.client().dataset("checked")) == {"node-0": "corrupt"}
    with capture_output() as cap:
        ip.run_line_magic("aigrid", "dataset list")
    assert "node-0 corrupt" in cap.outputs[0].data["text/plain"]
    with capture_output():
        ip.run_line_magic("aigrid", "dataset rm checked")
    assert not copy.exists()


def test_single_file_upload_and_refusals(ip, server, tmp_path):
    client = server.client()
    single = tmp_path / "weights.bin"
    single.write_bytes(os.urandom(5000))
    with capture_output():
        ip.run_line_magic("aigrid", f"dataset upload {single} --node node-1")
    dataset = client.dataset("weights.bin")  # named by the file, by default
    entry = contents.FileEntry("weights.bin", 5000, contents.hash_file(single))
    assert dataset["root"] == contents.Manifest.of([entry]).root
    assert _copies(dataset) == {"node-1": "verified"}

    linked = _tree(tmp_path / "linked", {"real.txt": b"data\n"})
    (linked / "alias.txt").symlink_to(linked / "real.txt")
    (tmp_path / "Upper").mkdir()
    for line, words in [
        (f"dataset upload {linked} --name linked", "symlinks are not allowed in a dataset: alias"),
        (f"dataset upload {tmp_path / 'absent'} --name x", "no such file or folder"),
        (f"dataset upload {tmp_path / 'Upper'}", "Upper's name is no dataset name; give one"),
        (f"dataset upload {single} --name Bad!", "name must be 1 to 64 characters"),
        (f"dataset upload {single} --name ok --node node-9", "'node' must be one of"),
        ("dataset", "%aigrid dataset: say what to do: commands: upload, list, verify, rm"),
        ("dataset lst", "unknown dataset command 'lst'; did you mean 'list'?"),
        ("dataset rm x --version 0", "must be a version number >= 1"),
        ("dataset upload", "the following arguments are required: PATH"),
    ]:
        with pytest.raises(UsageError) as info:
            ip.run_line_magic("aigrid", line)
        assert words in str(info.value), (line, str(info.value))
    assert client.uploads() == []
    assert [d["name"] for d in client.datasets()].count("linked") == 0

    with capture_output() as cap:
        ip.run_line_magic("aigrid", "dataset --help")
    for command in ("upload", "list", "verify", "rm"):
        assert f"%dataset {command}" in cap.stdout
    doc = ip.find_line_magic("aigrid").__doc__
    assert "%aigrid dataset upload PATH [--name NAME] [--node NODE]" in doc
    assert "%aigrid dataset rm NAME [--version V]" in doc


# -- the client's resumable upload --------------------------------------------------------------


def test_an_interrupted_upload_resumes_and_sends_only_the_rest(server, tmp_path):
    data = _tree(
        tmp_path / "resumable",
        {"big.bin": os.urandom(5 * CHUNK + 123), "notes/readme.txt": b"small\n"},
    )
    total = 5 * CHUNK + 123 + 6
    client = RecordingClient(server)

    def stop_after_a_chunk_of_big(received: int, total: int) -> None:
        if client.puts and client.puts[-1][0] == "big.bin":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        client.upload_dataset(
            data, "resumable", progress=stop_after_a_chunk_of_big, chunk_bytes=CHUNK
        )
    assert client.puts == [("big.bin", 0, CHUNK)]
    (pending,) = [u for u in client.uploads() if u["name"] == "resumable"]
    assert (pending["received"], pending["bytes"], pending["complete"]) == (CHUNK, total, False)

    # An unfinished upload of the name with other files can never be resumed: it goes.
    client.create_upload("resumable", [{"path": "other.bin", "size": 10}])
    client.puts.clear()
    seen: list[tuple[int, int]] = []
    dataset = client.upload_dataset(
        data, "resumable", progress=lambda r, t: seen.append((r, t)), chunk_bytes=CHUNK
    )
    # Only what the master did not have: big.bin from its second chunk, then the small file.
    assert client.puts[0] == ("big.bin", CHUNK, CHUNK)
    assert sum(n for _, _, n in client.puts) == total - CHUNK
    assert [p for p in client.puts if p[0] == "notes/readme.txt"] == [("notes/readme.txt", 0, 6)]
    assert seen[0] == (CHUNK, total) and seen[-1] == (total, total)
    assert dataset["root"] == contents.build_manifest(data).root
    assert (dataset["latest"], dataset["files"], dataset["bytes"]) == (1, 2, total)
    assert client.uploads() == []  # committed: nothing left to resume


class FlakyClient(RecordingClient):
    """Loses the answer to the first chunk (the master has it, the client does not know),
    cannot reach the master for the first read of the upload after that, and has another
    request send big.bin's third chunk just before this client does."""

    def __init__(self, server, data: Path) -> None:
        super().__init__(server)
        self.data = data
        self.failures: list[int | str] = []

    def upload(self, upload_id: str) -> dict[str, Any]:
        if "unreachable" not in self.failures:
            self.failures.append("unreachable")
            raise AIGridError("cannot reach the AI Grid master: connection refused", 0)
        return super().upload(upload_id)

    def put_chunk(self, upload_id: str, path: str, offset: int, body: Any) -> int:
        if not self.puts and not self.failures:
            super().put_chunk(upload_id, path, offset, body)
            self.failures.append(0)
            raise AIGridError("cannot reach the AI Grid master: connection reset", 0)
        if path == "big.bin" and offset == 2 * CHUNK and 409 not in self.failures:
            chunk = (self.data / path).read_bytes()[offset : offset + CHUNK]
            super().put_chunk(upload_id, path, offset, chunk)
            try:
                return super().put_chunk(upload_id, path, offset, body)
            except AIGridError as e:
                self.failures.append(e.status)
                raise
        return super().put_chunk(upload_id, path, offset, body)


def test_a_lost_answer_and_an_offset_conflict_are_picked_up_from_the_master(
    server, tmp_path, monkeypatch
):
    monkeypatch.setattr(uploading, "RETRY_S", 0.01)
    data = _tree(tmp_path / "flaky", {"big.bin": os.urandom(4 * CHUNK)})
    client = FlakyClient(server, data)
    dataset = client.upload_dataset(data, "flaky", chunk_bytes=CHUNK)
    assert client.failures == [0, "unreachable", 409]
    # Each byte went to the master once: the lost chunk and the other request's were not
    # sent again, each answer having been read back from the upload.
    assert client.puts == [
        ("big.bin", 0, CHUNK),  # its answer lost
        ("big.bin", CHUNK, CHUNK),  # on from the master's count, not from 0
        ("big.bin", 2 * CHUNK, CHUNK),  # the other request's
        ("big.bin", 3 * CHUNK, CHUNK),  # on after the 409, not 2 * CHUNK again
    ]
    assert dataset["root"] == contents.build_manifest(data).root


def test_a_file_that_changes_while_it_is_sent_is_refused(server, tmp_path):
    data = _tree(tmp_path / "moving", {"log.txt": b"a" * (3 * CHUNK)})
    client = RecordingClient(server)
    upload = uploading.DatasetUpload(client, data, "moving", chunk_bytes=CHUNK)
    upload.hash()
    upload.start()
    (data / "log.txt").write_bytes(b"b" * (3 * CHUNK))  # same size, other bytes
    upload.send()
    with pytest.raises(uploading.UploadError, match="not the declared"):
        upload.commit()
    assert client.uploads() == []  # discarded, so that running it again starts afresh
    # Shorter than when it was hashed: caught before a byte of it is sent.
    (data / "log.txt").write_bytes(b"c" * CHUNK)
    upload.start()
    with pytest.raises(uploading.UploadError, match="changed size since it was hashed"):
        upload.send()
    assert upload.received == 0
    client.delete_upload(upload.upload["id"])


# -- widgets, without a master ------------------------------------------------------------------


class FakeClient(Client):
    def __init__(self, view: dict[str, Any]) -> None:
        super().__init__(NOWHERE, "tok")
        self.view = view
        self.reads = 0

    def job(self, job_id: str) -> dict[str, Any]:
        self.reads += 1
        return self.view


def _staging_job(state: str = "staging", phase: str | None = "staging", done: int = 0) -> dict:
    return {
        "id": "3",
        "name": "train",
        "state": "starting",
        "spec": {},
        "placement": [],
        "qos": "normal",
        "phase": phase,
        "datasets": ["mnist@2"],
        "staging": {
            "state": state,
            "attempt": 0,
            "bytes": 268_000_000,
            "done": done,
            "datasets": [{"dataset": "mnist@2", "node": "node-1", "bytes": 268_000_000}],
            "error": None,
        },
    }


def test_job_widget_shows_the_staging_phase_from_events():
    client = FakeClient(_staging_job())
    widget = JobWidget(client, client.view, follow=False)
    widget._client = client
    try:
        assert "staging data: 0% (0 B of 256 MiB) &middot; mnist@2" in widget._timeline.value
        progress = {"state": "progress", "attempt": 0, "bytes": 268_000_000, "done": 120_600_000}
        event = {"seq": 0, "type": "job_staging", "job_id": "3", "data": progress}
        assert widget._on_change(event) is False
        assert "staging data: 45% (115 MiB of 256 MiB)" in widget._timeline.value
        assert client.reads == 0  # progress alone is drawn from the event
        # Another job's progress is none of its business; a re-read keeps the bytes done.
        other = {**event, "job_id": "4", "data": {**progress, "done": 1}}
        widget._on_change(other)
        widget._on_change({"seq": 9, "type": "job_state", "job_id": "3", "data": {}})
        assert client.reads == 1
        assert "45% (115 MiB of 256 MiB)" in widget._timeline.value
        client.view = {**_staging_job("done", None, 268_000_000), "state": "running"}
        done = {**event, "data": {**progress, "state": "done", "done": 268_000_000}}
        widget._on_change(done)
        assert (widget.phase, widget._timeline.value) == (None, "")
    finally:
        widget.close()


def test_upload_progress_widget_and_terminal_lines(capsys):
    now = [100.0]
    progress = UploadProgress("tiny", 2, widget=True, clock=lambda: now[0])
    progress.hashing(0, 100_000_000)
    progress.sending(20_000_000, 100_000_000)  # resumed: 20 MB were there already
    now[0] += 2.0
    progress.sending(70_000_000, 100_000_000)
    assert progress.bar.value == 0.7
    assert progress.label.value == "uploading tiny: 70% (67 MiB of 95 MiB, 24 MiB/s)"
    assert capsys.readouterr().out == ""  # the widget says it all until the end

    lines = UploadProgress("tiny", 1, widget=False, clock=lambda: now[0])
    lines.hashing(0, 100)
    lines.hashing(50, 100)
    for sent in range(0, 101, 5):
        lines.sending(sent, 100)
    lines.interrupted(100, 100)
    out = capsys.readouterr()
    printed = out.out.splitlines()
    assert printed[0] == "hashing tiny: 1 file, 100 B"
    assert [line.split(":")[1].split("%")[0].strip() for line in printed[1:]] == [
        str(p) for p in range(0, 101, 10)
    ]
    assert "run the same command again to send the rest" in out.err
