"""The shipped OpenAPI document: well formed, in step with the routes, the JobSpec and the views."""

from __future__ import annotations

import copy
import inspect
import json
import re
from functools import cache
from importlib.resources import files
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from tornado import web

from jupyter_aigrid.server.handlers import ROUTES
from jupyter_aigrid.server.handlers.openapi import openapi_text
from jupyter_aigrid.server.model import JOB_STATES
from jupyter_aigrid.server.spec import job_schema

HTTP_VERBS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
DOC_URI = "urn:jupyter-aigrid:openapi"
Validator = jsonschema.Draft202012Validator


@cache
def _doc_text() -> str:
    return files("jupyter_aigrid.server").joinpath("schemas/openapi.yaml").read_text()


@cache
def _parsed() -> dict[str, Any]:
    return yaml.safe_load(_doc_text())


def load_doc() -> dict[str, Any]:
    """A fresh copy each time, so no test can change what another one sees (parsed once:
    a deep copy takes a fraction of the parse)."""
    return copy.deepcopy(_parsed())


def validator_for(component: str) -> jsonschema.protocols.Validator:
    """A validator for ``#/components/schemas/<component>``, with the document's $refs."""
    registry = Registry().with_resource(DOC_URI, DRAFT202012.create_resource(load_doc()))
    return Validator({"$ref": f"{DOC_URI}#/components/schemas/{component}"}, registry=registry)


def assert_valid(component: str, instance: Any) -> None:
    errors = list(validator_for(component).iter_errors(instance))
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def assert_exact_keys(component: str, instance: dict[str, Any]) -> None:
    """The body has exactly the documented properties (so neither can grow alone)."""
    schema = load_doc()["components"]["schemas"][component]
    assert set(instance) == set(schema["properties"]), component
    assert set(schema["required"]) <= set(instance), component


def operations(doc: dict[str, Any]):
    for path, item in doc["paths"].items():
        for verb in HTTP_VERBS:
            if verb in item:
                yield path, verb, item[verb]


