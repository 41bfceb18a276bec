"""Every field has a limit, every pattern matches the whole text, and what breaks one is a 400
naming the field and what is allowed, never a 500 or an echo of a megabyte."""

from __future__ import annotations

import pytest

from jupyter_aigrid.server.spec import MAX_ENV_BYTES, SpecError, job_schema, validate


def refused(raw: dict) -> SpecError:
    with pytest.raises(SpecError) as info:
        validate({"code": "pass", **raw})
    error = info.value
    assert error.status == 400
    # Named, and short: the offending value is never echoed in full.
    assert error.field and len(error.message) < 400, error.message
    return error


# -- string lengths and counts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"gpu_type": "x" * 2**20}, "gpu_type", "at most 256"),
        ({"image": "r/" + "x" * 600}, "image", "at most 512"),
        ({"model": "m" * 257}, "model", "at most 256"),
        ({"template": "t" * 257}, "template", "at most 256"),
        ({"name": "n" * 129}, "name", "at most 128"),
        ({"workdir": "/" + "d" * 4096}, "workdir", "at most 4096"),
        ({"datasets": ["d@" + "v" * 300]}, "datasets.0", "at most 256"),
        ({"datasets": [f"d{i}" for i in range(65)]}, "datasets", "at most 64"),
        ({"outputs": [f"o{i}" for i in range(257)]}, "outputs", "at most 256"),
        ({"args": ["a"] * 1025}, "args", "at most 1024"),
        ({"args": ["a" * 4097]}, "args.0", "at most 4096"),
        ({"env": {"A": "x" * (5 * 2**20)}}, "env.A", "at most 131072"),
        ({"env": {f"K{i}": "" for i in range(200_000)}}, "env", "at most 256"),
        ({"env": {"K" * 300: "1"}}, "env", "at most 256"),
        ({"code": "x" * (2**20 + 1)}, "code", "at most 1048576"),
        ({"gpu_type": ["x"] * 100_000}, "gpu_type", "is not of type 'string'"),
    ],
)
def test_over_long_fields_are_refused(raw, field, words):
    error = refused(raw)
    assert error.field == field
    assert words in error.message


def test_command_items_and_count_are_limited():
    with pytest.raises(SpecError) as info:
        validate({"command": ["echo"] * 1025})
    assert (info.value.field, "at most 1024" in info.value.message) == ("command", True)
    with pytest.raises(SpecError) as info:
        validate({"command": ["echo", "x" * 4097]})
    assert (info.value.field, "at most 4096" in info.value.message) == ("command.1", True)


def test_values_at_the_limits_are_accepted():
    spec = validate(
        {
            "code": "x" * 2**20,
            "gpu_type": "g" * 256,
            "name": "n" * 128,
            "workdir": "/" + "d" * 4095,
            "args": ["a" * 4096] * 16,
            "datasets": ["d@" + "v" * 254],
            "env": {f"K{i:03}": "v" * 400 for i in range(256)},  # 256 vars, ~104 KiB
        }
    )
    assert len(spec["env"]) == 256
    assert len(validate({"command": ["x" * 4096] * 1024})["command"]) == 1024


def test_the_environment_as_a_whole_is_capped():
    per = MAX_ENV_BYTES // 100
    error = refused({"env": {f"V{i}": "x" * per for i in range(101)}})
    assert error.field == "env"
    assert "128 KiB" in error.message and str(MAX_ENV_BYTES) in error.message
    # Counted in UTF-8 bytes, as the kernel counts them: 3 bytes per "€".
    error = refused({"env": {f"V{i}": "€" * (per // 3 + 1) for i in range(100)}})
    assert error.field == "env"
    validate({"code": "pass", "env": {f"V{i}": "x" * (per - 10) for i in range(100)}})


def test_the_schema_bounds_every_string_and_list():
    """A new field cannot come without a limit."""
    for name, prop in job_schema()["properties"].items():
        if prop.get("type") == "string":
            assert "maxLength" in prop, name
        if prop.get("type") == "array":
            assert "maxItems" in prop and "maxLength" in prop["items"], name
        if prop.get("type") == "object" and prop.get("additionalProperties", True) is not False:
            assert "maxProperties" in prop, name
            assert "maxLength" in prop.get("propertyNames", {}), name


# -- patterns match the whole text ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"env": {"FOO\n": "x"}}, "env.FOO\n"),
        ({"name": "job\n"}, "name"),
        ({"outputs": ["x\n"]}, "outputs.0"),
        ({"inputs": {"x\n": "gARLAS4="}}, "inputs.x\n"),
        ({"datasets": ["data\n"]}, "datasets.0"),
        ({"gpu_type": "A100\n"}, "gpu_type"),
        ({"image": "python:3.11\n"}, "image"),
        ({"model": "m\n"}, "model"),
        ({"template": "single\n"}, "template"),
        ({"name": "a\x7fb"}, "name"),
    ],
)
def test_a_trailing_newline_or_control_character_is_refused(raw, field):
    error = refused(raw)
    assert error.field == field
    assert "match" in error.message or "control characters" in error.message


async def test_the_api_refuses_them_with_a_400(api):
    for body, field in [
        ({"code": "pass", "env": {"FOO\n": "x"}}, "env.FOO\n"),
        ({"code": "pass", "outputs": ["x\n"]}, "outputs.0"),
        ({"code": "pass", "gpu_type": "x" * 2**20}, "gpu_type"),
        ({"code": "pass", "workdir": "/tmp\n"}, "workdir"),
    ]:
        status, error = await api.error("POST", "jobs", body=body)
        assert (status, error["field"]) == (400, field)
        assert len(error["message"]) < 400
    assert (await api.call("GET", "jobs"))["jobs"] == []


# -- workdir -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workdir", "words"),
    [
        ("relative/dir", "absolute path"),
        ("/data/run\n", "control characters"),
        ("/data/\trun", "control characters"),
        ("/data/\x00run", "NUL"),
    ],
)
def test_workdir_must_be_a_clean_absolute_path(workdir, words):
    error = refused({"workdir": workdir})
    assert error.field == "workdir" and words in error.message


def test_workdir_is_not_checked_for_existence_at_submit():
    # The host's directory, by design: the node that runs the job may have it, this one not.
    spec = validate({"code": "pass", "workdir": "/no/such dir/on this node"})
    assert spec["workdir"] == "/no/such dir/on this node"


# -- query arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "since",
    [
        "99999999999999999999999",
        str(2**63),
        pytest.param("1" * 5000, id="5000-digits"),
        "-1",
        "1.5",
        "\u0661",
    ],
)
async def test_an_out_of_range_query_integer_is_a_400(api, since):
    status, error = await api.error("GET", "events", params={"since": since})
    assert (status, error["field"]) == (400, "since")
    assert str(2**63 - 1) in error["message"] and len(error["message"]) < 200


async def test_the_largest_query_integer_is_accepted(api):
    resp = await api.call("GET", "events", params={"since": str(2**63 - 1)}, raw=True)
    assert resp.code == 200 and resp.body == b""


# -- the image catalog ----------------------------------------------------------------------------
