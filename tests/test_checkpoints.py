"""Checkpoint pieces on disk (``checkpoints``) and the runtime's checkpoint API, without a master.

End-to-end tests through the master live in test_migration.py; these exercise the two modules
directly: pieces and manifests, listing, staging between node roots, retention, the runtime's
checkpoint/restore, its answers to the master's requests, and the resumable sampler.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jupyter_aigrid import checkpoints as ck
from jupyter_aigrid import runtime, safefs
from jupyter_aigrid.checkpoints import CheckpointError
from jupyter_aigrid.runtime import ResumableSampler
from jupyter_aigrid.server import checkpoint_transfer as transfer
from jupyter_aigrid.server.executors.nodefiles import NodeFiles, copy_verified

ENV = (
    "AIGRID_CHECKPOINT_DIR",
    "AIGRID_ATTEMPT",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "AIGRID_JOB_ID",
    "AIGRID_RESTORE",
    "AIGRID_RESTORE_SHA256",
    "AIGRID_CHECKPOINT_KEEP",
    "AIGRID_CHECKPOINT_INTERVAL_S",
    "AIGRID_SIMULATED_GPUS",
)


def fresh_state() -> runtime._State:
    state = runtime._State()
    state.last_at = time.monotonic()  # the class attribute is the module's import time
    return state


@pytest.fixture(autouse=True)
def _isolated_runtime(monkeypatch):
    """No environment of the runner leaks in; fresh module state; SIGUSR1 handler restored."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runtime, "_state", fresh_state())
    previous = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, previous)


@pytest.fixture
def root(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "ckpt"
    monkeypatch.setenv("AIGRID_CHECKPOINT_DIR", str(path))
    return path


@pytest.fixture
def no_torch(monkeypatch):
    """The runtime serialises with pickle when torch is not imported: hide it for the test."""
    monkeypatch.delitem(sys.modules, "torch", raising=False)


def restart(monkeypatch) -> None:
    """As if a new process started: the runtime's module state is fresh."""
    monkeypatch.setattr(runtime, "_state", fresh_state())


def put(
    root: Path,
    attempt: int,
    seq: int,
    rank: int = 0,
    world: int = 1,
    data: bytes | None = None,
    step: int | None = None,
) -> dict:
    """Write one piece directly (no runtime); returns its manifest."""
    payload = data if data is not None else f"{attempt}.{seq}.{rank}".encode() * 10
    return ck.write_piece(
        root / ck.name_of(attempt, seq),
        rank,
        world,
        lambda f: f.write(payload),
        {"step": step if step is not None else seq},
    )


def damage(folder: Path, how: str, rank: int = 0) -> None:
    data = folder / ck.data_file(rank)
    if how == "flip":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif how == "truncate":
        data.write_bytes(data.read_bytes()[:-7])
    elif how == "extend":
        data.write_bytes(data.read_bytes() + b"more")
    elif how == "no-manifest":
        (folder / ck.manifest_file(rank)).unlink()
    elif how == "no-data":
        data.unlink()
    else:  # pragma: no cover
        raise AssertionError(how)


#: What stage() and restore() say about each damage.
STAGE_PROBLEM = {
    "flip": "does not match its sha256",
    "truncate": "its manifest says",
    "extend": "its manifest says",
    "no-manifest": "incomplete: no manifest for rank 0",
    "no-data": "data file rank-0.pt is missing",
}
RESTORE_PROBLEM = {**STAGE_PROBLEM, "no-manifest": "rank 0 has no manifest"}


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- names and order -----------------------------------------------------------------------------


def test_names_order_by_attempt_then_seq(tmp_path: Path):
    assert ck.name_of(0, 9) == "ckpt-0000.000009"
    assert ck.parse_name(ck.name_of(1, 3)) == (1, 3)
    assert ck.parse_name(ck.name_of(1, 3)) > ck.parse_name(ck.name_of(0, 9))
    for name in ("ckpt-1.000001", "ckpt-0001.00001", "ckpt-0001.000001.tmp", "other", ".control"):
        assert ck.parse_name(name) is None
    # Beyond the padding the order stays numeric, not lexical.
    assert ck.parse_name(ck.name_of(10000, 1)) > ck.parse_name(ck.name_of(9999, 999999))

    root = tmp_path / "root"
    names = [ck.name_of(1, 3), ck.name_of(0, 9), ck.name_of(10000, 1), ck.name_of(0, 10)]
    for name in names:
        (root / name).mkdir(parents=True)
    (root / "ckpt-0002.000001").write_text("a file, not a folder")
    (root / "notes").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / ck.name_of(5, 5)).symlink_to(outside, target_is_directory=True)
    assert ck.piece_names(root) == [
        ck.name_of(0, 9),
        ck.name_of(0, 10),
        ck.name_of(1, 3),
        ck.name_of(10000, 1),
    ]
    assert ck.piece_names(tmp_path / "missing") == []
    assert [f.name for f in transfer.scan({"n": root})] == ck.piece_names(root)[::-1]


# -- pieces and manifests ------------------------------------------------------------------------


def test_write_piece_manifest_lists_sha256_and_size(tmp_path: Path):
    folder = tmp_path / ck.name_of(0, 1)
    data = os.urandom(5000)
    manifest = ck.write_piece(folder, 1, 2, lambda f: f.write(data), {"step": 7, "seq": 1})
    assert files_in(folder) == ["rank-1.json", "rank-1.pt"]  # no temp file left
    assert (folder / "rank-1.pt").read_bytes() == data
    on_disk = json.loads((folder / "rank-1.json").read_text())
    assert on_disk == manifest
    assert manifest["files"] == {
        "rank-1.pt": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    }
    assert manifest["rank"] == 1
    assert manifest["world_size"] == 2
    assert manifest["step"] == 7
    assert manifest["format"] == ck.FORMAT
    assert ck.read_manifest(folder, 1, tmp_path) == manifest
    assert ck.read_verified(folder, 1, tmp_path) == manifest
    assert ck.load_verified(folder, 1, tmp_path) == (manifest, data)
    assert ck.ranks_in(tmp_path, folder.name) == {1}


@pytest.mark.parametrize("writeback", [True, False], ids=["writeback", "no-writeback"])
def test_write_piece_hashes_big_and_small_writes_as_written(tmp_path: Path, monkeypatch, writeback):
    """Big writes are hashed in a second thread, in slices handed to the disk one by one;
    small ones inline; views of other item types count in bytes. The manifest's digest is
    the file's, whichever path each write took."""
    monkeypatch.setattr(ck, "PARALLEL_HASH", 4096)
    monkeypatch.setattr(ck, "SLICE", 10_000)
    if not writeback:
        monkeypatch.setattr(safefs, "writeback", lambda: None)
    big = os.urandom(95_001)
    floats = np.arange(3000, dtype=np.float64)  # a 2-byte-item view of 24,000 bytes
    parts = [b"head", big, memoryview(floats).cast("B").cast("H"), b"tail" * 10]

    def write(f):
        for part in parts:
            assert f.write(part) == memoryview(part).nbytes

    folder = tmp_path / ck.name_of(0, 1)
    manifest = ck.write_piece(folder, 0, 1, write, {})
    data = (folder / "rank-0.pt").read_bytes()
    assert data == b"head" + big + floats.tobytes() + b"tail" * 10
    assert manifest["files"]["rank-0.pt"] == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }
    assert ck.read_verified(folder, 0, tmp_path) == manifest