def resolve(doc: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in obj:
        obj = pointer(doc, obj["$ref"])
    return obj


def pointer(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node: Any = doc
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), ref
        assert part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def walk(node: Any, where: str = "#"):
    yield where, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{where}/{i}")


# -- (a) a structurally valid OpenAPI 3.1 document ------------------------------------------

_REF = {"type": "object", "required": ["$ref"], "properties": {"$ref": {"type": "string"}}}
_SCHEMA = {"type": ["object", "boolean"]}
_MEDIA = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "properties": {"schema": _SCHEMA, "example": {}, "examples": {"type": "object"}},
    },
}
_HEADER = {
    "type": "object",
    "properties": {
        "description": {"type": "string"},
        "required": {"type": "boolean"},
        "schema": _SCHEMA,
    },
    "not": {"anyOf": [{"required": ["name"]}, {"required": ["in"]}]},
}
_PARAMETER = {
    "type": "object",
    "required": ["name", "in"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "in": {"enum": ["query", "header", "path", "cookie"]},
        "description": {"type": "string"},
        "required": {"type": "boolean"},
        "schema": _SCHEMA,
    },
    "oneOf": [{"required": ["schema"]}, {"required": ["content"]}],
    "if": {"properties": {"in": {"const": "path"}}},
    "then": {"required": ["required"], "properties": {"required": {"const": True}}},
}
_RESPONSE = {
    "type": "object",
    "required": ["description"],
    "properties": {
        "description": {"type": "string"},
        "headers": {"type": "object", "additionalProperties": {"anyOf": [_REF, _HEADER]}},
        "content": _MEDIA,
    },
}
_OPERATION = {
    "type": "object",
    "required": ["responses"],
    "properties": {
        "operationId": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "summary": {"type": "string"},
        "description": {"type": "string"},
        "parameters": {"type": "array", "items": {"anyOf": [_REF, _PARAMETER]}},
        "requestBody": {
            "anyOf": [
                _REF,
                {
                    "type": "object",
                    "required": ["content"],
                    "properties": {"content": _MEDIA, "required": {"type": "boolean"}},
                },
            ]
        },
        "responses": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": "^([1-5][0-9X]{2}|default)$"},
            "additionalProperties": {"anyOf": [_REF, _RESPONSE]},
        },
        "security": {"type": "array", "items": {"type": "object"}},
    },
}
#: The part of the OpenAPI 3.1 schema this document uses (the full one is not a dependency).
OPENAPI_31_SUBSET = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["openapi", "info", "paths"],
    "properties": {
        "openapi": {"type": "string", "pattern": r"^3\.1\.\d+(-.+)?$"},
        "jsonSchemaDialect": {"type": "string"},
        "info": {
            "type": "object",
            "required": ["title", "version"],
            "properties": {
                "title": {"type": "string"},
                "version": {"type": "string"},
                "summary": {"type": "string"},
                "description": {"type": "string"},
                "license": {"type": "object", "required": ["name"]},
            },
        },
        "servers": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["url"],
                "properties": {"url": {"type": "string"}},
            },
        },
        "security": {
            "type": "array",
            "items": {"type": "object", "additionalProperties": {"type": "array"}},
        },
        "tags": {
            "type": "array",
            "items": {"type": "object", "required": ["name"]},
        },
        "paths": {
            "type": "object",
            "propertyNames": {"pattern": "^/"},
            "additionalProperties": {
                "type": "object",
                "propertyNames": {
                    "enum": [*HTTP_VERBS, "summary", "description", "parameters", "servers", "$ref"]
                },
                "properties": {
                    **{verb: _OPERATION for verb in HTTP_VERBS},
                    "parameters": {"type": "array", "items": {"anyOf": [_REF, _PARAMETER]}},
                },
            },
        },
        "components": {
            "type": "object",
            "propertyNames": {
                "enum": [
                    "schemas",
                    "responses",
                    "parameters",
                    "examples",
                    "requestBodies",
                    "headers",
                    "securitySchemes",
                    "links",
                    "callbacks",
                    "pathItems",
                ]
            },
            "properties": {
                "schemas": {"type": "object", "additionalProperties": _SCHEMA},
                "responses": {"type": "object", "additionalProperties": _RESPONSE},
                "parameters": {"type": "object", "additionalProperties": _PARAMETER},
                "securitySchemes": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {
                                "enum": ["apiKey", "http", "mutualTLS", "oauth2", "openIdConnect"]
                            },
                        },
                        "if": {"properties": {"type": {"const": "apiKey"}}},
                        "then": {
                            "required": ["name", "in"],
                            "properties": {"in": {"enum": ["query", "header", "cookie"]}},
                        },
                    },
                },
            },
        },
    },
}


def test_document_is_the_one_served():
    assert openapi_text() == _doc_text()


def test_yaml_keys_are_strings():
    """YAML turns unquoted 200, yes, no, null into ints, bools and None; keys must stay text."""
    for where, node in walk(load_doc()):
        if isinstance(node, dict):
            bad = [k for k in node if not isinstance(k, str)]
            assert not bad, f"{where}: non-string keys {bad}"


def test_structurally_valid_openapi_31():
    Validator.check_schema(OPENAPI_31_SUBSET)
    errors = list(Validator(OPENAPI_31_SUBSET).iter_errors(load_doc()))
    assert not errors, [f"{e.json_path}: {e.message}" for e in errors]


def test_every_schema_is_valid_json_schema_2020_12():
    doc = load_doc()
    assert doc["jsonSchemaDialect"] == "https://json-schema.org/draft/2020-12/schema"
    schemas = dict(doc["components"]["schemas"])
    for where, node in walk(doc):
        if isinstance(node, dict) and "schema" in node and "/components/schemas" not in where:
            schemas[where] = node["schema"]
    for name, schema in schemas.items():
        try:
            Validator.check_schema(schema)
        except jsonschema.SchemaError as e:  # pragma: no cover - the message is the point
            pytest.fail(f"{name}: {e.message}")


def test_every_ref_resolves():
    doc = load_doc()
    refs = [node["$ref"] for _, node in walk(doc) if isinstance(node, dict) and "$ref" in node]
    assert refs
    for ref in refs:
        pointer(doc, ref)


def test_operation_ids_are_unique():
    ids = [op["operationId"] for _, _, op in operations(load_doc())]
    assert len(ids) == len(set(ids))


