"""Job description validation: JSON Schema first, then the rules a schema cannot say.

:func:`validate` returns a complete JobSpec, defaults filled in and replicas derived, or raises
:class:`SpecError` naming the field that is wrong and what is allowed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import keyword
import math
import re
from functools import cache
from typing import Any

import jsonschema

from .model import InferenceAsk, Request
from .profiles import Slo
from .templating import TemplateError, check, choose
from .validation import NO_CONTROL as _NO_CONTROL  # noqa: F401 - spec rules share it
from .validation import SpecError, exact_validator, first_error, openapi, short

#: Variables the runtime sets for every replica; a job may not override them.
RESERVED_ENV = frozenset(
    {
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "CUDA_VISIBLE_DEVICES",
    }
)
#: Most bytes of pushed values (decoded) one job may carry.
MAX_INPUT_BYTES = 256 * 1024 * 1024
#: Most bytes of a job's own environment, counted as the kernel does: ``KEY=value`` and a NUL
#: per variable, in UTF-8. (The schema also caps the count at 256 and each value's length.)
MAX_ENV_BYTES = 128 * 1024
#: Control characters (C0 and DEL): no path, name or identifier of a job has a use for them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@cache
def job_schema() -> dict[str, Any]:
    """The JobSpec schema: ``components.schemas.JobSpec`` of ``openapi.yaml``, the one copy
    (it refers to nothing outside itself, so it also stands alone as a JSON Schema)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **openapi()["components"]["schemas"]["JobSpec"],
    }


@cache
def _validator() -> jsonschema.protocols.Validator:
    return exact_validator(job_schema())


def _no_constant(name: str) -> None:
    msg = f"{name} is not a number JSON allows; use a finite number"
    raise ValueError(msg)


def parse_body(body: bytes | str) -> dict[str, Any]:
    """Decode a request body into a JSON object, or raise SpecError."""
    try:
        data = json.loads(body or b"null", parse_constant=_no_constant)
    except RecursionError as e:
        msg = "the request body is nested too deeply"
        raise SpecError(msg, field="body") from e
    except (ValueError, UnicodeDecodeError) as e:
        msg = f"the request body is not valid JSON: {e}"
        raise SpecError(msg, field="body") from e
    if not isinstance(data, dict):
        msg = "the request body must be a JSON object (a job description)"
        raise SpecError(msg, field="body")
    return data