def test_write_piece_of_a_torch_state_without_crc32_loads_back(root, monkeypatch):
    """torch.save's own CRC-32 is left out of checkpoints (the sha256 covers them), and the
    user's own setting is left as it was."""
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("AIGRID_RESTORE", "")
    state = {"w": torch.randn(300, 300), "step": 3}
    name = runtime.checkpoint(state)
    assert torch.serialization.get_crc32_options() is True
    with zipfile.ZipFile(root / name / "rank-0.pt") as z:
        assert {i.CRC for i in z.infolist()} == {0}
    loaded = runtime._load(root / name, root)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 3


def test_write_piece_that_fails_leaves_no_piece(tmp_path: Path):
    folder = tmp_path / ck.name_of(0, 1)

    def write(f):
        f.write(b"half of it")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ck.write_piece(folder, 0, 1, write, {})
    assert files_in(folder) == []
    assert ck.ranks_in(tmp_path, folder.name) == set()
    assert transfer.complete({"n": tmp_path}, 1) == []


def test_write_piece_replaces_a_link_planted_at_its_temp_name(tmp_path: Path):
    folder = tmp_path / "root" / ck.name_of(0, 1)
    folder.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (folder / f".rank-0.pt.{os.getpid()}.tmp").symlink_to(victim)
    (folder / "rank-0.pt").symlink_to(victim)
    ck.write_piece(folder, 0, 1, lambda f: f.write(b"data"), {})
    assert victim.read_text() == "precious"
    assert not (folder / "rank-0.pt").is_symlink()
    ck.read_verified(folder, 0, tmp_path / "root")


def test_write_piece_refuses_a_linked_folder(tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / ck.name_of(0, 1)).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(CheckpointError, match="not a directory"):
        ck.write_piece(root / ck.name_of(0, 1), 0, 1, lambda f: f.write(b"x"), {})
    assert files_in(elsewhere) == []