def test_security_is_the_token_header():
    doc = load_doc()
    assert [s["url"] for s in doc["servers"]] == ["/"]
    scheme = doc["components"]["securitySchemes"]["token"]
    assert scheme["type"] == "apiKey"
    assert scheme["in"] == "header"
    assert scheme["name"] == "Authorization"
    assert "token <TOKEN>" in scheme["description"]
    assert doc["security"] == [{"token": []}]
    for path, verb, op in operations(doc):
        assert op.get("security", doc["security"]) == [{"token": []}], (path, verb)


def test_jobspec_has_one_copy_and_stands_alone():
    """The JobSpec the server validates with is the openapi.yaml component itself (there is
    no second copy to drift), and it refers to nothing outside itself."""
    shipped = job_schema()
    embedded = load_doc()["components"]["schemas"]["JobSpec"]
    Validator.check_schema(shipped)
    assert {k: v for k, v in shipped.items() if k != "$schema"} == embedded
    assert embedded["additionalProperties"] is False
    assert "$ref" not in json.dumps(embedded)
    schemas = files("jupyter_aigrid.server").joinpath("schemas")
    assert sorted(p.name for p in schemas.iterdir() if p.is_file()) == ["openapi.yaml"]


@pytest.mark.parametrize(
    "body",
    [
        {"code": "print(1)"},
        {"command": ["true"], "gpus": 2, "replicas": 2},
        {"code": "x", "bogus": 1},
        {"code": "x", "env": {"1BAD": "x"}},
        {"code": "x", "slo": {"latency_ms": 0}},
        {"code": "x", "datasets": ["UPPER"]},
    ],
)
def test_jobspec_accepts_and_rejects_like_the_shipped_schema(body):
    shipped = Validator(job_schema())
    assert validator_for("JobSpec").is_valid(body) == shipped.is_valid(body)


def test_submit_takes_a_jobspec_and_answers_201_with_location():
    op = load_doc()["paths"]["/aigrid/api/jobs"]["post"]
    body = op["requestBody"]
    assert body["required"] is True
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobSpec"}
    created = op["responses"]["201"]
    assert "Location" in created["headers"]
    assert created["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Job"}


def test_cancel_answers_202_with_the_job():
    op = load_doc()["paths"]["/aigrid/api/jobs/{job_id}"]["delete"]
    assert op["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Job"
    }
    assert "409" in op["responses"]


def test_error_responses():
    """403 everywhere (every handler is authenticated), 404 for paths that name something,
    409 for state conflicts, 413 for quotas and chunk sizes."""
    doc = load_doc()
    for path, verb, op in operations(doc):
        codes = set(op["responses"])
        assert "403" in codes, (path, verb)
        # Paths that name a job, image, dataset or upload, and the events of one job (?job=),
        # can name what is not there.
        named = "{" in path or path.endswith("/events")
        assert ("404" in codes) == named, (path, verb)
        # Cancelling what has ended, checkpointing or moving what does not run, replaying an
        # empty history, a dataset version with no usable copy, deleting a dataset a job
        # uses, a chunk at the wrong offset and committing an incomplete upload are state
        # conflicts.
        conflicts = {
            ("/aigrid/api/jobs", "post"),
            ("/aigrid/api/jobs/{job_id}", "delete"),
            ("/aigrid/api/jobs/{job_id}/checkpoint", "post"),
            ("/aigrid/api/jobs/{job_id}/migrate", "post"),
            ("/aigrid/api/simulate", "post"),
            ("/aigrid/api/images", "post"),
            ("/aigrid/api/datasets/{name}", "delete"),
            ("/aigrid/api/uploads/{upload_id}/data", "put"),
            ("/aigrid/api/uploads/{upload_id}/commit", "post"),
        }
        assert ("409" in codes) == ((path, verb) in conflicts), (path, verb)
        # The dataset quota, and the size of one chunk.
        too_large = {
            ("/aigrid/api/uploads", "post"),
            ("/aigrid/api/uploads/{upload_id}/data", "put"),
            ("/aigrid/api/uploads/{upload_id}/commit", "post"),
        }
        assert ("413" in codes) == ((path, verb) in too_large), (path, verb)
        for code in codes & {"400", "403", "404", "409", "413"}:
            response = resolve(doc, op["responses"][code])
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, (path, verb, code)
    # 400 exactly where a body, a query argument or a dataset name is read.
    with_400 = {(p, v) for p, v, op in operations(doc) if "400" in op["responses"]}
    assert with_400 == {
        ("/aigrid/api/jobs", "get"),
        ("/aigrid/api/jobs", "post"),
        ("/aigrid/api/jobs/{job_id}/logs", "get"),
        ("/aigrid/api/jobs/{job_id}/checkpoint", "post"),
        ("/aigrid/api/jobs/{job_id}/migrate", "post"),
        ("/aigrid/api/events", "get"),
        ("/aigrid/api/simulate", "post"),
        ("/aigrid/api/images", "post"),
        ("/aigrid/api/images/{image_id}", "put"),
        ("/aigrid/api/datasets", "post"),
        ("/aigrid/api/datasets/{name}", "get"),
        ("/aigrid/api/datasets/{name}", "delete"),
        ("/aigrid/api/datasets/{name}/verify", "post"),
        ("/aigrid/api/uploads", "post"),
        ("/aigrid/api/uploads/{upload_id}/data", "put"),
        ("/aigrid/api/profiles", "get"),
    }