def parse_fields(body: bytes | str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object body (an empty one is ``{}``) with no field but ``allowed``."""
    data = parse_body(body) if body and body.strip() else {}
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        msg = f"unknown field {unknown[0]!r}; allowed: {', '.join(allowed) or 'none'}"
        raise SpecError(msg, field=unknown[0])
    return data


def _check_values(value: Any, field: str) -> Any:
    """Refuse what JSON carries but a job cannot use; turn 2.0 into 2. Returns the value."""
    if isinstance(value, float):
        if not math.isfinite(value):
            msg = f"{field!r} must be a finite number, got {value}"
            raise SpecError(msg, field=field)
        return int(value) if value.is_integer() else value
    if isinstance(value, str):
        if "\x00" in value:
            msg = f"{field!r} contains a NUL character, which no process argument can carry"
            raise SpecError(msg, field=field)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            msg = f"{field!r} is not valid Unicode text (a lone surrogate at {e.start})"
            raise SpecError(msg, field=field) from e
        return value
    if isinstance(value, list):
        return [_check_values(v, f"{field}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {
            _check_values(k, f"{field}.{k}" if field else str(k)): _check_values(
                v, f"{field}.{k}" if field else str(k)
            )
            for k, v in value.items()
        }
    return value


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Validate ``raw`` and return the full JobSpec with defaults and derived fields."""
    _check_counts(raw)
    raw = _check_values(raw, "")
    if "code" in raw and "command" in raw:
        msg = "give exactly one of 'code' (Python source) or 'command' (an argv list), not both"
        raise SpecError(msg, field="code")
    error = first_error(_validator(), raw, "the job description")
    if error is not None:
        raise error
    if "code" not in raw and "command" not in raw:
        msg = "give exactly one of 'code' (Python source) or 'command' (an argv list)"
        raise SpecError(msg, field="code")
    if "args" in raw and "code" not in raw:
        msg = "'args' goes with 'code'; with 'command', put the arguments in the argv list"
        raise SpecError(msg, field="args")
    for name in ("inputs", "outputs"):
        if name in raw and "code" not in raw:
            msg = f"{name!r} goes with 'code': only a Python job has globals to exchange"
            raise SpecError(msg, field=name)
    for i, name in enumerate(raw.get("outputs", [])):
        _check_identifier(name, f"outputs.{i}")
    _check_inference(raw)
    spec = _with_defaults(raw)
    if spec["kind"] == "inference":
        _qos_defaults(spec, raw)
    _derive_replicas(spec, gpus_given="gpus" in raw)
    _check_env(spec)
    _check_template(spec)
    if "workdir" in spec:
        _check_workdir(spec["workdir"])
    return spec


def _check_workdir(workdir: str) -> None:
    """An absolute path on the node. Whether it exists is the node's business, not submit's."""
    if _CONTROL.search(workdir):
        msg = (
            "workdir must be an absolute path without control characters (NUL, newline, tab, "
            f"...), got {short(workdir)}"
        )
        raise SpecError(msg, field="workdir")
    if not workdir.startswith("/"):
        msg = f"workdir must be an absolute path on the node, got {short(workdir)}"
        raise SpecError(msg, field="workdir")


def _check_counts(raw: dict[str, Any]) -> None:
    """Refuse an over-long list or mapping before looking at each of its entries: 200,000
    environment variables would otherwise cost seconds of checking to refuse."""
    for name, prop in job_schema()["properties"].items():
        value = raw.get(name)
        if isinstance(value, list) and len(value) > prop.get("maxItems", math.inf):
            msg = f"{name!r} has {len(value)} items; at most {prop['maxItems']} are allowed"
            raise SpecError(msg, field=name)
        if isinstance(value, dict) and len(value) > prop.get("maxProperties", math.inf):
            msg = f"{name!r} has {len(value)} entries; at most {prop['maxProperties']} are allowed"
            raise SpecError(msg, field=name)


def _check_identifier(name: str, field: str) -> None:
    if keyword.iskeyword(name):
        msg = f"{name!r} is a Python keyword, not a variable name"
        raise SpecError(msg, field=field)


def decode_inputs(spec: dict[str, Any]) -> dict[str, bytes]:
    """Take the pushed values out of a validated spec and decode them, or raise SpecError."""
    encoded = spec.pop("inputs", None) or {}
    decoded, total = {}, 0
    for name, text in encoded.items():
        field = f"inputs.{name}"
        _check_identifier(name, field)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:
            msg = f"{field} must be base64 (of a pickle): {e}"
            raise SpecError(msg, field=field) from e
        total += len(data)
        if total > MAX_INPUT_BYTES:
            msg = (
                f"the pushed values exceed {MAX_INPUT_BYTES // 2**20} MiB at {field}; "
                "put large data in a dataset instead"
            )
            raise SpecError(msg, field=field)
        decoded[name] = data
    return decoded


#: The priority an inference job's QoS class runs at, unless it says otherwise.
QOS_PRIORITY = {"realtime": "high", "interactive": "normal", "batch": "low"}


def _check_inference(raw: dict[str, Any]) -> None:
    """``model``, ``slo`` and ``qos`` belong to inference jobs, which need a model (without an
    ``slo``, every profiled resource type meets it: the cheapest free one is chosen)."""
    if raw.get("kind", "training") != "inference":
        for name in ("model", "slo", "qos"):
            if name in raw:
                msg = f'{name!r} is for inference jobs: add "kind": "inference", or remove it'
                raise SpecError(msg, field=name)
        return
    if "model" not in raw:
        msg = "an inference job needs 'model': the id its performance profiles are kept under"
        raise SpecError(msg, field="model")


def _qos_defaults(spec: dict[str, Any], raw: dict[str, Any]) -> None:
    """An inference job's class sets its priority (and makes batch preemptible) unless the
    job sets them itself."""
    spec.setdefault("qos", "interactive")
    if "priority" not in raw:
        spec["priority"] = QOS_PRIORITY[spec["qos"]]
    if "preemptible" not in raw and spec["qos"] == "batch":
        spec["preemptible"] = True


def _with_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    spec = dict(raw)
    for name, prop in job_schema()["properties"].items():
        if "default" in prop and name not in spec:
            spec[name] = prop["default"]
    spec.setdefault("name", "job")
    spec.setdefault("env", {})
    return spec


def _derive_replicas(spec: dict[str, Any], *, gpus_given: bool) -> None:
    per = spec.get("gpus_per_replica")
    replicas = spec.get("replicas")
    if not gpus_given and per and replicas:
        spec["gpus"] = per * replicas
    gpus = spec["gpus"]
    if per is None:
        if gpus and replicas and gpus % replicas == 0:
            per = gpus // replicas
        else:
            per = 1 if gpus > 0 else 0
    if per == 0 and gpus > 0:
        msg = f"gpus_per_replica is 0 but gpus is {gpus}; use gpus_per_replica >= 1"
        raise SpecError(msg, field="gpus_per_replica")
    if replicas is None:
        if per and gpus % per:
            msg = f"gpus ({gpus}) must be a multiple of gpus_per_replica ({per})"
            raise SpecError(msg, field="gpus_per_replica")
        replicas = gpus // per if per and gpus else 1
    if gpus != replicas * per:
        msg = (
            f"gpus ({gpus}) must equal replicas ({replicas}) x gpus_per_replica ({per}); "
            "give two of the three"
        )
        raise SpecError(msg, field="gpus")
    nodes = spec.get("nodes")
    if nodes is not None and nodes > replicas:
        msg = f"nodes ({nodes}) cannot exceed replicas ({replicas}): every node needs a replica"
        raise SpecError(msg, field="nodes")
    spec["gpus_per_replica"] = per
    spec["replicas"] = replicas
    spec["gpus"] = replicas * per


def _check_env(spec: dict[str, Any]) -> None:
    size = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in spec["env"].items())
    if size > MAX_ENV_BYTES:
        msg = (
            f"env is {size} bytes (KEY=value and a NUL per variable, UTF-8); at most "
            f"{MAX_ENV_BYTES} ({MAX_ENV_BYTES // 1024} KiB) are allowed: put large data in a "
            "dataset, a file, or 'inputs' instead"
        )
        raise SpecError(msg, field="env")
    for key in spec["env"]:
        if key in RESERVED_ENV or key.startswith("AIGRID_"):
            msg = f"env.{key} is set by the runtime for every replica and cannot be overridden"
            raise SpecError(msg, field=f"env.{key}")
        if key.upper().startswith("NVIDIA_"):
            # The container runtime would hand a container every GPU these name.
            msg = (
                f"env.{key} is not allowed: a job gets exactly the GPUs it was placed on, "
                "which the master passes to the container itself"
            )
            raise SpecError(msg, field=f"env.{key}")


