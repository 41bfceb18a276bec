"""A multi-user server (an identity provider with several users, as JupyterHub gives): each
user sees and manages their own jobs, admins everyone's and the image catalog."""

from __future__ import annotations

import json

import pytest
from jupyter_server.auth.identity import IdentityProvider, User

TOKENS = {"alice-token": "alice", "bob-token": "bob", "ops-token": "ops"}


class TokenUsers(IdentityProvider):
    """``Authorization: token <t>``: the user of that token, or no one."""

    def get_user(self, handler):
        header = handler.request.headers.get("Authorization", "")
        name = TOKENS.get(header.removeprefix("token ").strip())
        if name is None:
            return None
        handler._token_authenticated = True  # tokens need no XSRF check, as Jupyter's own
        return User(username=name)


@pytest.fixture
def jp_server_config(jp_server_config):
    jp_server_config["ServerApp"]["identity_provider_class"] = TokenUsers
    jp_server_config["AIGridApp"]["admin_users"] = {"ops"}
    return jp_server_config


def as_user(name: str) -> dict:
    token = next(t for t, user in TOKENS.items() if user == name)
    return {"Authorization": f"token {token}"}


async def test_users_see_and_manage_their_own_jobs_and_admins_everyone(api, aigrid_master):
    alice, bob, ops = as_user("alice"), as_user("bob"), as_user("ops")
    job = await api.call(
        "POST", "jobs", body={"code": "import time; time.sleep(60)", "name": "secret-name"},
        headers=alice,
    )  # fmt: skip
    assert job["owner"] == "alice"
    mine = await api.call("POST", "jobs", body={"code": "print(1)"}, headers=bob)
    # Bob: alice's job does not exist for him, in every form.
    for method, parts in [
        ("GET", ("jobs", job["id"])),
        ("DELETE", ("jobs", job["id"])),
        ("GET", ("jobs", job["id"], "result")),
        ("GET", ("jobs", job["id"], "logs")),
        ("GET", ("jobs", job["id"], "outputs", "x")),
    ]:
        status, body = await api.error(method, *parts, headers=bob)
        assert status == 404, (method, parts, body)
    listed = (await api.call("GET", "jobs", headers=bob))["jobs"]
    assert [j["id"] for j in listed] == [mine["id"]]
    # In the event stream, other users' jobs show their id and state only.
    resp = await api.call("GET", "events", params={"since": 0}, raw=True, headers=bob)
    others = [
        e for line in resp.body.decode().splitlines() if line
        for e in [json.loads(line)] if e.get("job_id") == job["id"]
    ]  # fmt: skip
    assert others, "bob sees that alice's job exists"
    assert "secret-name" not in resp.body.decode()
    # An admin sees and cancels anyone's job.
    assert (await api.call("GET", "jobs", job["id"], headers=ops))["owner"] == "alice"
    everyone = {j["owner"] for j in (await api.call("GET", "jobs", headers=ops))["jobs"]}
    assert everyone == {"alice", "bob"}
    await api.call("DELETE", "jobs", job["id"], headers=ops)
    done = await api.wait(job["id"], headers=alice)
    assert done["state"] == "cancelled" and done["reason"] == "cancelled by ops"


async def test_only_admins_edit_the_image_catalog(api, aigrid_master):
    entry = {
        "ref": "me/img:1", "framework": "pytorch", "framework_version": "2.99",
        "cuda": "12.8", "python": "3.11",
    }  # fmt: skip
    for method, parts in [("POST", ("images",)), ("PUT", ("images", "mine")),
                          ("DELETE", ("images", "python-3.11"))]:  # fmt: skip
        body = {**entry, "id": "mine"} if method == "POST" else entry
        status, error = await api.error(method, *parts, body=body, headers=as_user("bob"))
        assert status == 403 and "admin" in error["message"], error
    # Everyone reads it; an admin edits it.
    assert (await api.call("GET", "images", headers=as_user("bob")))["images"]
    await api.call("PUT", "images", "mine", body=entry, headers=as_user("ops"))
    assert (await api.call("GET", "images", "mine", headers=as_user("bob")))["ref"] == "me/img:1"


async def test_a_request_without_a_known_user_is_refused(api, aigrid_master):
    status, _ = await api.error("GET", "jobs", headers={"Authorization": "token nobody"})
    assert status == 403


async def test_datasets_are_read_by_all_changed_by_their_owner_and_uploads_are_private(api):
    alice, bob, ops = as_user("alice"), as_user("bob"), as_user("ops")
    files = [{"path": "a.txt", "size": 3}]
    chunk = {"path": "a.txt", "offset": "0"}
    up = await api.call("POST", "uploads", body={"name": "shared", "files": files}, headers=alice)
    # Bob cannot see, feed, commit or delete Alice's upload, and it is not among his.
    for method, parts, kw in [
        ("GET", ("uploads", up["id"]), {}),
        ("DELETE", ("uploads", up["id"]), {}),
        ("POST", ("uploads", up["id"], "commit"), {"body": ""}),
        ("PUT", ("uploads", up["id"], "data"), {"body": b"abc", "params": chunk}),
    ]:
        status, body = await api.error(method, *parts, headers=bob, **kw)
        assert status == 404, (method, parts, body)
    assert (await api.call("GET", "uploads", headers=bob))["uploads"] == []
    await api.call(
        "PUT", "uploads", up["id"], "data", body=b"abc",
        params={"path": "a.txt", "offset": "0"}, headers=alice,
    )  # fmt: skip
    dataset = await api.call("POST", "uploads", up["id"], "commit", body="", headers=alice)
    assert dataset["owner"] == "alice"
    # Everyone reads it and may use it; only Alice and admins add versions, verify or delete.
    assert (await api.call("GET", "datasets", "shared", headers=bob))["latest"] == 1
    status, body = await api.error(
        "POST", "uploads", body={"name": "shared", "files": files}, headers=bob
    )
    assert status == 403 and "belongs to alice" in body["message"]
    for method, parts in [
        ("DELETE", ("datasets", "shared")),
        ("POST", ("datasets", "shared", "verify")),
    ]:
        status, body = await api.error(
            method, *parts, headers=bob, body="" if method == "POST" else None
        )
        assert status == 403, (method, body)
    # Registering data already on a node is for admins.
    status, body = await api.error(
        "POST", "datasets", body={"name": "x", "node": "node-0", "path": "x"}, headers=bob
    )
    assert status == 403
    assert (await api.call("POST", "datasets", "shared", "verify", body="", headers=ops))[
        "latest"
    ] == 1
    assert (await api.call("DELETE", "datasets", "shared", headers=ops))["versions"] == [1]