def test_logs_are_ndjson_log_lines():
    op = load_doc()["paths"]["/aigrid/api/jobs/{job_id}/logs"]["get"]
    assert set(op["responses"]["200"]["content"]) == {"application/x-ndjson"}
    schema = op["responses"]["200"]["content"]["application/x-ndjson"]["schema"]
    assert schema == {"$ref": "#/components/schemas/LogLine"}


def test_list_state_is_the_job_states():
    doc = load_doc()
    params = {p["name"]: p for p in doc["paths"]["/aigrid/api/jobs"]["get"]["parameters"]}
    assert resolve(doc, params["state"]["schema"])["enum"] == list(JOB_STATES)
    assert doc["components"]["schemas"]["JobState"]["enum"] == list(JOB_STATES)


# -- (b) the document lists exactly the routes and the verbs the handlers implement ---------

_GROUP = re.compile(r"\(\?P<(?P<name>\w+)>[^()]*\)")


def route_to_path(route: str) -> str:
    path = _GROUP.sub(lambda m: "{" + m["name"] + "}", route)
    # What is left must be a literal path (a dot only as itself, e.g. openapi.yaml).
    assert not re.search(r"[()\[\]*+?^$|\\]", path), f"cannot document route {route!r}"
    return path


def implemented_verbs(handler: type[web.RequestHandler]) -> set[str]:
    """HTTP verbs defined by the package's own classes, not inherited from tornado/Jupyter."""
    verbs = set()
    for cls in handler.__mro__:
        if not cls.__module__.startswith("jupyter_aigrid."):
            continue
        verbs |= {m.lower() for m in handler.SUPPORTED_METHODS if m.lower() in vars(cls)}
    return verbs


def test_route_regex_conversion():
    route = r"/aigrid/api/jobs/(?P<job_id>[^/]+)/logs"
    assert route_to_path(route) == "/aigrid/api/jobs/{job_id}/logs"


def test_every_route_is_a_path_and_every_path_a_route():
    routed = [route_to_path(route) for route, _ in ROUTES]
    assert len(routed) == len(set(routed))
    assert set(routed) == set(load_doc()["paths"])


@pytest.mark.parametrize(("route", "handler"), ROUTES, ids=[r for r, _ in ROUTES])
def test_documented_verbs_are_the_implemented_ones(route, handler):
    item = load_doc()["paths"][route_to_path(route)]
    documented = {verb for verb in HTTP_VERBS if verb in item}
    implemented = implemented_verbs(handler)
    assert implemented, handler
    assert documented == implemented, handler.__name__


@pytest.mark.parametrize(("route", "handler"), ROUTES, ids=[r for r, _ in ROUTES])
def test_path_parameters_match_the_handler(route, handler):
    doc = load_doc()
    path = route_to_path(route)
    item = doc["paths"][path]
    names = re.findall(r"\{(\w+)\}", path)
    for verb in implemented_verbs(handler):
        params = [resolve(doc, p) for p in item.get("parameters", [])]
        params += [resolve(doc, p) for p in item[verb].get("parameters", [])]
        in_path = [p["name"] for p in params if p["in"] == "path"]
        assert sorted(in_path) == sorted(names), (path, verb)
        signature = inspect.signature(getattr(handler, verb))
        assert [n for n in signature.parameters if n != "self"] == names, (path, verb)


