"""Templates: the master's choice, GET /templates, and what each renders for real ranks."""

from __future__ import annotations

import json

import pytest

from jupyter_aigrid.server.spec import SpecError, validate
from jupyter_aigrid.server.templating import templates

ENV_PRINTER = "import json, os\nprint(json.dumps({k: os.environ.get(k) for k in %r}))\n"


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        ({"code": "import torch\nprint(1)", "gpus": 2}, "pytorch-ddp"),
        ({"code": "from torch import nn", "gpus": 2, "replicas": 1}, "pytorch-ddp"),
        ({"code": "import torch", "gpus": 1}, "single"),
        ({"code": "print(1)"}, "single"),
        ({"code": "print(1)", "replicas": 3}, "pytorch-ddp"),
        ({"command": ["torchrun", "train.py"], "gpus": 2}, "pytorch-ddp"),
        ({"code": "serve()", "kind": "inference", "model": "m"}, "inference"),
        ({"code": "x", "replicas": 3, "template": "mpi"}, "mpi"),
    ],
)
def test_the_master_picks_a_template(raw, template):
    assert validate(raw)["template"] == template


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"code": "x", "template": "nope"}, "unknown template 'nope'; available: inference, mpi"),
        ({"code": "x", "gpus": 2, "template": "single"}, "at most 1"),
        ({"code": "x", "template": "tf-parameter-server"}, "at least 2"),
    ],
)
def test_a_request_must_fit_its_template(raw, words):
    with pytest.raises(SpecError) as info:
        validate(raw)
    assert info.value.field == "template" and words in info.value.message


async def test_templates_are_listed(api):
    listed = (await api.call("GET", "templates"))["templates"]
    assert [t["name"] for t in listed] == sorted(templates())
    ddp = next(t for t in listed if t["name"] == "pytorch-ddp")
    assert {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} <= set(ddp["env"])
    assert ddp["framework"] == "pytorch" and ddp["network"] == "host"


async def _env_of(api, spec: dict, names: list[str]) -> tuple[dict, dict[int, dict]]:
    job = await api.submit({**spec, "code": ENV_PRINTER % names + spec.get("code", "")})
    done = await api.wait(job["id"])
    assert done["state"] == "succeeded", done["reason"]
    out: dict[int, dict] = {}
    for line in await api.logs(job["id"]):
        if line["stream"] == "stdout" and line["line"].startswith("{"):
            out[line["rank"]] = json.loads(line["line"])
    return done, out


async def test_pytorch_ddp_ranks_get_torchrun_names(api):
    names = [
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "TORCHELASTIC_RUN_ID",
    ]
    job, env = await _env_of(api, {"gpus": 2, "template": "pytorch-ddp"}, names)
    assert job["description"]["template"] == "pytorch-ddp"
    assert job["description"]["roles"] == [{"name": "worker", "ranks": [0, 1]}]
    assert [env[r]["RANK"] for r in (0, 1)] == ["0", "1"]
    assert {env[r]["WORLD_SIZE"] for r in (0, 1)} == {"2"}
    assert env[0]["MASTER_PORT"] == env[1]["MASTER_PORT"] and env[0]["TORCHELASTIC_RUN_ID"]


async def test_mpi_ranks_get_open_mpi_names_and_a_hostfile(api):
    names = ["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
             "HOROVOD_RANK", "AIGRID_HOSTFILE"]  # fmt: skip
    read = "print('HOSTFILE', open(os.environ['AIGRID_HOSTFILE']).read().replace(chr(10), ';'))\n"
    job, env = await _env_of(api, {"gpus": 3, "template": "mpi", "code": read}, names)
    assert sorted(env[r]["OMPI_COMM_WORLD_RANK"] for r in env) == ["0", "1", "2"]
    assert {env[r]["OMPI_COMM_WORLD_SIZE"] for r in env} == {"3"}
    assert env[2]["HOROVOD_RANK"] == "2"
    lines = [x["line"] for x in await api.logs(job["id"]) if x["line"].startswith("HOSTFILE")]
    per_node: dict[str, int] = {}
    for slot in job["placement"]:
        per_node[slot["node"]] = per_node.get(slot["node"], 0) + 1
    expected = "".join(f"{n} slots={c};" for n, c in per_node.items())
    assert lines and all(line == f"HOSTFILE {expected}" for line in lines)


async def test_parameter_server_ranks_get_tf_config(api):
    job, env = await _env_of(api, {"gpus": 3, "template": "tf-parameter-server"}, ["TF_CONFIG"])
    configs = {r: json.loads(env[r]["TF_CONFIG"]) for r in env}
    assert configs[0]["task"] == {"type": "ps", "index": 0}
    assert configs[1]["task"] == {"type": "worker", "index": 0}
    assert configs[2]["task"] == {"type": "worker", "index": 1}
    cluster = configs[0]["cluster"]
    assert len(cluster["ps"]) == 1 and len(cluster["worker"]) == 2
    assert all(c["cluster"] == cluster for c in configs.values())
    assert job["description"]["roles"] == [
        {"name": "ps", "ranks": [0]},
        {"name": "worker", "ranks": [1, 2]},
    ]


async def test_inference_ranks_get_their_model_and_port(api):
    spec = {"kind": "inference", "model": "resnet50", "replicas": 2}
    _, env = await _env_of(api, spec, ["AIGRID_MODEL", "PORT"])
    assert {env[r]["AIGRID_MODEL"] for r in env} == {"resnet50"}
    assert len({env[r]["PORT"] for r in env}) == 2
