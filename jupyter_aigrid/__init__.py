"""jupyter-aigrid: a Jupyter server as the master of a shared GPU cluster."""

from __future__ import annotations

from ._version import __version__


def _jupyter_server_extension_points() -> list[dict]:
    from .server.app import AIGridApp

    return [{"module": "jupyter_aigrid", "app": AIGridApp}]


def _jupyter_labextension_paths() -> list[dict]:
    return [{"src": "labextension", "dest": "jupyter-aigrid"}]


__all__ = ["__version__"]
