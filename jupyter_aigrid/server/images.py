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
from .validation import validate_body

#: What an entry has besides its id. Their rules (lengths, no control characters, versions,
#: frameworks) are ``ImageInput`` in ``schemas/openapi.yaml``. A reference may carry a
#: registry, a path, a tag and a digest: up to 512 characters.
FIELDS = ("ref", "framework", "framework_version", "cuda", "python", "description")

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
    """A catalog entry from a request body, or SpecError naming the field: the body is
    checked against ``ImageInput`` in ``openapi.yaml`` (the one statement of the rules)."""
    validate_body("ImageInput", {**body, "id": image_id}, "the image")
    entry: dict[str, Any] = {"id": image_id}
    for name in FIELDS:
        entry[name] = body.get(name, "").strip()
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
