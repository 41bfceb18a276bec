"""jupyter-aigrid: a Jupyter server as the master of a shared GPU cluster."""

from __future__ import annotations

from ._version import __version__


def _jupyter_server_extension_points() -> list[dict]:
    from .server.app import AIGridApp

    return [{"module": "jupyter_aigrid", "app": AIGridApp}]


def _jupyter_labextension_paths() -> list[dict]:
    return [{"src": "labextension", "dest": "jupyter-aigrid"}]


def load_ipython_extension(ipython) -> None:
    """``%load_ext jupyter_aigrid``: registers ``%%aigrid`` and ``%aigrid``."""
    from .magics import load_ipython_extension as load

    load(ipython)


__all__ = ["__version__", "load_ipython_extension"]
