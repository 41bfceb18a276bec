"""What the kernel-side client modules share: the error a refused or failed request becomes,
and the size of the chunks files travel in. No imports of our own, so ``client`` and
``uploading`` both build on it."""

from __future__ import annotations

#: Bytes per ``PUT /uploads/{id}/data`` (the master takes at most 64 MiB).
CHUNK_BYTES = 8 * 2**20


class AIGridError(RuntimeError):
    """The master refused a request (``status``), or could not be reached (``status`` 0)."""

    def __init__(self, message: str, status: int = 0, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field

    def __str__(self) -> str:
        return f"{self.message} (field: {self.field})" if self.field else self.message
