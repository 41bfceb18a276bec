"""The content identity of datasets (``contents``): names, relative paths, containment,
manifests and their JSON, hashing, verification, verified copies and removal."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import threading
from pathlib import Path

import blake3
import pytest

from jupyter_aigrid import contents as c
from jupyter_aigrid import safefs
from jupyter_aigrid.contents import ContentError, FileEntry, Manifest
from jupyter_aigrid.testing import write_tree


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


make_tree = write_tree


TREE = {
    "train/a.bin": b"alpha" * 1000,
    "train/b.bin": b"beta",
    "labels.csv": b"x,y\n1,2\n",
    "empty": b"",
    "deep/er/still/z.txt": b"z",
}


def counter() -> tuple[list[int], object]:
    seen: list[int] = []
    return seen, seen.append


# -- names and paths -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "0", "mnist", "imagenet-1k_v2.tar", "a" * 64, "9.x-y_z"])
def test_check_name_accepts_valid_names(name):
    assert c.check_name(name) == name


@pytest.mark.parametrize(
    "name", ["a" * 65, "Mnist", ".", "..", "-a", "_a", ".a", "", "a b", "a/b", "../x", "abc\n"]
)
def test_check_name_refuses_others_naming_the_field_and_the_rule(name):
    with pytest.raises(ContentError) as e:
        c.check_name(name, field="dataset")
    assert e.value.field == "dataset"
    assert e.value.message.startswith("dataset must be 1 to 64 characters from a-z, 0-9")
    assert repr(name) in str(e.value)


@pytest.mark.parametrize("name", [None, 5, b"mnist", ["a"]])
def test_check_name_refuses_non_strings(name):
    with pytest.raises(ContentError, match="name must be a string; got"):
        c.check_name(name)


@pytest.mark.parametrize(
    "path", ["a", "a/b/c.txt", "a..b", ".hidden", "x/.y/..z", "é/ü", "a" * 255, "é" * 127]
)
def test_check_relpath_accepts_paths_that_stay_inside(path):
    assert c.check_relpath(path) == path


def test_check_relpath_length_limits_are_exact():
    ok = "/".join(["a" * 240] * 17)
    assert len(ok) == 4096 and c.check_relpath(ok) == ok
    with pytest.raises(ContentError, match="4097 characters long; at most 4096"):
        c.check_relpath(ok + "b")
    with pytest.raises(ContentError, match="component of 256 bytes"):
        c.check_relpath("a" * 256)
    with pytest.raises(ContentError, match="component of 256 bytes"):
        c.check_relpath("x/" + "é" * 128)  # 128 characters, 256 bytes of UTF-8


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../x", "'.' or '..' component"),
        ("a/../../b", "'.' or '..' component"),
        ("a/./b", "'.' or '..' component"),
        (".", "'.' or '..' component"),
        ("..", "'.' or '..' component"),
        ("/etc", "not absolute"),
        ("/etc/passwd", "not absolute"),
        ("a\x00b", "control characters"),
        ("a\nb", "control characters"),
        ("a\x7f", "control characters"),
        ("a//b", "empty component"),
        ("a/", "empty component"),
        ("a\\b", "no '\\'"),
        ("..\\x", "no '\\'"),
        ("", "must not be empty"),
        ("a/\udcff", "valid UTF-8"),
    ],
)
def test_check_relpath_refuses_paths_that_could_escape_or_confuse(path, why):
    with pytest.raises(ContentError, match=re.escape(why)) as e:
        c.check_relpath(path, field="files[2]")
    assert e.value.field == "files[2]"
    assert e.value.message.startswith("files[2] ")
    if path:
        assert repr(path) in e.value.message


def test_check_relpath_refuses_non_strings_and_shortens_long_values():
    with pytest.raises(ContentError, match="path must be a string; got bytes"):
        c.check_relpath(b"a")
    with pytest.raises(ContentError) as e:
        c.check_relpath("../" + "x" * 5000)
    assert len(e.value.message) < 300 and "..." in e.value.message


def test_contained_resolves_inside_and_refuses_links_out_by_whole_components(tmp_path):
    root = tmp_path / "test"
    make_tree(root, {"a/b.txt": b"1"})
    make_tree(tmp_path / "testtest", {"x": b"secret"})
    os.symlink(tmp_path / "testtest", root / "escape")
    os.symlink("a", root / "inner")  # a link that stays inside is resolved, and fine
    assert c.contained(root, "a/b.txt") == root.resolve() / "a" / "b.txt"
    assert c.contained(root, "inner/b.txt") == root.resolve() / "a" / "b.txt"
    assert c.contained(root, "not/yet/there") == root.resolve() / "not" / "yet" / "there"
    # A string prefix test would accept this one: '/.../testtest/x' starts with '/.../test'.
    escaped = os.path.realpath(root / "escape" / "x")
    assert escaped.startswith(os.path.realpath(root))
    with pytest.raises(ContentError, match="leads outside the dataset") as e:
        c.contained(root, "escape/x", field="file")
    assert e.value.field == "file"
    os.symlink("/", root / "slash")
    with pytest.raises(ContentError, match="leads outside"):
        c.contained(root, "slash/etc/passwd")
    with pytest.raises(ContentError, match=re.escape("'.' or '..' component")):
        c.contained(root, "../testtest/x")


# -- walking and manifests -----------------------------------------------------------------


def test_walk_lists_regular_files_sorted_and_ignores_empty_folders(tmp_path):
    make_tree(tmp_path, TREE)
    (tmp_path / "nothing" / "here").mkdir(parents=True)
    assert c.walk(tmp_path) == sorted((rel, len(data)) for rel, data in TREE.items())


@pytest.mark.parametrize("target", ["file", "folder", "dangling"])
def test_walk_refuses_a_symlink_anywhere(tmp_path, target):
    root = make_tree(tmp_path / "root", {"sub/real.txt": b"ok"})
    make_tree(tmp_path / "outside", {"f": b"secret"})
    pointed = {"file": tmp_path / "outside" / "f", "folder": tmp_path / "outside"}
    os.symlink(pointed.get(target, tmp_path / "gone"), root / "sub" / "link")
    with pytest.raises(ContentError, match=r"^symlinks are not allowed in a dataset: sub/link$"):
        c.walk(root)


def test_walk_refuses_a_fifo_and_names_it(tmp_path):
    make_tree(tmp_path, {"a": b"1"})
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ContentError, match="pipe is a FIFO") as e:
        c.walk(tmp_path)
    assert e.value.field == "path"


@pytest.mark.parametrize("name", [b"new\nline", b"back\\slash", b"\xff\xfe"])
def test_walk_refuses_file_names_a_manifest_cannot_hold(tmp_path, name):
    (tmp_path / "ok").write_bytes(b"1")
    with open(os.path.join(os.fsencode(tmp_path), name), "wb") as f:
        f.write(b"2")
    with pytest.raises(ContentError):
        c.walk(tmp_path)


def test_manifest_is_deterministic_and_independent_of_creation_order(tmp_path):
    one = make_tree(tmp_path / "one", TREE)
    two = make_tree(tmp_path / "two", dict(reversed(TREE.items())))
    m1, m2 = c.build_manifest(one), c.build_manifest(two)
    assert m1 == m2 == c.build_manifest(one)
    assert [f.path for f in m1.files] == sorted(TREE)
    assert m1.count == len(TREE) and m1.bytes == sum(map(len, TREE.values()))
    assert m1.files[0] == FileEntry("deep/er/still/z.txt", 1, b3(b"z"))
    assert Manifest.of(reversed(m1.files)) == m1


def test_root_hash_has_the_documented_format():
    files = [FileEntry("b", 2, b3(b"bb")), FileEntry("a/x", 0, b3(b""))]
    lines = f"{b3(b'')} 0 a/x\n{b3(b'bb')} 2 b\n".encode()
    assert c.root_hash(files) == b3(lines)
    assert c.root_hash([]) == b3(b"")


@pytest.mark.parametrize("change", ["content", "path", "size"])
def test_the_root_changes_with_any_content_path_or_size(tmp_path, change):
    root = make_tree(tmp_path, TREE)
    before = c.build_manifest(root)
    target = root / "train" / "a.bin"
    if change == "content":  # same size, one byte different
        data = bytearray(target.read_bytes())
        data[2500] ^= 1
        target.write_bytes(bytes(data))
    elif change == "path":
        target.rename(root / "train" / "c.bin")
    else:
        target.write_bytes(target.read_bytes() + b"!")
    after = c.build_manifest(root)
    assert after.root != before.root


def test_the_root_tells_apart_entries_that_differ_only_in_size_or_path():
    h = b3(b"x")
    assert c.root_hash([FileEntry("a", 1, h)]) != c.root_hash([FileEntry("a", 2, h)])
    assert c.root_hash([FileEntry("a", 1, h)]) != c.root_hash([FileEntry("b", 1, h)])


def test_manifest_json_round_trip(tmp_path):
    m = c.build_manifest(make_tree(tmp_path, TREE))
    data = json.loads(json.dumps(m.to_json()))
    assert data["algorithm"] == "blake3" and data["root"] == m.root
    assert data["count"] == 5 and data["bytes"] == m.bytes
    assert data["files"][0] == ["deep/er/still/z.txt", 1, b3(b"z")]
    assert Manifest.from_json(data) == m
    assert Manifest.from_json(Manifest.of([]).to_json()).count == 0


def _tampered(data: dict, how: str) -> dict:
    data = json.loads(json.dumps(data))
    files = data["files"]
    if how == "root":
        data["root"] = b3(b"another tree")
    elif how == "hash":
        files[1][2] = files[1][2].upper()
    elif how == "short hash":
        files[1][2] = files[1][2][:-1]
    elif how == "escape":  # the attacker also recomputes the root: the path is still refused
        files[0][0] = "../etc/passwd"
        data["root"] = c.root_hash([FileEntry(*f) for f in files])
    elif how == "size":
        files[1][1] = -1
    elif how == "bool size":
        files[0][1] = True
    elif how == "algorithm":
        data["algorithm"] = "sha256"
    elif how == "count":
        data["count"] += 1
    elif how == "bytes":
        data["bytes"] -= 1
    elif how == "order":
        files.reverse()
    elif how == "duplicate":
        files.append(files[-1])
    elif how == "file and folder":
        files.insert(3, ["labels.csv/inner", 1, b3(b"z")])
    elif how == "shape":
        files[0] = files[0][:2]
    elif how == "not an object":
        return files
    return data


@pytest.mark.parametrize(
    ("how", "field", "why"),
    [
        ("root", "manifest.root", "does not match its files"),
        ("hash", "manifest.files[1]", "hash must be 64 lowercase hex digits"),
        ("short hash", "manifest.files[1]", "hash must be 64 lowercase hex digits"),
        ("escape", "manifest.files[0]", "'.' or '..' component"),
        ("size", "manifest.files[1]", "size must be an integer >= 0; got -1"),
        ("bool size", "manifest.files[0]", "size must be an integer >= 0; got True"),
        ("algorithm", "manifest.algorithm", "must be 'blake3'; got 'sha256'"),
        ("count", "manifest.count", "must be 5 (from its files); got 6"),
        ("bytes", "manifest.bytes", "(from its files)"),
        ("order", "manifest.files", "must be sorted by path, each path once"),
        ("duplicate", "manifest.files", "must be sorted by path, each path once"),
        ("file and folder", "manifest.files", "'labels.csv' as a file and as the folder of"),
        ("shape", "manifest.files[0]", "must be [path, size, hash]"),
        ("not an object", "manifest", "must be an object"),
    ],
)
def test_from_json_refuses_tampering(tmp_path, how, field, why):
    data = c.build_manifest(make_tree(tmp_path, TREE)).to_json()
    assert Manifest.from_json(data)  # the untouched one is fine
    with pytest.raises(ContentError, match=re.escape(why)) as e:
        Manifest.from_json(_tampered(data, how))
    assert e.value.field == field, e.value.message


def test_a_manifest_cannot_be_built_with_a_wrong_root():
    entry = FileEntry("a", 1, b3(b"x"))
    with pytest.raises(ContentError, match="root does not match"):
        Manifest((entry,), b3(b"y"))
    with pytest.raises(ContentError, match="sorted"):
        Manifest((entry, entry), c.root_hash([entry, entry]))


# -- hashing -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4096, 3 * 2**20 + 7, 17 * 2**20 + 123])
def test_hash_file_is_blake3_of_the_bytes_and_progress_sums_to_the_size(tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    seen, progress = counter()
    assert c.hash_file(tmp_path / "f", progress) == b3(data)
    assert sum(seen) == size
    assert size < safefs.PIPELINE_FROM or len(seen) > 1  # the large one went in chunks


def test_hash_file_pipeline_with_many_small_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(safefs, "CHUNK", 1000)
    monkeypatch.setattr(safefs, "PIPELINE_FROM", 4000)
    data = os.urandom(123_457)
    (tmp_path / "f").write_bytes(data)
    seen, progress = counter()
    assert c.hash_file(tmp_path / "f", progress) == b3(data)
    assert sum(seen) == len(data) and len(seen) == 124


def test_hash_file_refuses_links_and_fifos_without_blocking(tmp_path):
    (tmp_path / "f").write_bytes(b"data")
    os.symlink(tmp_path / "f", tmp_path / "link")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ContentError, match="symlinks are not allowed"):
        c.hash_file(tmp_path / "link")
    done = threading.Event()

    def hash_fifo():
        with pytest.raises(ContentError, match="is a FIFO"):
            c.hash_file(tmp_path / "pipe")
        done.set()

    worker = threading.Thread(target=hash_fifo, daemon=True)
    worker.start()
    assert done.wait(5), "hash_file blocked on a FIFO"
    with pytest.raises(FileNotFoundError):
        c.hash_file(tmp_path / "missing")


# -- verification --------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, Manifest]:
    root = make_tree(tmp_path / "ds", TREE)
    return root, c.build_manifest(root)


def test_verify_tree_accepts_the_tree_it_describes(dataset):
    root, m = dataset
    seen, progress = counter()
    assert c.verify_tree(root, m, progress) == []
    assert sum(seen) == m.bytes


def test_verify_tree_detects_a_flipped_byte(dataset):
    root, m = dataset
    path = root / "train" / "a.bin"
    data = bytearray(path.read_bytes())
    data[4999] ^= 0x80
    path.write_bytes(bytes(data))
    (problem,) = c.verify_tree(root, m)
    assert problem.startswith("train/a.bin: content differs")


def test_verify_tree_detects_truncated_missing_extra_and_linked_files(dataset, tmp_path):
    root, m = dataset
    with open(root / "train" / "a.bin", "r+b") as f:
        f.truncate(10)
    (root / "labels.csv").unlink()
    (root / "train" / "new.bin").write_bytes(b"new")
    (root / "empty").unlink()
    os.symlink(root / "train" / "b.bin", root / "empty")
    assert c.verify_tree(root, m) == [
        "symlinks are not allowed in a dataset: empty",
        "labels.csv: missing",
        "train/a.bin: size differs: expected 5000, got 10",
        "train/new.bin: unexpected file, not in the manifest",
    ]
    assert c.verify_tree(tmp_path / "gone", m) == [
        f"the dataset folder {tmp_path / 'gone'} is missing"
    ]


# -- copies and removal --------------------------------------------------------------------


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_copy_tree_makes_a_verified_read_only_copy(dataset, tmp_path):
    src, m = dataset
    dst = tmp_path / "store" / "mnist"
    dst.parent.mkdir()
    seen, progress = counter()
    c.copy_tree(src, dst, m, progress)
    assert c.verify_tree(dst, m) == []
    assert c.build_manifest(dst) == m
    assert sum(seen) == m.bytes
    modes = {stat.S_IMODE(os.stat(dst / f.path).st_mode) for f in m.files}
    assert modes == {0o444}
    assert leftovers(dst.parent) == []


def test_copy_tree_falls_back_to_reads_and_writes(dataset, tmp_path, monkeypatch):
    src, m = dataset

    def refuse(*args):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    seen, progress = counter()
    c.copy_tree(src, tmp_path / "copy", m, progress)
    assert c.verify_tree(tmp_path / "copy", m) == [] and sum(seen) == m.bytes


def test_copy_tree_refuses_an_existing_destination(dataset, tmp_path):
    src, m = dataset
    dst = tmp_path / "taken"
    dst.mkdir()
    with pytest.raises(FileExistsError):
        c.copy_tree(src, dst, m)
    assert list(dst.iterdir()) == [] and leftovers(tmp_path) == []


@pytest.mark.parametrize("damage", ["flip", "grow", "missing", "link", "linked folder"])
def test_copy_tree_detects_a_damaged_source_and_leaves_nothing(dataset, tmp_path, damage):
    src, m = dataset
    path = src / "train" / "a.bin"
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[0] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "grow":
        path.write_bytes(path.read_bytes() + b"more")
    elif damage == "missing":
        path.unlink()
    elif damage == "link":
        path.unlink()
        os.symlink(src / "train" / "b.bin", path)
    else:  # the same bytes, but through a link: refused all the same
        (src / "train").rename(tmp_path / "elsewhere")
        os.symlink(tmp_path / "elsewhere", src / "train")
    dst = tmp_path / "copy"
    with pytest.raises(ContentError, match=re.escape("train/a.bin")) as e:
        c.copy_tree(src, dst, m)
    assert "does not match the manifest" in e.value.message
    assert not os.path.lexists(dst)
    assert leftovers(tmp_path) == []


def test_remove_tree_removes_read_only_trees_and_never_follows_links(dataset, tmp_path):
    src, m = dataset
    keep = make_tree(tmp_path / "keep", {"precious": b"1"})
    dst = tmp_path / "copy"
    c.copy_tree(src, dst, m)
    os.chmod(dst / "train", 0o555)
    os.chmod(dst, 0o755)
    os.symlink(keep, dst / "deep" / "link")  # planted after the copy
    os.chmod(dst / "deep", 0o500)
    c.remove_tree(dst)
    assert not os.path.lexists(dst)
    assert (keep / "precious").read_bytes() == b"1"
    os.symlink(keep, tmp_path / "alias")
    c.remove_tree(tmp_path / "alias")
    assert not os.path.lexists(tmp_path / "alias") and (keep / "precious").exists()
    c.remove_tree(tmp_path / "never-there")


def test_remove_tree_makes_read_only_folders_writable_when_it_must(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "ds", {"a/b/c": b"1"})
    os.chmod(root / "a" / "b", 0o500)
    os.chmod(root / "a", 0o500)
    real_rmtree, calls = c.shutil.rmtree, []

    def rmtree(path):  # as root nothing is refused: act as a user would see it
        calls.append(stat.S_IMODE(os.stat(root / "a" / "b").st_mode))
        if len(calls) == 1:
            raise PermissionError(errno.EACCES, "denied", str(path))
        real_rmtree(path)

    monkeypatch.setattr(c.shutil, "rmtree", rmtree)
    c.remove_tree(root)
    assert calls == [0o500, 0o700] and not root.exists()
