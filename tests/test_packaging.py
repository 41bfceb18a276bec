"""Installing the package enables the server extension and the JupyterLab extension."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # restarts servers / installs the package: not the fast lane


def _jupyter(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return proc.stdout + proc.stderr


def test_server_extension_enabled_by_install():
    out = _jupyter("server", "extension", "list")
    line = next(line for line in out.splitlines() if "jupyter_aigrid" in line)
    assert "enabled" in line


def test_labextension_installed():
    out = _jupyter("labextension", "list")
    assert any(
        "jupyter-aigrid" in line and "enabled" in line and "OK" in line for line in out.splitlines()
    )
