"""The master and its components (see :mod:`.loop`)."""

from .loop import Master

__all__ = ["Master"]
