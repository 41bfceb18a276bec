"""What the master refuses with, apart from a bad request body (:class:`.spec.SpecError`)."""

from __future__ import annotations


class NotFound(LookupError):
    """No such job (dataset, image, upload), or not one the caller may see: 404."""


class Conflict(RuntimeError):
    """The job (dataset, upload) is not in a state that allows the request: 409."""