def good_manifest(data: bytes = b"data") -> dict:
    return {
        "rank": 0,
        "world_size": 1,
        "files": {"rank-0.pt": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}},
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "cannot be read"),
        ("\xff\xfe", "cannot be read"),
        ("[1, 2]", "malformed"),
        (json.dumps({"rank": 0, "world_size": 1}), "malformed"),
        (json.dumps({**good_manifest(), "rank": 1}), "malformed"),
        (json.dumps({**good_manifest(), "world_size": "1"}), "malformed"),
        (
            json.dumps({**good_manifest(), "files": {**good_manifest()["files"], "rank-1.pt": {}}}),
            "malformed",
        ),
        (
            json.dumps({**good_manifest(), "files": {"rank-0.pt": {"sha256": 1, "bytes": 4}}}),
            "malformed",
        ),
        (
            json.dumps({**good_manifest(), "files": {"rank-0.pt": {"sha256": "x", "bytes": "4"}}}),
            "malformed",
        ),
    ],
)
def test_read_manifest_refuses_what_is_malformed(tmp_path: Path, text: str, message: str):
    folder = tmp_path / ck.name_of(0, 1)
    folder.mkdir()
    (folder / "rank-0.pt").write_bytes(b"data")
    (folder / "rank-0.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError, match=message):
        ck.read_manifest(folder, 0, tmp_path)
    assert transfer.stage({"n": tmp_path}, {0: "n"}, 1).name is None


def test_read_manifest_entry_that_is_not_an_object(tmp_path: Path):
    put(tmp_path, 0, 1)
    folder = tmp_path / ck.name_of(0, 2)
    folder.mkdir()
    (folder / "rank-0.pt").write_bytes(b"data")
    (folder / "rank-0.json").write_text(
        json.dumps({**good_manifest(), "files": {"rank-0.pt": "abc"}})
    )
    staged = transfer.stage({"n": tmp_path}, {0: "n"}, 1)
    assert staged.name == ck.name_of(0, 1)
    assert staged.problems == [(ck.name_of(0, 2), "rank 0's manifest is malformed")]


def test_read_manifest_does_not_follow_links(tmp_path: Path):
    root = tmp_path / "root"
    put(root, 0, 1)
    folder = root / ck.name_of(0, 1)
    outside = tmp_path / "manifest.json"
    outside.write_text((folder / "rank-0.json").read_text())
    (folder / "rank-0.json").unlink()
    (folder / "rank-0.json").symlink_to(outside)
    with pytest.raises(CheckpointError, match="no manifest"):
        ck.read_manifest(folder, 0, root)


@pytest.mark.parametrize("how", ["flip", "truncate", "extend", "no-data", "no-manifest"])
def test_read_verified_names_the_difference(tmp_path: Path, how: str):
    put(tmp_path, 0, 1, data=os.urandom(3000))
    folder = tmp_path / ck.name_of(0, 1)
    size = (folder / "rank-0.pt").stat().st_size
    damage(folder, how)
    seen: list[bytes] = []
    with pytest.raises(CheckpointError, match=RESTORE_PROBLEM[how]):
        ck.read_verified(folder, 0, tmp_path, seen.append)
    assert sum(map(len, seen)) <= size  # never more than the manifest allows
    with pytest.raises(CheckpointError):
        ck.load_verified(folder, 0, tmp_path)


@pytest.mark.parametrize("how", ["intact", "other-digest", "truncate", "extend", "no-manifest"])
def test_vouched_for_only_the_digest_and_size_it_was_verified_with(tmp_path: Path, how: str):
    manifest = put(tmp_path, 0, 1, data=os.urandom(3000))
    folder = tmp_path / ck.name_of(0, 1)
    digest = manifest["files"]["rank-0.pt"]["sha256"]
    if how == "other-digest":
        digest = "0" * 64
    elif how != "intact":
        damage(folder, how)
    assert ck.vouched_for(folder, 0, tmp_path, digest) is (how == "intact")


def test_vouched_for_does_not_follow_a_linked_data_file(tmp_path: Path):
    manifest = put(tmp_path, 0, 1, data=b"x" * 100)
    folder = tmp_path / ck.name_of(0, 1)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.pt"
    outside.write_bytes(b"y" * 100)
    (folder / "rank-0.pt").unlink()
    (folder / "rank-0.pt").symlink_to(outside)
    assert not ck.vouched_for(folder, 0, tmp_path, manifest["files"]["rank-0.pt"]["sha256"])


def test_restore_trusts_the_digest_the_master_vouched_for_only_while_it_matches(root, monkeypatch):
    """Under the master, staging has just hashed the piece: restore() does not hash it again
    while the manifest names that digest and the size holds; any other digest, or another
    size, and it verifies (and finds the damage)."""
    pytest.importorskip("torch")
    monkeypatch.setenv("AIGRID_JOB_ID", "job-7")
    name = runtime.checkpoint({"step": 4, "blob": b"z" * 4096})
    digest = ck.read_manifest(root / name, 0, root)["files"]["rank-0.pt"]["sha256"]
    monkeypatch.setenv("AIGRID_RESTORE", str(root / name))
    monkeypatch.setenv("AIGRID_ATTEMPT", "1")
    restart(monkeypatch)
    monkeypatch.setenv("AIGRID_RESTORE_SHA256", digest)
    assert runtime.restore()["step"] == 4
    damage(root / name, "extend")
    restart(monkeypatch)
    with pytest.raises(CheckpointError, match="bytes"):
        runtime.restore()  # the size no longer matches: verified, and refused
    raw = (root / name / "rank-0.pt").read_bytes()[:-4]
    (root / name / "rank-0.pt").write_bytes(raw[:100] + bytes([raw[100] ^ 0xFF]) + raw[101:])
    restart(monkeypatch)
    monkeypatch.setenv("AIGRID_RESTORE_SHA256", "0" * 64)
    with pytest.raises(CheckpointError, match="sha256"):
        runtime.restore()  # not the digest of this manifest: hashed, and the flip found


def test_read_verified_in_chunks(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(safefs, "CHUNK", 1000)
    monkeypatch.setattr(safefs, "PIPELINE_FROM", 4000)  # two buffers, one hashed on a thread
    data = os.urandom(4500)
    put(tmp_path, 0, 1, data=data)
    seen: list[bytes] = []
    ck.read_verified(tmp_path / ck.name_of(0, 1), 0, tmp_path, seen.append)
    assert [len(c) for c in seen] == [1000, 1000, 1000, 1000, 500]
    assert b"".join(seen) == data


# -- listing: complete() and scan() --------------------------------------------------------------


def test_complete_lists_a_checkpoint_once_every_rank_has_a_manifest(tmp_path: Path):
    roots = {"n": tmp_path}
    name = ck.name_of(0, 1)
    put(tmp_path, 0, 1, rank=0, world=2)
    assert transfer.complete(roots, 2) == []
    assert transfer.complete(roots, 1) == [name]  # what a gang of one would see
    (found,) = transfer.scan(roots)
    assert found.holders == {0: ["n"]}
    assert found.missing(2) == [1]
    # The data of rank 1 alone does not count: the manifest makes the piece.
    (tmp_path / name / "rank-1.pt").write_bytes(b"no manifest yet")
    assert transfer.complete(roots, 2) == []
    put(tmp_path, 0, 1, rank=1, world=2)
    assert transfer.complete(roots, 2) == [name]


def test_complete_across_nodes_newest_first(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    for seq in (1, 2, 3):
        put(a, 0, seq, rank=0, world=2)
        if seq != 3:
            put(b, 0, seq, rank=1, world=2)
    put(a, 1, 1, rank=0, world=2)
    put(b, 1, 1, rank=1, world=2)
    roots = {"A": a, "B": b}
    assert transfer.complete(roots, 2) == [ck.name_of(1, 1), ck.name_of(0, 2), ck.name_of(0, 1)]
    scanned = transfer.scan(roots)
    assert [f.name for f in scanned] == [
        ck.name_of(1, 1),
        ck.name_of(0, 3),
        ck.name_of(0, 2),
        ck.name_of(0, 1),
    ]
    assert scanned[0].holders == {0: ["A"], 1: ["B"]}
    assert scanned[1].missing(2) == [1]


# -- staging -------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flip", "truncate", "no-manifest", "no-data"])
def test_stage_passes_over_a_damaged_latest(tmp_path: Path, how: str):
    for seq in (1, 2):
        put(tmp_path, 0, seq, data=os.urandom(2000 + seq), step=seq * 10)
    damage(tmp_path / ck.name_of(0, 2), how)
    staged = transfer.stage({"n": tmp_path}, {0: "n"}, 1)
    assert staged.name == ck.name_of(0, 1)
    assert staged.step == 10
    assert staged.bytes == 2001
    assert staged.copied == 0
    assert len(staged.problems) == 1
    name, problem = staged.problems[0]
    assert name == ck.name_of(0, 2)
    assert STAGE_PROBLEM[how] in problem


def test_stage_with_a_damaged_piece_of_one_rank(tmp_path: Path):
    for seq in (1, 2):
        for r in (0, 1):
            put(tmp_path, 0, seq, rank=r, world=2)
    damage(tmp_path / ck.name_of(0, 2), "flip", rank=1)
    staged = transfer.stage({"n": tmp_path}, {0: "n", 1: "n"}, 2)
    assert staged.name == ck.name_of(0, 1)
    assert staged.problems == [
        (ck.name_of(0, 2), "rank-1.pt does not match its sha256 in the manifest")
    ]


def test_stage_with_nothing_to_restore(tmp_path: Path):
    staged = transfer.stage({"n": tmp_path / "none"}, {0: "n"}, 1)
    assert (staged.name, staged.step, staged.bytes, staged.copied) == (None, None, 0, 0)
    assert staged.problems == []

    put(tmp_path, 0, 1)
    damage(tmp_path / ck.name_of(0, 1), "flip")
    (tmp_path / ck.name_of(0, 2)).mkdir()  # a write that never got far
    staged = transfer.stage({"n": tmp_path}, {0: "n"}, 1)
    assert staged.name is None
    assert [n for n, _ in staged.problems] == [ck.name_of(0, 2), ck.name_of(0, 1)]


def test_stage_refuses_pieces_of_another_gang_size(tmp_path: Path):
    put(tmp_path, 0, 1, world=1)
    put(tmp_path, 0, 2, world=2)  # rank 0 of a gang of 2, looked for by a gang of 1
    staged = transfer.stage({"n": tmp_path}, {0: "n"}, 1)
    assert staged.name == ck.name_of(0, 1)
    assert staged.problems == [(ck.name_of(0, 2), "written by a gang of 2, not 1")]


def two_nodes(tmp_path: Path, seqs=(1, 2)) -> tuple[dict[str, Path], dict[str, int]]:
    """Pieces of a gang of 2 on node A; returns the roots and each piece's size by name."""
    a, b = tmp_path / "a", tmp_path / "b"
    b.mkdir()
    sizes = {}
    for seq in seqs:
        for r in (0, 1):
            put(a, 0, seq, rank=r, world=2, data=os.urandom(1000 * seq + r), step=seq)
        sizes[ck.name_of(0, seq)] = 2000 * seq + 1
    return {"A": a, "B": b}, sizes


def test_stage_copies_pieces_to_the_ranks_node(tmp_path: Path):
    roots, sizes = two_nodes(tmp_path)
    a, b = roots["A"], roots["B"]
    name = ck.name_of(0, 2)
    staged = transfer.stage(roots, {0: "B", 1: "B"}, 2)
    assert staged.name == name
    assert staged.step == 2
    assert staged.copied == sizes[name]
    assert staged.bytes == sizes[name]
    assert staged.problems == []
    assert files_in(b) == [name]  # only the chosen checkpoint travels
    assert files_in(b / name) == ["rank-0.json", "rank-0.pt", "rank-1.json", "rank-1.pt"]
    for r in (0, 1):
        assert ck.read_verified(b / name, r, b) == ck.read_manifest(a / name, r, a)
        assert (b / name / ck.data_file(r)).read_bytes() == (
            a / name / ck.data_file(r)
        ).read_bytes()

    again = transfer.stage(roots, {0: "B", 1: "B"}, 2)
    assert (again.name, again.bytes, again.copied) == (name, sizes[name], 0)
    assert again.problems == []
    assert transfer.scan(roots)[0].holders == {0: ["A", "B"], 1: ["A", "B"]}


def test_stage_copies_only_what_is_elsewhere(tmp_path: Path):
    roots, _ = two_nodes(tmp_path, seqs=(1,))
    name = ck.name_of(0, 1)
    staged = transfer.stage(roots, {0: "A", 1: "B"}, 2)
    assert staged.name == name
    assert staged.copied == 1001  # rank 1's piece only
    assert files_in(roots["B"] / name) == ["rank-1.json", "rank-1.pt"]


def test_stage_passes_over_a_checkpoint_whose_copy_fails(tmp_path: Path):
    roots, sizes = two_nodes(tmp_path)
    calls = []

    class Failing(NodeFiles):
        @staticmethod
        def copy_checkpoint(src_node, src, src_root, dst_node, dst, rank):
            calls.append((src.name, rank))
            if src.name == ck.name_of(0, 2) and rank == 1:
                raise OSError("no space left on device")
            return copy_verified(src, src_root, dst, rank)

    staged = transfer.stage(roots, {0: "B", 1: "B"}, 2, Failing())
    assert staged.name == ck.name_of(0, 1)
    assert staged.problems == [(ck.name_of(0, 2), "no space left on device")]
    assert staged.copied == 2000 + sizes[ck.name_of(0, 1)]  # rank 0 of the newest, then all
    assert calls == [(ck.name_of(0, 2), 0), (ck.name_of(0, 2), 1)] + [
        (ck.name_of(0, 1), r) for r in (0, 1)
    ]


def test_stage_passes_over_a_corrupt_source(tmp_path: Path):
    roots, _ = two_nodes(tmp_path)
    damage(roots["A"] / ck.name_of(0, 2), "flip", rank=1)
    staged = transfer.stage(roots, {0: "B", 1: "B"}, 2)
    assert staged.name == ck.name_of(0, 1)
    assert staged.problems == [
        (ck.name_of(0, 2), "rank-1.pt does not match its sha256 in the manifest")
    ]
    # The bad piece never landed on B (rank 0's good one may have).
    assert not (roots["B"] / ck.name_of(0, 2) / "rank-1.pt").exists()
    assert not (roots["B"] / ck.name_of(0, 2) / "rank-1.json").exists()
    assert transfer.complete({"B": roots["B"]}, 2) == [ck.name_of(0, 1)]


# -- copy_verified -------------------------------------------------------------------------------


def test_copy_verified_copies_data_and_manifest(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    data = os.urandom(12345)
    manifest = put(a, 0, 1, rank=3, world=4, data=data)
    name = ck.name_of(0, 1)
    assert copy_verified(a / name, a, b / name, 3) == len(data)
    assert files_in(b / name) == ["rank-3.json", "rank-3.pt"]
    assert (b / name / "rank-3.pt").read_bytes() == data
    assert ck.read_verified(b / name, 3, b) == manifest
    assert (b / name / "rank-3.pt").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("kernel", [True, False], ids=["copy_file_range", "read-write"])
@pytest.mark.parametrize("how", ["intact", "extend", "flip"])
def test_copy_verified_in_slices_hashed_as_they_land(tmp_path: Path, monkeypatch, kernel, how):
    """Many slices, each hashed back while the next is copied, in the kernel or (where it
    cannot copy across) by reads and writes: the copy is whole, and damage is still found."""
    monkeypatch.setattr(safefs, "SLICE", 7000)
    monkeypatch.setattr(safefs, "CHUNK", 3000)
    if not kernel:

        def refuse(*args):
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    a, b = tmp_path / "a", tmp_path / "b"
    data = os.urandom(50_001)
    put(a, 0, 1, data=data)
    name = ck.name_of(0, 1)
    if how != "intact":
        damage(a / name, how)
        with pytest.raises(CheckpointError, match=RESTORE_PROBLEM[how]):
            copy_verified(a / name, a, b / name, 0)
        assert files_in(b / name) == []
        return
    assert copy_verified(a / name, a, b / name, 0) == len(data)
    assert (b / name / "rank-0.pt").read_bytes() == data
    ck.read_verified(b / name, 0, b)


def test_copy_verified_refuses_a_link_outside_the_root(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    put(a, 0, 1, data=b"secret of another job")
    name = ck.name_of(0, 1)
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret of another job")  # the manifest would match it
    (a / name / "rank-0.pt").unlink()
    (a / name / "rank-0.pt").symlink_to(secret)
    with pytest.raises((CheckpointError, OSError)):
        copy_verified(a / name, a, b / name, 0)
    assert files_in(b / name) == []
    staged = transfer.stage({"A": a, "B": b}, {0: "B"}, 1)
    assert staged.name is None
    assert staged.problems[0][0] == name
    assert files_in(b / name) == []


def test_copy_verified_refuses_a_linked_folder(tmp_path: Path):
    a, b, elsewhere = tmp_path / "a", tmp_path / "b", tmp_path / "elsewhere"
    put(elsewhere, 0, 1)
    a.mkdir()
    name = ck.name_of(0, 1)
    (a / name).symlink_to(elsewhere / name, target_is_directory=True)
    with pytest.raises((CheckpointError, OSError)):
        copy_verified(a / name, a, b / name, 0)
    assert files_in(b / name) == []
    assert ck.piece_names(a) == []  # never listed either


@pytest.mark.parametrize("how", ["flip", "truncate", "extend", "no-manifest", "no-data"])
def test_copy_verified_refuses_a_corrupt_source(tmp_path: Path, how: str):
    a, b = tmp_path / "a", tmp_path / "b"
    put(a, 0, 1, data=os.urandom(5000))
    name = ck.name_of(0, 1)
    damage(a / name, how)
    with pytest.raises(CheckpointError, match=RESTORE_PROBLEM[how]):
        copy_verified(a / name, a, b / name, 0)
    assert files_in(b / name) == []  # not even a temp file


def test_copy_verified_replaces_links_planted_at_the_destination(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    put(a, 0, 1)
    name = ck.name_of(0, 1)
    (b / name).mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (b / name / "rank-0.pt").symlink_to(victim)
    (b / name / f".rank-0.pt.{os.getpid()}.copy").symlink_to(victim)
    (b / name / "rank-0.json").symlink_to(victim)
    (b / name / f".rank-0.json.{os.getpid()}.tmp").symlink_to(victim)  # the manifest's temp
    copy_verified(a / name, a, b / name, 0)
    assert victim.read_text() == "precious"
    ck.read_verified(b / name, 0, b)


def test_copy_verified_refuses_a_linked_destination(tmp_path: Path):
    a, b, elsewhere = tmp_path / "a", tmp_path / "b", tmp_path / "elsewhere"
    put(a, 0, 1)
    name = ck.name_of(0, 1)
    elsewhere.mkdir()
    b.mkdir()
    (b / name).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(CheckpointError, match="not a directory"):
        copy_verified(a / name, a, b / name, 0)
    assert files_in(elsewhere) == []


def test_ask_does_not_write_through_a_link_at_its_temp_name(tmp_path: Path):
    root = tmp_path / "job"
    ck.control_dir(root).mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (ck.control_dir(root) / f".request.json.{os.getpid()}.tmp").symlink_to(victim)
    transfer.ask([root], "r1", "why")
    assert victim.read_text() == "precious"


# -- retention -----------------------------------------------------------------------------------


def test_prune_keeps_the_newest_of_one_rank(tmp_path: Path):
    for seq in range(1, 6):
        put(tmp_path, 0, seq)
    ck.prune(tmp_path, 0, 2, ck.name_of(0, 5))
    assert files_in(tmp_path) == [ck.name_of(0, 4), ck.name_of(0, 5)]


def test_prune_removes_only_its_own_rank_files(tmp_path: Path):
    for seq in (1, 2, 3):
        for r in (0, 1):
            put(tmp_path, 0, seq, rank=r, world=2)
    (tmp_path / ck.name_of(0, 1) / ".rank-0.pt.99999.tmp").write_bytes(b"killed writer")
    ck.prune(tmp_path, 0, 1, ck.name_of(0, 3))
    for seq in (1, 2):
        assert files_in(tmp_path / ck.name_of(0, seq)) == ["rank-1.json", "rank-1.pt"]
    ck.prune(tmp_path, 1, 1, ck.name_of(0, 3))
    assert files_in(tmp_path) == [ck.name_of(0, 3)]


def test_prune_leaves_another_ranks_newer_piece(tmp_path: Path):
    for seq in (1, 2, 3):
        put(tmp_path, 0, seq, rank=1, world=2)
    for seq in (1, 2):
        put(tmp_path, 0, seq, rank=0, world=2)
    ck.prune(tmp_path, 0, 1, ck.name_of(0, 2))  # rank 1 is one checkpoint ahead
    assert files_in(tmp_path / ck.name_of(0, 3)) == ["rank-1.json", "rank-1.pt"]
    assert files_in(tmp_path / ck.name_of(0, 2)) == [
        "rank-0.json",
        "rank-0.pt",
        "rank-1.json",
        "rank-1.pt",
    ]
    assert files_in(tmp_path / ck.name_of(0, 1)) == ["rank-1.json", "rank-1.pt"]


def test_prune_removes_pieces_newer_than_the_current_one(tmp_path: Path):
    for attempt, seq in [(0, 9), (1, 1), (1, 2), (1, 3), (1, 4)]:
        put(tmp_path, attempt, seq)
    ck.prune(tmp_path, 0, 3, ck.name_of(1, 2))  # restored (1, 1) and wrote (1, 2) again
    assert files_in(tmp_path) == [ck.name_of(0, 9), ck.name_of(1, 1), ck.name_of(1, 2)]
    ck.prune(tmp_path, 0, 2, ck.name_of(1, 2))
    assert files_in(tmp_path) == [ck.name_of(1, 1), ck.name_of(1, 2)]


def test_checkpoint_keeps_the_newest(root, monkeypatch, no_torch):
    monkeypatch.setenv("AIGRID_CHECKPOINT_KEEP", "2")
    names = [runtime.checkpoint({"step": step}) for step in range(5)]
    assert names == [ck.name_of(0, seq) for seq in range(1, 6)]
    assert files_in(root) == names[-2:]
    assert transfer.complete({"n": root}, 1) == names[:-3:-1]


def test_checkpoint_keep_argument_and_default(root, no_torch):
    for step in range(5):
        runtime.checkpoint({"step": step})
    assert files_in(root) == [ck.name_of(0, seq) for seq in (3, 4, 5)]  # DEFAULT_KEEP
    assert runtime.DEFAULT_KEEP == 3
    runtime.checkpoint({"step": 5}, keep=0)  # at least the one just written stays
    assert files_in(root) == [ck.name_of(0, 6)]


def test_checkpoint_retention_with_two_ranks_sharing_the_root(root, monkeypatch, no_torch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    states = {0: fresh_state(), 1: fresh_state()}
    for step in range(5):
        for r in (0, 1):
            monkeypatch.setattr(runtime, "_state", states[r])
            monkeypatch.setenv("RANK", str(r))
            runtime.checkpoint({"step": step, "rank": r}, keep=2)
    names = [ck.name_of(0, 4), ck.name_of(0, 5)]
    assert files_in(root) == names
    for name in names:
        assert files_in(root / name) == ["rank-0.json", "rank-0.pt", "rank-1.json", "rank-1.pt"]
    assert transfer.complete({"n": root}, 2) == names[::-1]
    for r in (0, 1):
        monkeypatch.setattr(runtime, "_state", fresh_state())
        monkeypatch.setenv("RANK", str(r))
        assert runtime.restore() == {"step": 4, "rank": r}


# -- the runtime: checkpoint() and restore() -----------------------------------------------------


def test_checkpoint_and_restore_a_dict_with_pickle(root, monkeypatch, no_torch):
    state = {"step": 3, "weights": [0.5, 1.5], "nested": {"b": b"\x00\x01", "t": (1, 2)}}
    name = runtime.checkpoint(state)
    assert name == ck.name_of(0, 1)
    manifest = ck.read_verified(root / name, 0, root)
    assert manifest["serializer"] == "pickle"
    assert manifest["step"] == 3
    assert manifest["seq"] == 1
    assert manifest["attempt"] == 0
    assert manifest["world_size"] == 1
    assert manifest["job_id"] is None
    assert pickle.loads((root / name / "rank-0.pt").read_bytes()) == state
    assert runtime.checkpoint({"step": "not an int"}) == ck.name_of(0, 2)
    assert ck.read_manifest(root / ck.name_of(0, 2), 0, root)["step"] is None

    restart(monkeypatch)
    assert runtime.restore() == {"step": "not an int"}
    assert runtime.checkpoint({"step": 9}) == ck.name_of(0, 3)  # the line goes on


def test_checkpoint_dir_defaults_to_the_working_directory(tmp_path: Path, monkeypatch, no_torch):
    monkeypatch.chdir(tmp_path)
    assert runtime.checkpoint_dir() == tmp_path / "checkpoints"
    name = runtime.checkpoint({"x": 1})
    assert (tmp_path / "checkpoints" / name / "rank-0.pt").exists()


def test_checkpoint_a_large_numpy_array_with_pickle(root, monkeypatch, no_torch):
    weights = np.arange(20_000, dtype=np.float64)
    runtime.checkpoint({"weights": weights})
    restart(monkeypatch)
    np.testing.assert_array_equal(runtime.restore()["weights"], weights)


@pytest.mark.parametrize("state", [None, [1, 2], "state", ({"step": 1},)])
def test_checkpoint_takes_only_a_dict(root, state):
    with pytest.raises(TypeError, match="takes a dict"):
        runtime.checkpoint(state)
    assert not root.exists()


def test_restore_on_a_fresh_start(root, monkeypatch):
    assert runtime.restore() is None
    root.mkdir()
    (root / ck.name_of(0, 1)).mkdir()  # an empty folder is no checkpoint
    assert runtime.restore() is None
    assert runtime._state.seq is None


def test_restore_under_the_master_uses_only_aigrid_restore(root, monkeypatch, no_torch):
    runtime.checkpoint({"step": 1})
    runtime.checkpoint({"step": 2})
    restart(monkeypatch)
    monkeypatch.setenv("AIGRID_JOB_ID", "job-7")
    monkeypatch.setenv("AIGRID_ATTEMPT", "3")
    assert runtime.restore() is None  # the master said nothing: start afresh
    monkeypatch.setenv("AIGRID_RESTORE", "")
    assert runtime.restore() is None
    monkeypatch.setenv("AIGRID_RESTORE", str(root / ck.name_of(0, 1)))
    assert runtime.restore() == {"step": 1}  # what it named, not the newest
    restored = json.loads(ck.restored_file(root, 3, 0).read_text())
    assert restored["checkpoint"] == ck.name_of(0, 1)
    assert restored["seconds"] >= 0
    name = runtime.checkpoint({"step": 2})
    assert name == ck.name_of(3, 2)
    assert ck.read_manifest(root / name, 0, root)["job_id"] == "job-7"


def test_restore_under_the_master_does_not_fall_back(root, monkeypatch, no_torch):
    runtime.checkpoint({"step": 1})
    runtime.checkpoint({"step": 2})
    damage(root / ck.name_of(0, 2), "flip")
    restart(monkeypatch)
    monkeypatch.setenv("AIGRID_JOB_ID", "job-7")
    monkeypatch.setenv("AIGRID_RESTORE", str(root / ck.name_of(0, 2)))
    with pytest.raises(CheckpointError, match="sha256"):
        runtime.restore()
    assert not ck.restored_file(root, 0, 0).exists()


@pytest.mark.parametrize("how", ["flip", "truncate", "no-manifest", "no-data"])
def test_restore_by_hand_falls_back_past_a_damaged_latest(root, monkeypatch, capsys, no_torch, how):
    runtime.checkpoint({"step": 1})
    runtime.checkpoint({"step": 2})
    damage(root / ck.name_of(0, 2), how)
    staged = transfer.stage({"n": root}, {0: "n"}, 1)
    assert staged.name == ck.name_of(0, 1)
    assert staged.problems[0][0] == ck.name_of(0, 2)
    assert STAGE_PROBLEM[how] in staged.problems[0][1]

    restart(monkeypatch)
    capsys.readouterr()
    assert runtime.restore() == {"step": 1}
    err = capsys.readouterr().err
    assert f"aigrid: checkpoint {ck.name_of(0, 2)} skipped: " in err
    assert RESTORE_PROBLEM[how] in err
    assert ck.name_of(0, 1) not in err
    assert not ck.control_dir(root).exists()  # no master: nothing to tell
    assert runtime.checkpoint({"step": 2}) == ck.name_of(0, 2)  # written again, whole
    ck.read_verified(root / ck.name_of(0, 2), 0, root)


def test_restore_by_hand_when_every_checkpoint_is_damaged(root, monkeypatch, capsys, no_torch):
    runtime.checkpoint({"step": 1})
    runtime.checkpoint({"step": 2})
    damage(root / ck.name_of(0, 1), "flip")
    damage(root / ck.name_of(0, 2), "truncate")
    restart(monkeypatch)
    assert runtime.restore() is None
    err = capsys.readouterr().err
    assert err.count("skipped") == 2
    assert runtime._state.seq is None


def test_restore_prefers_a_newer_attempt_over_a_higher_seq(root, monkeypatch, no_torch):
    runtime._state.seq = 8
    assert runtime.checkpoint({"from": "attempt 0"}) == ck.name_of(0, 9)
    restart(monkeypatch)
    monkeypatch.setenv("AIGRID_ATTEMPT", "1")
    runtime._state.seq = 2
    assert runtime.checkpoint({"from": "attempt 1"}) == ck.name_of(1, 3)
    assert transfer.complete({"n": root}, 1) == [ck.name_of(1, 3), ck.name_of(0, 9)]
    assert transfer.stage({"n": root}, {0: "n"}, 1).name == ck.name_of(1, 3)
    restart(monkeypatch)
    assert runtime.restore() == {"from": "attempt 1"}


def test_a_new_attempt_counts_on_from_the_checkpoint_it_restored(root, monkeypatch, no_torch):
    runtime.checkpoint({"step": 1})
    runtime.checkpoint({"step": 2})
    restart(monkeypatch)
    monkeypatch.setenv("AIGRID_ATTEMPT", "1")
    assert runtime.restore() == {"step": 2}
    assert runtime._state.seq == 2
    assert runtime.checkpoint({"step": 3}) == ck.name_of(1, 3)
    assert files_in(root) == [ck.name_of(0, 1), ck.name_of(0, 2), ck.name_of(1, 3)]


def test_checkpoint_after_restoring_an_older_one_prunes_the_abandoned_line(
    root, monkeypatch, no_torch
):
    monkeypatch.setenv("AIGRID_ATTEMPT", "1")
    for step in (1, 2, 3):
        runtime.checkpoint({"step": step, "line": "old"})
    restart(monkeypatch)
    monkeypatch.setenv("AIGRID_JOB_ID", "job-1")
    monkeypatch.setenv("AIGRID_RESTORE", str(root / ck.name_of(1, 1)))
    assert runtime.restore() == {"step": 1, "line": "old"}
    assert runtime.checkpoint({"step": 2, "line": "new"}) == ck.name_of(1, 2)
    assert files_in(root) == [".control", ck.name_of(1, 1), ck.name_of(1, 2)]

    monkeypatch.delenv("AIGRID_JOB_ID")
    monkeypatch.delenv("AIGRID_RESTORE")
    restart(monkeypatch)
    assert runtime.restore() == {"step": 2, "line": "new"}


def test_restore_reads_this_ranks_piece(root, monkeypatch, no_torch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for r in (0, 1):
        restart(monkeypatch)
        monkeypatch.setenv("RANK", str(r))
        runtime.checkpoint({"rank": r})
    for r in (1, 0):
        restart(monkeypatch)
        monkeypatch.setenv("RANK", str(r))
        assert runtime.restore() == {"rank": r}


KILLED_WRITE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from jupyter_aigrid import runtime

    assert "torch" not in sys.modules, "the runtime would use torch.save"
    marker = Path(sys.argv[1])

    class Slow:
        def __reduce__(self):
            marker.write_text("pickling")
            time.sleep(30)
            return (int, ())

    print(runtime.checkpoint({"step": 1, "weights": list(range(100))}), flush=True)
    runtime.checkpoint({"step": 2, "big": b"x" * 200_000, "slow": Slow()})
    """
)


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch, capsys):
    root = tmp_path / "ckpt"
    marker = tmp_path / "marker"
    env = {k: v for k, v in os.environ.items() if k not in ENV}
    env["AIGRID_CHECKPOINT_DIR"] = str(root)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITE, str(marker)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the writer exited early: {proc.communicate()}")
            assert time.monotonic() < deadline, "the writer never began its second checkpoint"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    first, second = ck.name_of(0, 1), ck.name_of(0, 2)
    assert out.decode().split() == [first]

    manifest = ck.read_verified(root / first, 0, root)
    assert manifest["serializer"] == "pickle"
    assert ck.piece_names(root) == [first, second]
    partial = files_in(root / second)
    assert len(partial) == 1
    assert partial[0].startswith(".rank-0.pt.")  # the temp file, never renamed
    assert partial[0].endswith(".tmp")
    assert transfer.complete({"n": root}, 1) == [first]
    monkeypatch.setenv("AIGRID_CHECKPOINT_DIR", str(root))
    assert runtime.checkpoints() == [first]  # the partial one is never listed
    staged = transfer.stage({"n": root}, {0: "n"}, 1)
    assert staged.name == first
    assert {name for name, _ in staged.problems} <= {second}

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert runtime.restore() == {"step": 1, "weights": list(range(100))}
    assert f"checkpoint {second} skipped" in capsys.readouterr().err
    assert runtime.checkpoint({"step": 2}) == second
    assert transfer.complete({"n": root}, 1) == [second, first]


# -- torch: capture() and resume() ---------------------------------------------------------------


def test_capture_and_resume_continue_a_torch_run_identically(root, monkeypatch):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    random.seed(1)
    np.random.seed(2)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def train(model, opt, steps: int) -> list[float]:
        losses = []
        for _ in range(steps):
            x = torch.randn(8, 4)
            target = random.random() + float(np.random.rand())
            loss = ((model(x) - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    train(model, opt, 3)
    name = runtime.checkpoint(runtime.capture(model=model, optimizer=opt, step=3, lr="0.1"))
    manifest = ck.read_verified(root / name, 0, root)
    assert manifest["serializer"] == "torch"
    assert manifest["step"] == 3
    saved_opt = copy.deepcopy(opt.state_dict())
    expected_losses = train(model, opt, 2)
    expected_params = {k: v.clone() for k, v in model.state_dict().items()}
    expected_draws = (torch.rand(3), random.random(), float(np.random.rand()))

    # A new process: other weights, other RNG states.
    restart(monkeypatch)
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    model2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    state = runtime.restore()
    assert runtime.resume(state, model=model2, optimizer=opt2) == {"step": 3, "lr": "0.1"}
    restored_opt = opt2.state_dict()
    assert restored_opt["param_groups"] == saved_opt["param_groups"]
    assert restored_opt["state"].keys() == saved_opt["state"].keys()
    for key, value in saved_opt["state"].items():
        assert torch.equal(restored_opt["state"][key]["momentum_buffer"], value["momentum_buffer"])
    assert train(model2, opt2, 2) == expected_losses
    for key, value in model2.state_dict().items():
        assert torch.equal(value, expected_params[key]), key
    draws = (torch.rand(3), random.random(), float(np.random.rand()))
    assert torch.equal(draws[0], expected_draws[0])
    assert draws[1:] == expected_draws[1:]


def test_rng_state_round_trip():
    random.seed(5)
    np.random.seed(5)
    saved = runtime.rng_state()
    assert {"python", "numpy"} <= saved.keys()
    if "torch" in sys.modules:
        import torch

        assert "torch" in saved
        expected_torch = torch.rand(4)
    expected = (random.random(), np.random.rand(3).tolist())
    random.seed(6)
    np.random.seed(6)
    runtime.set_rng_state(saved)
    if "torch" in saved:
        assert torch.equal(torch.rand(4), expected_torch)
    assert (random.random(), np.random.rand(3).tolist()) == expected


def test_capture_without_torch_objects(root, monkeypatch, no_torch):
    random.seed(3)
    sampler = ResumableSampler(10, seed=1, num_replicas=1, rank_=0)
    it = iter(sampler)
    taken = [next(it) for _ in range(4)]
    state = runtime.capture(step=4, sampler=sampler, note="x")
    assert state["model"] is None
    assert state["optimizer"] is None
    assert state["sampler"] == {"epoch": 0, "position": 4}
    assert state["extra"] == {"note": "x"}
    runtime.checkpoint(state)
    expected = random.random()

    restart(monkeypatch)
    random.seed(4)
    resumed = ResumableSampler(10, seed=1, num_replicas=1, rank_=0)
    assert runtime.resume(runtime.restore(), sampler=resumed) == {"step": 4, "note": "x"}
    assert random.random() == expected
    assert taken + list(resumed) == list(ResumableSampler(10, seed=1, num_replicas=1, rank_=0))


# -- should_checkpoint() -------------------------------------------------------------------------


def test_should_checkpoint_answers_the_masters_request(root, no_torch):
    assert runtime.should_checkpoint() is False
    assert runtime.should_checkpoint() is False
    transfer.ask([root], "r1", "why")
    assert runtime.should_checkpoint() is True
    assert runtime.should_checkpoint() is True  # until it is answered
    name = runtime.checkpoint({"step": 7})
    ack = json.loads(ck.ack_file(root, 0, 0).read_text())
    assert ack["request"] == "r1"
    assert ack["checkpoint"] == name
    assert ack["step"] == 7
    assert ack["bytes"] == (root / name / "rank-0.pt").stat().st_size
    assert ack["seconds"] >= 0
    assert runtime.should_checkpoint() is False

    runtime.checkpoint({"step": 8})  # r1 is answered once
    assert json.loads(ck.ack_file(root, 0, 0).read_text())["checkpoint"] == name

    transfer.ask([root], "r2", "again")
    path = ck.request_file(root)
    stamp = path.stat().st_mtime_ns + 10**9  # coarse timestamps could equal r1's
    os.utime(path, ns=(stamp, stamp))
    assert runtime.should_checkpoint() is True
    name = runtime.checkpoint({"step": 9})
    assert json.loads(ck.ack_file(root, 0, 0).read_text())["request"] == "r2"
    assert runtime.should_checkpoint() is False


def test_a_periodic_checkpoint_answers_a_pending_request(root, monkeypatch, no_torch):
    monkeypatch.setenv("AIGRID_ATTEMPT", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    transfer.ask([root], "2.1", "migrate")
    name = runtime.checkpoint({"step": 1})  # should_checkpoint() never asked
    ack = json.loads(ck.ack_file(root, 2, 1).read_text())
    assert (ack["request"], ack["checkpoint"]) == ("2.1", name)
    assert runtime.should_checkpoint() is False


def test_should_checkpoint_every_interval(root, monkeypatch, no_torch):
    monkeypatch.setenv("AIGRID_CHECKPOINT_INTERVAL_S", "0.05")
    assert runtime.should_checkpoint() is False
    time.sleep(0.06)
    assert runtime.should_checkpoint() is True
    runtime.checkpoint({"step": 1})
    assert runtime.should_checkpoint() is False
    time.sleep(0.06)
    assert runtime.should_checkpoint() is True
    monkeypatch.setenv("AIGRID_CHECKPOINT_INTERVAL_S", "")
    assert runtime.should_checkpoint() is False


def wait_for_signal(timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not runtime._state.signalled and time.monotonic() < deadline:
        time.sleep(0.001)


def test_should_checkpoint_on_sigusr1(root, no_torch):
    assert runtime.should_checkpoint() is False  # installs the handler
    os.kill(os.getpid(), signal.SIGUSR1)
    wait_for_signal()
    assert runtime._state.signalled
    assert runtime.should_checkpoint() is True
    runtime.checkpoint({"step": 1})
    assert runtime.should_checkpoint() is False


def test_should_checkpoint_on_sigusr1_once_a_request_file_exists(root, no_torch):
    transfer.ask([root], "r1", "why")
    assert runtime.should_checkpoint() is True
    runtime.checkpoint({"step": 1})
    assert runtime.should_checkpoint() is False
    os.kill(os.getpid(), signal.SIGUSR1)
    wait_for_signal()
    assert runtime.should_checkpoint() is True
    assert runtime.should_checkpoint() is True
    runtime.checkpoint({"step": 2})
    assert runtime.should_checkpoint() is False


def test_sigusr1_still_reaches_the_previous_handler(root, no_torch):
    seen = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    assert runtime.should_checkpoint() is False
    os.kill(os.getpid(), signal.SIGUSR1)
    wait_for_signal()
    assert runtime._state.signalled
    assert seen == [signal.SIGUSR1]


def test_listen_file_under_the_master(root, monkeypatch):
    assert runtime.should_checkpoint() is False
    assert not ck.control_dir(root).exists()  # no master, nobody to tell

    monkeypatch.setattr(runtime, "_state", fresh_state())
    monkeypatch.setenv("AIGRID_JOB_ID", "job-3")
    monkeypatch.setenv("AIGRID_ATTEMPT", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # no process group: no all-reduce
    assert runtime.should_checkpoint() is False
    assert ck.read_json(ck.listen_file(root, 2, 1), root) == {"pid": os.getpid()}
    assert ck.listen_file(root, 2, 1).name == "listen-2-1"


def test_control_files(tmp_path: Path):
    assert ck.request_file(tmp_path) == tmp_path / ".control" / "request.json"
    assert ck.ack_file(tmp_path, 1, 2).name == "ack-1-2.json"
    assert ck.restored_file(tmp_path, 1, 2).name == "restored-1-2.json"
    transfer.ask([tmp_path / "a", tmp_path / "b"], "r9", "preempt")
    for node in ("a", "b"):
        request = ck.read_json(ck.request_file(tmp_path / node), tmp_path / node)
        assert request["id"] == "r9"
        assert request["reason"] == "preempt"
    assert ck.read_json(tmp_path / "missing.json", tmp_path) is None
    (tmp_path / "list.json").write_text("[1]")
    assert ck.read_json(tmp_path / "list.json", tmp_path) is None
    (tmp_path / "half.json").write_text('{"id": ')
    assert ck.read_json(tmp_path / "half.json", tmp_path) is None
    (tmp_path / "link.json").symlink_to(ck.request_file(tmp_path / "a"))
    assert ck.read_json(tmp_path / "link.json", tmp_path) is None
    (tmp_path / "dir.json").mkdir()
    assert ck.read_json(tmp_path / "dir.json", tmp_path) is None


# -- ResumableSampler ----------------------------------------------------------------------------


def test_sampler_resumes_mid_epoch():
    def sampler() -> ResumableSampler:
        return ResumableSampler(10, seed=3, num_replicas=1, rank_=0)

    reference = sampler()
    epochs = [list(reference) for _ in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1]  # shuffled again each epoch
    assert reference.state_dict() == {"epoch": 3, "position": 0}

    first = sampler()
    it = iter(first)
    taken = [next(it) for _ in range(4)]
    assert first.state_dict() == {"epoch": 0, "position": 4}
    second = sampler()
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert taken + list(second) == epochs[0]
    assert list(second) == epochs[1]
    assert list(second) == epochs[2]


def test_sampler_resumes_at_the_end_of_an_epoch():
    first = ResumableSampler(5, seed=0, num_replicas=1, rank_=0)
    it = iter(first)
    epoch0 = [next(it) for _ in range(5)]  # the last index taken, the epoch not yet over
    second = ResumableSampler(5, seed=0, num_replicas=1, rank_=0)
    second.load_state_dict(first.state_dict())
    assert list(second) == []
    reference = ResumableSampler(5, seed=0, num_replicas=1, rank_=0)
    assert list(reference) == epoch0
    assert list(second) == list(reference)


@pytest.mark.parametrize("length", [10, 11, 7])
def test_sampler_shares_of_two_ranks(length: int):
    shares = [list(ResumableSampler(length, seed=4, num_replicas=2, rank_=r)) for r in (0, 1)]
    size = -(-length // 2)
    assert [len(s) for s in shares] == [size, size]
    assert len(ResumableSampler(length, num_replicas=2, rank_=0)) == size
    assert set(shares[0]) | set(shares[1]) == set(range(length))
    if length % 2 == 0:
        assert not set(shares[0]) & set(shares[1])
    else:  # one index repeated to even the shares, as DistributedSampler does
        assert len(set(shares[0]) & set(shares[1])) == 1


def test_sampler_without_shuffle_and_from_the_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    sampler = ResumableSampler(9, shuffle=False)
    assert (sampler.rank, sampler.num_replicas) == (1, 3)
    assert list(sampler) == [1, 4, 7]
    assert list(sampler) == [1, 4, 7]
    assert list(ResumableSampler(9, seed=1)) != list(ResumableSampler(9, seed=2))
    for seed in (1, 2):
        shares = [list(ResumableSampler(9, seed=seed, rank_=r)) for r in range(3)]
        assert sorted(i for share in shares for i in share) == list(range(9))


def test_sampler_shares_with_more_ranks_than_indices():
    for length, ranks in [(2, 5), (1, 4)]:
        for r in range(ranks):
            sampler = ResumableSampler(length, seed=0, num_replicas=ranks, rank_=r)
            assert len(list(sampler)) == len(sampler) == 1, (length, ranks, r)


# -- the job side ------------------------------------------------------------------------------


def test_the_job_side_loads_nothing_of_the_master():
    """A job imports the runtime (and is run by the runner): neither may pull in the
    master's code, nor the Jupyter server's."""
    code = (
        "import json, sys\n"
        "import jupyter_aigrid.runtime, jupyter_aigrid.runner\n"
        "prefixes = ('jupyter_aigrid.server', 'jupyter_server', 'tornado')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(prefixes))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == [], out.stdout
