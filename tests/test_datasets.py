"""Datasets over REST, end to end: chunked uploads, versions, verified copies, staging to the
node a job runs on, corruption, containment of every path, and deletion."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from jupyter_aigrid import contents
from jupyter_aigrid.testing import write_tree

FILES = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)) * 40, "sub/deeper/c.txt": b"c" * 7}
READER = """
import os, pathlib
root = pathlib.Path(os.environ["AIGRID_DATA"]) / "toy"
for p in sorted(root.rglob("*")):
    if p.is_file():
        print(p.relative_to(root), len(p.read_bytes()), p.read_bytes()[:6])
if os.environ.get("TRY_WRITE"):
    try:
        (root / "new.txt").write_text("x")
        print("WROTE")
    except OSError:
        print("READ-ONLY")
"""


def make_tree(root: Path, files: dict[str, bytes] = FILES) -> Path:
    return write_tree(root, files)


async def upload(api, name: str, root: Path, node: str = "node-0", chunk: int = 1000) -> dict:
    """The protocol as a client speaks it: declare, send each file in chunks, commit."""
    files = [
        {"path": rel, "size": size, "hash": contents.hash_file(root / rel)}
        for rel, size in contents.walk(root)
    ]
    up = await api.call("POST", "uploads", body={"name": name, "files": files, "node": node})
    for f in files:
        data = (root / f["path"]).read_bytes()
        for offset in range(0, len(data), chunk):
            await api.call(
                "PUT",
                "uploads",
                up["id"],
                "data",
                body=data[offset : offset + chunk],
                params={"path": f["path"], "offset": str(offset)},
            )
    return await api.call("POST", "uploads", up["id"], "commit", body="")


async def blocker(api, gpus: int = 2) -> dict:
    """A job that holds GPUs (so the next job goes to the other node) until cancelled."""
    job = await api.submit({"name": "blocker", "command": ["sleep", "600"], "gpus": gpus})
    return await api.wait(job["id"], ("running",))


def reader(**spec) -> dict:
    return {"name": "reader", "code": READER, "gpus": 2, "datasets": ["toy"], **spec}


async def stdout(api, job_id: str) -> str:
    return "".join(r["line"] for r in await api.logs(job_id) if r["stream"] == "stdout")


def node_root(state: Path, node: str) -> Path:
    return state / "nodes" / node / "datasets"


async def test_upload_then_a_job_on_another_node_reads_it_after_staging(
    api, aigrid_state, tmp_path
):
    tree = make_tree(tmp_path / "toy")
    dataset = await upload(api, "toy", tree)
    local = contents.build_manifest(tree)
    assert dataset["latest"] == 1 and dataset["root"] == local.root
    assert dataset["bytes"] == sum(len(v) for v in FILES.values()) and dataset["files"] == 3
    [loc] = dataset["versions"][0]["locations"]
    assert loc["node"] == "node-0" and loc["state"] == "verified" and loc["verified_at"]
    # The same bytes again make no new version.
    again = await upload(api, "toy", tree)
    assert again["latest"] == 1 and len(again["versions"]) == 1

    hold = await blocker(api)
    assert hold["placement"][0]["node"] == "node-0"
    job = await api.submit(reader(env={"TRY_WRITE": "1"}))
    assert job["datasets"] == ["toy@1"]  # pinned at submit
    done = await api.wait(job["id"])
    assert done["state"] == "succeeded", done["reason"]
    assert done["placement"][0]["node"] == "node-1"
    assert (
        done["staging"]["state"] == "done" and done["staging"]["done"] == done["staging"]["bytes"]
    )
    out = await stdout(api, job["id"])
    assert "a.txt 6 b'alpha\\n'" in out and "sub/deeper/c.txt 7" in out
    dataset = await api.call("GET", "datasets", "toy")
    nodes = {x["node"]: x for x in dataset["versions"][0]["locations"]}
    assert nodes["node-1"]["state"] == "verified" and nodes["node-1"]["managed"]
    copy = node_root(aigrid_state, "node-1") / nodes["node-1"]["path"]
    assert stat.S_IMODE((copy / "sub").stat().st_mode) == 0o555
    assert stat.S_IMODE((copy / "a.txt").stat().st_mode) == 0o444
    events = await api.call("GET", "events", params={"since": "0"}, raw=True)
    assert b'"staged"' in events.body and b"job_staging" in events.body
    if os.geteuid() != 0:
        assert "READ-ONLY" in out and "WROTE" not in out
        assert contents.verify_tree(copy, local) == []
    else:
        # Permissions do not hold root back; the next verification catches what it wrote.
        assert "WROTE" in out
        verified = await api.call("POST", "datasets", "toy", "verify", body="")
        nodes = {x["node"]: x for x in verified["versions"][0]["locations"]}
        assert nodes["node-1"]["state"] == "corrupt" and "new.txt" in nodes["node-1"]["error"], (
            verified
        )
        assert nodes["node-0"]["state"] == "verified"
    await api.call("DELETE", "jobs", hold["id"])


async def test_a_corrupt_copy_is_found_and_the_job_uses_the_good_one(api, aigrid_state, tmp_path):
    tree = make_tree(tmp_path / "toy")
    await upload(api, "toy", tree, node="node-0")
    # A second copy on node-1, staged by a job that runs there.
    hold = await blocker(api)
    first = await api.wait((await api.submit(reader()))["id"])
    assert first["state"] == "succeeded", first["reason"]
    await api.call("DELETE", "jobs", hold["id"])
    await api.wait(hold["id"])

    dataset = await api.call("GET", "datasets", "toy")
    node0 = next(x for x in dataset["versions"][0]["locations"] if x["node"] == "node-0")
    victim = node_root(aigrid_state, "node-0") / node0["path"] / "sub" / "b.bin"
    os.chmod(victim, stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))

    verified = await api.call("POST", "datasets", "toy", "verify", body="")
    states = {x["node"]: x for x in verified["versions"][0]["locations"]}
    assert states["node-0"]["state"] == "corrupt" and "sub/b.bin" in states["node-0"]["error"]
    assert states["node-1"]["state"] == "verified"
    events = await api.call("GET", "events", params={"since": "0"}, raw=True)
    assert b'"corrupt"' in events.body

    # A job placed on node-0 gets a good copy from node-1 first.
    first_hold, hold = await blocker(api), await blocker(api)
    assert hold["placement"][0]["node"] == "node-1"
    await api.call("DELETE", "jobs", first_hold["id"])
    await api.wait(first_hold["id"])
    job = await api.wait((await api.submit(reader()))["id"])
    assert job["state"] == "succeeded", job["reason"]
    assert job["placement"][0]["node"] == "node-0"
    assert "sub/b.bin 10240 b'\\x00\\x01\\x02\\x03\\x04\\x05'" in await stdout(api, job["id"])
    dataset = await api.call("GET", "datasets", "toy")
    states = {x["node"]: x["state"] for x in dataset["versions"][0]["locations"]}
    assert states == {"node-0": "verified", "node-1": "verified"}
    copy = node_root(aigrid_state, "node-0") / node0["path"]
    assert contents.verify_tree(copy, contents.build_manifest(tree)) == []
    await api.call("DELETE", "jobs", hold["id"])


@pytest.mark.parametrize("bad", ["../x", "/etc", "a/../../b", "a\x00b", "UPPER", "", "x" * 65])
async def test_bad_dataset_names_get_400(api, aigrid_state, bad):
    code, body = await api.error("POST", "uploads", body={"name": bad, "files": FILE_LIST})
    assert code == 400 and body["field"] == "name", body
    assert not list(aigrid_state.glob("uploads/*/"))


FILE_LIST = [{"path": "a.txt", "size": 1}]


@pytest.mark.parametrize("node", [{}, [], 3, True])
async def test_a_node_that_is_not_a_name_gets_400(api, aigrid_state, node):
    """Not a 500 (an unhashable {} or [] once was): a 400 naming the field, and nothing made."""
    code, body = await api.error(
        "POST", "uploads", body={"name": "ok", "files": FILE_LIST, "node": node}
    )
    assert code == 400 and body["field"] == "node", body
    assert not list(aigrid_state.glob("uploads/*/"))
    code, body = await api.error(
        "POST", "datasets", body={"name": "ok", "node": node, "path": "somewhere"}
    )
    assert code == 400 and body["field"] == "node", body


@pytest.mark.parametrize(
    "bad", ["../x", "/etc/passwd", "a/../../b", "a\x00b", "../testtest/x", "a//b", "./a"]
)
async def test_bad_file_paths_get_400_and_nothing_is_written_outside(api, aigrid_state, bad):
    code, body = await api.error(
        "POST", "uploads", body={"name": "test", "files": [{"path": bad, "size": 1}]}
    )
    assert code == 400 and body["field"] == "files[0].path", body
    # A good upload cannot be steered outside either: the path of a PUT is checked again.
    up = await api.call("POST", "uploads", body={"name": "test", "files": FILE_LIST})
    code, body = await api.error(
        "PUT", "uploads", up["id"], "data", body=b"x", params={"path": bad, "offset": "0"}
    )
    assert code == 400 and body["field"] == "path", body
    written = [p for p in aigrid_state.rglob("*") if p.is_file()]
    assert not [p for p in written if p.name in ("x", "b", "passwd")], written


async def test_test_next_to_testtest_stays_contained(api, aigrid_state, tmp_path):
    root = node_root(aigrid_state, "node-0")
    make_tree(root / "test", {"mine.txt": b"mine"})
    make_tree(root / "testtest", {"other.txt": b"other"})
    registered = await api.call(
        "POST", "datasets", body={"name": "test", "node": "node-0", "path": "test"}
    )
    assert registered["files"] == 1
    for path in ("test/../testtest", "../testtest", "/etc", "testtest/../../x", "te\x00st"):
        code, body = await api.error(
            "POST", "datasets", body={"name": "test", "node": "node-0", "path": path}
        )
        assert code == 400 and body["field"] == "path", (path, body)
    # A link inside a registered tree that leads out of it is refused.
    os.symlink(root / "testtest" / "other.txt", root / "test" / "link")
    code, body = await api.error(
        "POST", "datasets", body={"name": "linked", "node": "node-0", "path": "test"}
    )
    assert code == 400 and "symlink" in body["message"]
    for name in ("..", "..%2Fx", "UPPER"):
        code, body = await api.error("GET", "datasets", name)
        assert code in (400, 404), (name, code)
    code, body = await api.error("POST", "jobs", body=reader(datasets=["../x"]))
    assert code == 400 and body["field"].startswith("datasets")


async def put(api, upload_id: str, path: str, offset: int, data: bytes) -> dict:
    params = {"path": path, "offset": str(offset)}
    return await api.call("PUT", "uploads", upload_id, "data", body=data, params=params)


async def test_an_interrupted_upload_resumes(api, tmp_path):
    data = os.urandom(5000)
    tree = make_tree(tmp_path / "resumable", {"big.bin": data})
    files = [{"path": "big.bin", "size": len(data), "hash": contents.hash_file(tree / "big.bin")}]
    up = await api.call("POST", "uploads", body={"name": "resumable", "files": files})
    await put(api, up["id"], "big.bin", 0, data[:2000])
    # The connection drops; the client asks where it was.
    [mine] = (await api.call("GET", "uploads"))["uploads"]
    assert mine["id"] == up["id"] and mine["files"][0]["received"] == 2000 and not mine["complete"]
    code, body = await api.error(
        "PUT",
        "uploads",
        up["id"],
        "data",
        body=data[:2000],
        params={"path": "big.bin", "offset": "0"},
    )
    assert code == 409 and body["field"] == "offset" and "2000" in body["message"]
    code, body = await api.error("POST", "uploads", up["id"], "commit", body="")
    assert code == 409 and "2000 of its 5000" in body["message"]
    await api.call(
        "PUT",
        "uploads",
        up["id"],
        "data",
        body=data[2000:],
        params={"path": "big.bin", "offset": "2000"},
    )
    dataset = await api.call("POST", "uploads", up["id"], "commit", body="")
    assert dataset["root"] == contents.build_manifest(tree).root
    assert (await api.call("GET", "uploads"))["uploads"] == []


async def test_a_declared_hash_that_does_not_match_is_refused(api, tmp_path):
    files = [{"path": "a.txt", "size": 3, "hash": "0" * 64}]
    up = await api.call("POST", "uploads", body={"name": "mismatch", "files": files})
    await api.call(
        "PUT", "uploads", up["id"], "data", body=b"abc", params={"path": "a.txt", "offset": "0"}
    )
    code, body = await api.error("POST", "uploads", up["id"], "commit", body="")
    assert code == 409 and "BLAKE3" in body["message"]
    code, _ = await api.error("GET", "datasets", "mismatch")
    assert code == 404
    code, body = await api.error(
        "PUT", "uploads", up["id"], "data", body=b"more", params={"path": "a.txt", "offset": "3"}
    )
    assert code == 400 and "declared as 3 bytes" in body["message"]


async def test_deleting_a_dataset_in_use_gets_409(api, aigrid_state, tmp_path):
    await upload(api, "toy", make_tree(tmp_path / "toy"))
    job = await api.submit({"name": "user", "command": ["sleep", "600"], "datasets": ["toy"]})
    await api.wait(job["id"], ("running",))
    code, body = await api.error("DELETE", "datasets", "toy")
    assert code == 409 and f"job(s) {job['id']}" in body["message"]
    await api.call("DELETE", "jobs", job["id"])
    await api.wait(job["id"])
    deleted = await api.call("DELETE", "datasets", "toy")
    assert deleted == {"deleted": "toy", "versions": [1]}
    assert not list((node_root(aigrid_state, "node-0") / ".aigrid").rglob("*.txt"))
    code, _ = await api.error("GET", "datasets", "toy")
    assert code == 404


@pytest.fixture
def aigrid_config(aigrid_config, request):
    extra = getattr(request, "param", None) or {}
    return {**aigrid_config, **extra}


@pytest.mark.parametrize("aigrid_config", [{"dataset_quota_bytes": 100}], indirect=True)
async def test_the_quota_is_enforced(api, tmp_path):
    code, body = await api.error(
        "POST", "uploads", body={"name": "huge", "files": [{"path": "a", "size": 101}]}
    )
    assert code == 413 and "quota" in body["message"]
    ok = await api.call(
        "POST", "uploads", body={"name": "small", "files": [{"path": "a", "size": 60}]}
    )
    # Open uploads count too.
    code, _ = await api.error(
        "POST", "uploads", body={"name": "more", "files": [{"path": "a", "size": 60}]}
    )
    assert code == 413
    # Committing it counts it once (not as an upload and a version both)...
    await put(api, ok["id"], "a", 0, b"x" * 60)
    assert (await api.call("POST", "uploads", ok["id"], "commit", body=""))["bytes"] == 60
    # ... and what is stored counts as well.
    code, _ = await api.error(
        "POST", "uploads", body={"name": "more", "files": [{"path": "a", "size": 41}]}
    )
    assert code == 413
    await api.call("DELETE", "datasets", "small")
    assert await api.call(
        "POST", "uploads", body={"name": "more", "files": [{"path": "a", "size": 41}]}
    )


async def test_a_job_naming_an_unknown_dataset_or_version_gets_400(api, tmp_path):
    await upload(api, "toy", make_tree(tmp_path / "toy"))
    for refs, words in (
        (["nope"], "no dataset 'nope'"),
        (["toy@7"], "no version '7'"),
        (["toy", "toy@1"], "listed twice"),
    ):
        code, body = await api.error("POST", "jobs", body=reader(datasets=refs))
        assert code == 400 and words in body["message"], body
    root = (await api.call("GET", "datasets", "toy"))["root"]
    job = await api.submit({"name": "pin", "command": ["true"], "datasets": [f"toy@{root[:10]}"]})
    assert job["datasets"] == ["toy@1"]
    await asyncio.wait_for(api.wait(job["id"]), 60)


@pytest.mark.parametrize("aigrid_config", [{"dataset_verify_interval_s": 0.5}], indirect=True)
async def test_copies_are_verified_periodically(api, aigrid_state, tmp_path):
    dataset = await upload(api, "toy", make_tree(tmp_path / "toy"))
    [loc] = dataset["versions"][0]["locations"]
    first = loc["verified_at"]
    victim = node_root(aigrid_state, "node-0") / loc["path"] / "a.txt"
    for _ in range(100):  # verified again and again, with nobody asking
        await asyncio.sleep(0.1)
        [loc] = (await api.call("GET", "datasets", "toy"))["versions"][0]["locations"]
        if loc["verified_at"] != first:
            break
    assert loc["verified_at"] > first and loc["state"] == "verified"
    os.chmod(victim, stat.S_IRUSR | stat.S_IWUSR)
    victim.write_bytes(b"ALPHA\n")
    for _ in range(100):
        await asyncio.sleep(0.1)
        [loc] = (await api.call("GET", "datasets", "toy"))["versions"][0]["locations"]
        if loc["state"] == "corrupt":
            break
    assert loc["state"] == "corrupt" and "a.txt" in loc["error"]
    # The only copy is bad: a job naming it is refused, saying why.
    code, body = await api.error("POST", "jobs", body=reader())
    assert code == 409 and "no usable copy" in body["message"]