_QUERY_READS = re.compile(
    r"""(?:get_query_argument\(\s*|query_(?:int|bool)\(\s*self,\s*)["'](\w+)["']"""
)


@pytest.mark.parametrize(("route", "handler"), ROUTES, ids=[r for r, _ in ROUTES])
def test_query_parameters_are_the_ones_read(route, handler):
    doc = load_doc()
    item = doc["paths"][route_to_path(route)]
    # A handler that streams its body reads its query arguments in prepare(), before the body.
    prepare = inspect.getsource(handler.prepare) if "prepare" in vars(handler) else ""
    for verb in implemented_verbs(handler):
        read = set(_QUERY_READS.findall(inspect.getsource(getattr(handler, verb)) + prepare))
        params = [resolve(doc, p) for p in item[verb].get("parameters", [])]
        documented = {p["name"] for p in params if p["in"] == "query"}
        assert documented == read, (route, verb)


def test_logs_query_parameters():
    params = load_doc()["paths"]["/aigrid/api/jobs/{job_id}/logs"]["get"]["parameters"]
    types = {p["name"]: p["schema"]["type"] for p in params}
    assert types == {
        "rank": "integer",
        "tail": "integer",
        "attempt": "integer",
        "follow": "boolean",
    }


# -- real responses of a real server conform to the documented schemas ------------------------


async def test_real_responses_match_the_schemas(api):
    code = "import sys\nfrom jupyter_aigrid import runtime\nruntime.report(loss=0.5, step=1)\n"
    code += "print('out')\nprint('ü', file=sys.stderr)\n"
    created = await api.submit({"code": code, "gpus": 2, "name": "schema"})
    blocker = await api.submit({"code": "import time; time.sleep(30)", "gpus": 4})
    queued = await api.submit({"code": "pass", "gpus": 4})
    await api.wait(created["id"])
    await api.wait(blocker["id"], states=("running",))
    views = [
        created,
        await api.job(created["id"]),
        await api.job(blocker["id"]),
        await api.job(queued["id"]),
    ]
    assert views[-1]["queue_position"] == 1
    cancelled = await api.call("DELETE", "jobs", blocker["id"])
    views.append(cancelled)
    for view in views:
        assert_exact_keys("Job", view)
        assert_valid("Job", view)
    assert_valid("JobList", await api.call("GET", "jobs"))

    cluster = await api.call("GET", "cluster")
    assert_exact_keys("Cluster", cluster)
    assert_valid("Cluster", cluster)
    for node in cluster["nodes"]:
        assert_exact_keys("ClusterNode", node)

    result = await api.call("GET", "jobs", created["id"], "result")
    assert_exact_keys("Result", result)
    assert_valid("Result", result)
    assert sorted(m["rank"] for m in result["metrics"]) == [0, 1]

    raised = await api.submit({"code": "x = 1\nraise KeyError('k')", "outputs": ["x"]})
    pulled = await api.submit({"code": "x = [1, 2]", "outputs": ["x"]})
    for job in (raised, pulled):
        await api.wait(job["id"])
        result = await api.call("GET", "jobs", job["id"], "result")
        assert_exact_keys("Result", result)
        assert_valid("Result", result)
    assert_exact_keys(
        "RemoteError",
        result_error := (await api.call("GET", "jobs", raised["id"], "result"))["error"],
    )
    assert result_error["type"] == "KeyError"
    assert result["outputs"][0]["name"] == "x"
    events = await api.call("GET", "events", params={"since": 0}, raw=True)
    for line in events.body.decode().splitlines():
        assert_exact_keys("Event", json.loads(line))
        assert_valid("Event", json.loads(line))

    lines = await api.logs(created["id"])
    assert {(e["stream"], e["line"]) for e in lines} == {("stdout", "out"), ("stderr", "ü")}
    for line in lines:
        assert_exact_keys("LogLine", line)
        assert_valid("LogLine", line)

    for args, kwargs in [
        (("POST", "jobs"), {"body": {"code": "x", "bogus": 1}}),
        (("GET", "jobs", "999"), {}),
        (("DELETE", "jobs", created["id"]), {}),
    ]:
        _, body = await api.error(*args, **kwargs)
        assert_exact_keys("Error", body)
        assert_valid("Error", body)
    await api.wait(blocker["id"])
    await api.wait(queued["id"])
