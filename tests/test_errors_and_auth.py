"""Bad input gets a 400 naming the field and changes nothing; no token, no access."""

from __future__ import annotations

import json
import re

import pytest
from tornado.httpclient import HTTPClientError

from jupyter_aigrid.server.handlers import ROUTES


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ("{not json", "body", "not valid JSON"),
        ("[1, 2]", "body", "must be a JSON object"),
        ({"code": "pass", "colour": "blue"}, "colour", "unknown field 'colour'"),
        ({"code": "pass", "gpus": -1}, "gpus", "less than the minimum of 0"),
        ({"code": "pass", "command": ["true"]}, "code", "exactly one of 'code'"),
        ({"gpus": 1}, "code", "exactly one of 'code'"),
        ({"code": "pass", "priority": "urgent"}, "priority", "'urgent' is not one of"),
        ({"code": "pass", "gpus": 3, "gpus_per_replica": 2}, "gpus_per_replica", "multiple"),
        ({"code": "pass", "env": {"RANK": "3"}}, "env.RANK", "cannot be overridden"),
        ({"code": "pass", "template": "horovod-9"}, "template", "unknown template"),
        ({"code": "pass", "image": "pytorch:2"}, "image", "local executor"),
        ({"code": "pass", "datasets": ["imagenet"]}, "datasets[0]", "no dataset 'imagenet'"),
        ({"code": "pass", "time_limit_s": 0}, "time_limit_s", "less than or equal to the minimum"),
        ('{"code": "pass", "time_limit_s": NaN}', "body", "NaN is not a number JSON allows"),
        ('{"code": "pass", "time_limit_s": 1e999}', "time_limit_s", "must be a finite number"),
        ({"code": "pass", "env": {"X": "a\u0000b"}}, "env.X", "NUL character"),
        ('{"code": "pass # \\ud800"}', "code", "not valid Unicode"),
        ("[" * 100000 + "]" * 100000, "body", "nested too deeply"),
        ({"code": "pass", "replicas": 10**6, "cpus_per_replica": 1e-9}, "replicas", "maximum"),
        ({"code": "pass", "gpus": 1.5}, "gpus", "is not of type 'integer'"),
        ({"code": "pass", "workdir": "data"}, "workdir", "absolute path"),
    ],
)
async def test_bad_spec_is_400_naming_the_field(api, body, field, words):
    status, error = await api.error("POST", "jobs", body=body)
    assert status == 400
    assert error["field"] == field
    assert words in error["message"]
    assert (await api.call("GET", "jobs"))["jobs"] == []


async def test_whole_number_floats_are_integers(api):
    job = await api.submit({"code": "pass", "gpus": 2.0, "replicas": 2.0})
    assert job["gpus"] == 2 and job["replicas"] == 2
    assert (await api.wait(job["id"]))["state"] == "succeeded"


async def test_more_gpus_than_exist_is_unschedulable(api):
    status, error = await api.error("POST", "jobs", body={"code": "pass", "gpus": 5})
    assert status == 400
    assert error["field"] == "gpus"
    assert error["message"].startswith("unschedulable")
    # It names what is available.
    assert "4 GPUs on 2 node(s)" in error["message"]
    assert "node-0: 2 x simulated (simulated)" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"code": "pass", "gpus": 2, "gpus_per_replica": 2, "nodes": 1, "replicas": 1}, None),
        ({"code": "pass", "gpus": 3, "gpus_per_replica": 3}, "gpus_per_replica"),
        ({"code": "pass", "replicas": 3, "nodes": 3}, "nodes"),
        ({"code": "pass", "gpus": 1, "gpu_type": "H100"}, "gpu_type"),
        ({"code": "pass", "cpus_per_replica": 64}, "cpus_per_replica"),
    ],
)
async def test_unschedulable_names_the_limiting_field(api, body, field):
    if field is None:  # fits: 2 GPUs on one node
        assert (await api.submit(body))["state"] == "queued"
        return
    status, error = await api.error("POST", "jobs", body=body)
    assert status == 400 and error["field"] == field
    assert error["message"].startswith("unschedulable")


async def test_bad_query_arguments(api):
    job = await api.submit({"code": "pass"})
    status, error = await api.error("GET", "jobs", params={"state": "sleeping"})
    assert (status, error["field"]) == (400, "state")
    status, error = await api.error("GET", "jobs", job["id"], "logs", params={"rank": "x"})
    assert (status, error["field"]) == (400, "rank")
    status, error = await api.error("GET", "jobs", job["id"], "logs", params={"rank": 5})
    assert (status, error["field"]) == (400, "rank")
    status, error = await api.error("GET", "jobs", job["id"], "logs", params={"attempt": 3})
    assert (status, error["field"]) == (400, "attempt")


def concrete(route: str) -> str:
    """A route with every path parameter filled in (with "1")."""
    return re.sub(r"\(\?P<\w+>[^)]*\)", "1", route).lstrip("/")


ROUTE_VERBS = [
    (route, verb.upper())
    for route, handler in ROUTES
    for verb in ("get", "post", "put", "patch", "delete")
    if verb in vars(handler)
]


@pytest.mark.parametrize(("route", "method"), ROUTE_VERBS)
async def test_no_token_is_403_on_every_route(api, jp_fetch, route, method):
    await api.submit({"code": "pass"})
    for header in ("", "token wrong"):
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch(
                *concrete(route).split("/"),
                method=method,
                body=json.dumps({"code": "pass"}) if method == "POST" else None,
                headers={"Authorization": header},
                allow_nonstandard_methods=True,
            )
        assert info.value.code == 403, header
    # Nothing was submitted without a token.
    assert len((await api.call("GET", "jobs"))["jobs"]) == 1


async def test_openapi_is_served(api):
    resp = await api.call("GET", "openapi.yaml", raw=True)
    assert resp.headers["Content-Type"].startswith("application/yaml")
    assert b"/aigrid/api/jobs/{job_id}/logs" in resp.body