def _check_template(spec: dict[str, Any]) -> None:
    """Pick the template when none is named, and make sure the request fits it."""
    spec["template"] = choose(spec)
    try:
        check(spec)
    except TemplateError as e:
        raise SpecError(e.message, field=e.field) from e


def to_request(
    job_id: str,
    owner: str,
    spec: dict[str, Any],
    submitted_at: float,
    seq: int,
    attained_gpu_s: float = 0.0,
) -> Request:
    """The scheduler's view of a validated spec."""
    return Request(
        job_id=job_id,
        owner=owner,
        replicas=spec["replicas"],
        gpus_per_replica=spec["gpus_per_replica"],
        cpus_per_replica=float(spec["cpus_per_replica"]),
        memory_mb_per_replica=spec["memory_mb_per_replica"],
        nodes=spec.get("nodes"),
        gpu_type=spec.get("gpu_type"),
        priority=spec["priority"],
        submitted_at=submitted_at,
        seq=seq,
        preemptible=bool(spec.get("preemptible")),
        time_limit_s=spec.get("time_limit_s"),
        job_type=spec.get("name", ""),
        attained_gpu_s=attained_gpu_s,
        datasets=tuple(spec.get("datasets", ())),
        template=spec.get("template", ""),
        code_hash=code_hash(spec),
        inference=inference_ask(spec),
    )


def inference_ask(spec: dict[str, Any]) -> InferenceAsk | None:
    """What an inference spec asks of the scheduling round; None for other kinds."""
    if spec.get("kind") != "inference":
        return None
    return InferenceAsk(
        model=spec["model"],
        qos=spec.get("qos") or "interactive",
        slo=Slo.from_dict(spec.get("slo")),
        gpu_type=spec.get("gpu_type"),
        gpus=int(spec.get("gpus") or 0),
    )


def code_hash(spec: dict[str, Any]) -> str:
    """SHA-256 (hex) of what the job runs as submitted: its ``code`` text (UTF-8; with its
    ``args``, if any, the JSON of both), or the JSON of its ``command`` argv. History knows
    the same job run again by it; arguments count, as in an argv: they often set the work."""
    if "code" in spec:
        args = spec.get("args") or []
        text = _json({"code": spec["code"], "args": args}) if args else spec["code"]
    elif "command" in spec:
        text = _json(spec["command"])
    else:
        return ""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _json(value: Any) -> str:
    # Python's defaults, so that ``sha256(json.dumps(argv).encode())`` gives the same hash.
    return json.dumps(value, sort_keys=True)


def parse_submission(body: bytes | str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A POST /jobs body -> (the full JobSpec, the decoded pushed values); or SpecError.

    Run off the event loop: a body with pushed values can be hundreds of megabytes.
    """
    spec = validate(parse_body(body))
    return spec, decode_inputs(spec)
