"""The base-image catalog: which container image a job runs in, and how one is picked.

Entries live in the database (``images`` table), seeded once with sensible defaults and
edited by admins through ``/images``. A job that names no image gets the newest image of the
framework its template needs (``pytorch``, ``tensorflow``, ``horovod``), or the plain Python
image for ``any``.
"""

from __future__ import annotations

import re
from typing import Any

from .spec import SpecError

FIELDS = ("ref", "framework", "framework_version", "cuda", "python", "description")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+-]{0,31}$")
FRAMEWORKS = ("pytorch", "tensorflow", "horovod", "python")
#: Longest value of each field. A reference may carry a registry, a path, a tag and a digest
#: (Docker allows a 255-character name, a 128-character tag and a sha256 digest).
MAX_LENGTH = {"ref": 512, "description": 4096}
MAX_OTHER = 256
#: Control characters (C0, DEL and C1); a description may still have lines and tabs.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DESCRIPTION_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

DEFAULT_IMAGES = [
    {
        "id": "pytorch-2.13-cuda12.8",
        "ref": "pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime",
        "framework": "pytorch",
        "framework_version": "2.13.0",
        "cuda": "12.8",
        "python": "3.11",
        "description": "PyTorch with CUDA and cuDNN, for training and inference.",
    },
    {
        "id": "tensorflow-2.20-cuda12.5",
        "ref": "tensorflow/tensorflow:2.20.0-gpu",
        "framework": "tensorflow",
        "framework_version": "2.20.0",
        "cuda": "12.5",
        "python": "3.11",
        "description": "TensorFlow with GPU support, for parameter-server training.",
    },
    {
        "id": "horovod-0.28-pytorch",
        "ref": "horovod/horovod:0.28.1",
        "framework": "horovod",
        "framework_version": "0.28.1",
        "cuda": "12.1",
        "python": "3.10",
        "description": "Horovod with Open MPI, PyTorch and TensorFlow, for mpi jobs.",
    },
    {
        "id": "python-3.11",
        "ref": "python:3.11-slim",
        "framework": "python",
        "framework_version": "3.11",
        "cuda": "none",
        "python": "3.11",
        "description": "Plain Python, for jobs that bring their own libraries.",
    },
]


def check_image(image_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """A catalog entry from a request body, or SpecError naming the field."""
    if not _ID.fullmatch(image_id):
        msg = f"image id {_short(image_id)} must be 1-64 of a-z, 0-9, '.', '_', '-'"
        raise SpecError(msg, field="id")
    extra = sorted(set(body) - set(FIELDS) - {"id"})
    if extra:
        msg = f"unknown field {_short(extra[0])}; an image has: {', '.join(FIELDS)}"
        raise SpecError(msg, field=extra[0])
    entry: dict[str, Any] = {"id": image_id}
    for name in FIELDS:
        value = body.get(name, "" if name == "description" else None)
        if not isinstance(value, str) or (name != "description" and not value.strip()):
            msg = f"{name!r} must be a non-empty string"
            raise SpecError(msg, field=name)
        limit = MAX_LENGTH.get(name, MAX_OTHER)
        if len(value) > limit:
            msg = f"{name!r} is {len(value)} characters long; at most {limit} are allowed"
            raise SpecError(msg, field=name)
        control = _DESCRIPTION_CONTROL if name == "description" else _CONTROL
        if control.search(value):
            allowed = " (a description may have newlines and tabs)" if name == "description" else ""
            msg = f"{name!r} must not contain control characters{allowed}, got {_short(value)}"
            raise SpecError(msg, field=name)
        entry[name] = value.strip()
    if entry["framework"] not in FRAMEWORKS:
        msg = f"framework must be one of {', '.join(FRAMEWORKS)}, got {entry['framework']!r}"
        raise SpecError(msg, field="framework")
    for name in ("framework_version", "python"):
        if not _VERSION.fullmatch(entry[name]):
            msg = f"{name} must be a version such as 2.13.0, got {_short(entry[name])}"
            raise SpecError(msg, field=name)
    if any(c.isspace() for c in entry["ref"]):
        msg = f"ref must be an image reference such as repo/name:tag, got {_short(entry['ref'])}"
        raise SpecError(msg, field="ref")
    return entry


def _short(value: str, limit: int = 64) -> str:
    """``repr(value)``, cut short: an error message never echoes a long value back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-1]}"


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.+-]", version))


def pick_image(framework: str, images: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest catalog image for ``framework`` (``any`` means plain Python), if any."""
    wanted = "python" if framework in ("any", "") else framework
    matching = [i for i in images if i["framework"] == wanted]
    if not matching:
        return None
    return max(matching, key=lambda i: (_version_key(i["framework_version"]), i["id"]))


def resolve_image(
    named: str | None,
    framework: str,
    images: list[dict[str, Any]],
    allow_uncatalogued: bool = True,
) -> dict[str, Any]:
    """The image a job runs in: the catalog entry it names (by id or reference), any other
    reference (``repo/name:tag``) when ``allow_uncatalogued``, or the newest catalog image of
    its template's ``framework``."""
    if named:
        for entry in images:
            if named in (entry["id"], entry["ref"]):
                return {"id": entry["id"], "ref": entry["ref"]}
        if "/" in named or ":" in named:
            if any(c.isspace() for c in named):
                msg = (
                    "image must be a catalog id or a reference such as repo/name:tag, "
                    f"got {named!r}"
                )
                raise SpecError(msg, field="image")
            if not allow_uncatalogued:
                ids = ", ".join(e["id"] for e in images) or "none"
                msg = (
                    f"image {named!r} is not in the catalog, and this cluster runs catalog "
                    f"images only: name one ({ids}), or ask an admin to add it at /images"
                )
                raise SpecError(msg, field="image")
            return {"id": None, "ref": named}
        ids = ", ".join(e["id"] for e in images) or "none"
        msg = (
            f"unknown image {named!r}: give a catalog id ({ids}) or a reference such as "
            "repo/name:tag"
        )
        raise SpecError(msg, field="image")
    found = pick_image(framework, images)
    if found is None:
        msg = (
            f"the catalog has no {framework if framework != 'any' else 'python'} image for this "
            "job's template: name one with 'image', or ask an admin to add one at /images"
        )
        raise SpecError(msg, field="image")
    return {"id": found["id"], "ref": found["ref"]}
