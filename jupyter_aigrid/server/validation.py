"""Request bodies checked against the schemas we ship, with errors that name the field.

Every request body is checked against its component in ``schemas/openapi.yaml`` (the
document ``GET /openapi.yaml`` serves): the job description against ``JobSpec`` (by
:mod:`.spec`, which adds the rules a schema cannot say), the others by :func:`validate_body`.
A failure is a :class:`SpecError` whose ``field`` is the dotted path of the first offending
field and whose message says what is allowed; a schema may give that in an ``x-invalid``
keyword ("must be a version such as 2.13.0"), used for a failed ``pattern`` or ``minLength``.

Patterns match as JSON Schema (ECMA 262) means them: a final ``$`` is the end of the text.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files
from typing import Any

import jsonschema
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT202012

#: The URI the OpenAPI document is registered under, for its ``#/components/...`` refs.
OPENAPI_URI = "urn:jupyter-aigrid:openapi"

#: The schema's pattern for text without control characters.
NO_CONTROL = "^[^\\u0000-\\u001f\\u007f]*$"
#: Longest value echoed back in an error message.
ECHO = 64


class SpecError(ValueError):
    """A job description is wrong. ``field`` is the dotted path of the offending field."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


@cache
def _exact(pattern: str) -> re.Pattern[str]:
    """``pattern`` as JSON Schema (ECMA 262) means it: a final ``$`` is the end of the text.

    Python's ``$`` also matches before a trailing newline, so ``"FOO\\n"`` would pass
    ``^[A-Za-z_][A-Za-z0-9_]*$``; ``\\Z`` does not.
    """
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Any:
    if validator.is_type(instance, "string") and not _exact(pattern).search(instance):
        yield jsonschema.ValidationError(f"{short(instance)} does not match {pattern!r}")


def short(value: Any) -> str:
    """``repr(value)``, cut short: an error message never echoes a megabyte back."""
    text = repr(value)
    return text if len(text) <= ECHO else f"{text[: ECHO - 5]}...{text[-1]}"


def _is_property_name(error: jsonschema.ValidationError) -> bool:
    return len(error.relative_schema_path) >= 2 and (
        error.relative_schema_path[-2] == "propertyNames"
    )


def field_of(error: jsonschema.ValidationError) -> str | None:
    path = [str(p) for p in error.absolute_path]
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [p for p in error.validator_value if p not in error.instance]
        path.extend(missing[:1])
    elif error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        if extra:
            path.append(extra[0])
    elif _is_property_name(error) and len(str(error.instance)) <= ECHO:
        path.append(str(error.instance))
    return ".".join(path) or None


def message_of(error: jsonschema.ValidationError, field: str | None, what: str) -> str:
    """A message for ``error`` that names ``field`` (or ``what``, the whole body)."""
    kind, limit, value = error.validator, error.validator_value, error.instance
    if kind == "required" and field:
        return f"{field!r} is required"
    if kind == "additionalProperties" and field:
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown field {short(field)}; allowed fields are: {allowed}"
    if _is_property_name(error):
        parent = ".".join(str(p) for p in error.absolute_path)
        names = {"env": "environment variable name", "inputs": "input name"}
        what = names.get(parent, f"name in {parent!r}")
        if kind == "maxLength":
            return (
                f"{what} {short(value)} is {len(value)} characters long; "
                f"at most {limit} are allowed"
            )
        return f"{what} {short(value)} must match [A-Za-z_][A-Za-z0-9_]*"
    where = f"{field!r}" if field else what
    invalid = error.schema.get("x-invalid") if isinstance(error.schema, dict) else None
    if invalid and kind in ("pattern", "minLength", "format"):
        return f"{where} {invalid}, got {short(value)}"
    if kind == "maxLength":
        return f"{where} is {len(value)} characters long; at most {limit} are allowed"
    if kind == "maxItems":
        return f"{where} has {len(value)} items; at most {limit} are allowed"
    if kind == "maxProperties":
        return f"{where} has {len(value)} entries; at most {limit} are allowed"
    if kind == "pattern" and limit == NO_CONTROL:
        return (
            f"{where} must not contain control characters (newline, tab, ...), got {short(value)}"
        )
    if kind == "pattern":
        return f"{where} must match {limit}, got {short(value)}"
    if kind == "type":
        return f"{where}: {short(value)} is not of type {limit!r}"
    if len(error.message) > 4 * ECHO:
        return f"{where} fails {kind} {short(limit)}, got {short(value)}"
    return f"{where}: {error.message}"


def exact_validator(schema: dict[str, Any], registry: Registry | None = None):
    """A validator for ``schema`` (its declared draft) whose patterns match exactly."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    exact = jsonschema.validators.extend(cls, {"pattern": _pattern})
    return exact(schema, registry=registry) if registry is not None else exact(schema)


def first_error(validator: Any, instance: Any, what: str) -> SpecError | None:
    """The error a client should fix first (the shallowest, most relevant), or None."""
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), e.path))
    if not errors:
        return None
    error = jsonschema.exceptions.best_match(errors)
    field = field_of(error)
    return SpecError(message_of(error, field, what), field=field)


@cache
def openapi() -> dict[str, Any]:
    text = files("jupyter_aigrid.server").joinpath("schemas/openapi.yaml").read_text()
    return yaml.safe_load(text)


@cache
def _component_validator(component: str) -> Any:
    doc = openapi()
    if component not in doc["components"]["schemas"]:
        raise KeyError(f"openapi.yaml has no schema {component!r}")
    registry = Registry().with_resource(OPENAPI_URI, DRAFT202012.create_resource(doc))
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": f"{OPENAPI_URI}#/components/schemas/{component}",
    }
    return exact_validator(schema, registry)


def validate_body(component: str, body: Any, what: str = "the request body") -> None:
    """Raise :class:`SpecError` unless ``body`` is valid against ``component``."""
    error = first_error(_component_validator(component), body, what)
    if error is not None:
        raise error
