"""The base-image catalog: seeded, read by everyone, edited by admins, and picked by framework."""

from __future__ import annotations

import pytest

from jupyter_aigrid.server.images import DEFAULT_IMAGES, check_image, pick_image, resolve_image
from jupyter_aigrid.server.spec import SpecError

NEW = {
    "id": "pytorch-2.14-cuda13",
    "ref": "registry.local/pytorch:2.14.0-cuda13",
    "framework": "pytorch",
    "framework_version": "2.14.0",
    "cuda": "13.0",
    "python": "3.12",
    "description": "next year's",
}


async def test_the_catalog_is_seeded_and_edited(api):
    listed = (await api.call("GET", "images"))["images"]
    assert {i["id"] for i in listed} == {i["id"] for i in DEFAULT_IMAGES}
    created = await api.call("POST", "images", body=NEW, raw=True)
    assert created.code == 201
    assert created.headers["Location"].endswith("/aigrid/api/images/pytorch-2.14-cuda13")
    assert (await api.call("GET", "images", NEW["id"]))["ref"] == NEW["ref"]
    changed = await api.call("PUT", "images", NEW["id"], body={**NEW, "python": "3.13"})
    assert changed["python"] == "3.13" and changed["updated_at"]
    from test_openapi import assert_exact_keys, assert_valid

    for image in [changed, *listed]:
        assert_exact_keys("Image", image)
        assert_valid("Image", image)
    # The newest PyTorch image is now the one a PyTorch job without an image would get.
    images = (await api.call("GET", "images"))["images"]
    assert pick_image("pytorch", images)["id"] == NEW["id"]
    assert pick_image("any", images)["id"] == "python-3.11"
    assert pick_image("jax", images) is None
    assert (await api.call("DELETE", "images", NEW["id"]))["deleted"] == NEW["id"]
    status, _ = await api.error("GET", "images", NEW["id"])
    assert status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**NEW, "id": "Bad Id"}, "id"),
        ({**NEW, "ref": ""}, "ref"),
        ({**NEW, "ref": "a b"}, "ref"),
        ({**NEW, "framework": "jax"}, "framework"),
        ({**NEW, "framework_version": "latest"}, "framework_version"),
        ({**NEW, "privileged": True}, "privileged"),
        ({k: v for k, v in NEW.items() if k != "cuda"}, "cuda"),
    ],
)
async def test_bad_entries_name_the_field(api, body, field):
    status, error = await api.error("POST", "images", body=body)
    assert (status, error["field"]) == (400, field)


async def test_conflicts_and_mismatches(api):
    status, error = await api.error("POST", "images", body={**NEW, "id": "python-3.11"})
    assert status == 409 and "PUT /images/python-3.11" in error["message"]
    status, error = await api.error("PUT", "images", "other", body=NEW)
    assert (status, error["field"]) == (400, "id")
    status, _ = await api.error("DELETE", "images", "nope")
    assert status == 404


def test_resolving_a_jobs_image_by_id_reference_or_framework():
    assert resolve_image("python-3.11", "pytorch", DEFAULT_IMAGES) == {
        "id": "python-3.11", "ref": "python:3.11-slim"
    }  # fmt: skip
    assert resolve_image("me/mine:1", "pytorch", DEFAULT_IMAGES) == {"id": None, "ref": "me/mine:1"}
    # A cluster that runs catalog images only: a catalog reference is its entry, others no.
    assert resolve_image("python:3.11-slim", "any", DEFAULT_IMAGES, False)["id"] == "python-3.11"
    with pytest.raises(SpecError, match="not in the catalog") as info:
        resolve_image("me/mine:1", "pytorch", DEFAULT_IMAGES, allow_uncatalogued=False)
    assert info.value.field == "image"
    assert resolve_image(None, "pytorch", DEFAULT_IMAGES)["id"] == "pytorch-2.13-cuda12.8"
    assert resolve_image(None, "any", DEFAULT_IMAGES)["id"] == "python-3.11"
    with pytest.raises(SpecError, match="unknown image 'nope': give a catalog id") as info:
        resolve_image("nope", "pytorch", DEFAULT_IMAGES)
    assert info.value.field == "image"
    with pytest.raises(SpecError, match="catalog has no tensorflow image") as info:
        resolve_image(
            None, "tensorflow", [i for i in DEFAULT_IMAGES if i["framework"] != "tensorflow"]
        )
    assert info.value.field == "image"


# -- limits: every field bounded, no control characters ------------------------------------

IMAGE = {k: v for k, v in NEW.items() if k != "id"}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"ref": "python:3.11\x00evil"}, "ref", "control characters"),
        ({"ref": "python:3.11\n"}, "ref", "control characters"),
        ({"ref": "r/" + "x" * 600}, "ref", "at most 512"),
        ({"cuda": "12.8\x00"}, "cuda", "control characters"),
        ({"cuda": "1" * 257}, "cuda", "at most 256"),
        ({"framework_version": "2.13.0\n"}, "framework_version", "control characters"),
        ({"python": "3.11\n"}, "python", "control characters"),
        ({"python": "3" * 40}, "python", "version such as"),
        ({"description": "d" * 4097}, "description", "at most 4096"),
        ({"description": "bell\x07"}, "description", "control characters"),
    ],
)
def test_bad_image_fields_are_refused(change, field, words):
    with pytest.raises(SpecError) as info:
        check_image("img", {**IMAGE, **change})
    assert (info.value.field, info.value.status) == (field, 400)
    assert words in info.value.message and len(info.value.message) < 400


def test_image_ids_match_whole():
    with pytest.raises(SpecError) as info:
        check_image("img\n", IMAGE)
    assert info.value.field == "id"


def test_a_description_may_have_lines():
    entry = check_image("img", {**IMAGE, "description": "line one\n\tline two"})
    assert entry["description"] == "line one\n\tline two"


async def test_the_catalog_api_refuses_a_nul(api):
    body = {**IMAGE, "id": "img", "ref": "python:3.11\x00"}
    status, error = await api.error("POST", "images", body=body)
    assert (status, error["field"]) == (400, "ref")
