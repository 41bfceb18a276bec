"""How every replica of a ``code`` job runs it: pushed values in, the code, results out.

``python -m jupyter_aigrid.runner SCRIPT [ARGS...]`` runs SCRIPT as ``python SCRIPT`` would
(``__name__ == "__main__"``, ``sys.argv``, the script's folder first on ``sys.path``), with
three additions:

- the values pushed with the job (``AIGRID_INPUTS_DIR/<name>.pkl``) are its globals;
- an uncaught exception is recorded as ``AIGRID_RESULT_DIR/rank-R.error.json`` (type,
  message, the traceback without this module's frames), so the notebook can re-raise it;
- when rank 0 ends well, the globals named in ``AIGRID_OUTPUTS`` are pickled to
  ``AIGRID_RESULT_DIR/outputs/<name>.pkl``.

Only the standard library and cloudpickle are needed, so container images can carry it alone.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any

try:
    from .safefs import write_atomic
except ImportError:  # run as a lone file inside an image
    from safefs import write_atomic  # type: ignore[no-redef]


class OutputError(Exception):
    """A value asked for with ``outputs`` (``--pull``) is missing or cannot be pickled."""


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def load_inputs(namespace: dict[str, Any]) -> None:
    folder = os.environ.get("AIGRID_INPUTS_DIR")
    if not folder or not os.path.isdir(folder):
        return
    for path in sorted(Path(folder).glob("*.pkl")):
        with open(path, "rb") as f:
            namespace[path.stem] = pickle.load(f)  # noqa: S301 (the job owner's own values)


def save_outputs(namespace: dict[str, Any]) -> None:
    names = [n for n in os.environ.get("AIGRID_OUTPUTS", "").split(",") if n]
    results = os.environ.get("AIGRID_RESULT_DIR")
    if not names or not results or _rank() != 0:
        return
    missing = [n for n in names if n not in namespace]
    if missing:
        msg = f"the code never set {', '.join(map(repr, missing))}, which the job asks to pull"
        raise OutputError(msg)
    import cloudpickle

    folder = Path(results) / "outputs"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            data = cloudpickle.dumps(namespace[name])
        except Exception as e:
            kind = type(namespace[name]).__name__
            msg = f"cannot pull {name!r}: a {kind} cannot be pickled ({e})"
            raise OutputError(msg) from e
        write_atomic(folder / f"{name}.pkl", data)


def record_error(exc: BaseException, tb) -> str:
    """Write the error record of this rank; return the traceback text."""
    text = "".join(traceback.TracebackException(type(exc), exc, tb).format())
    results = os.environ.get("AIGRID_RESULT_DIR")
    if results:
        record = {
            "time": time.time(),
            "type": type(exc).__qualname__,
            "module": type(exc).__module__,
            "message": str(exc),
            "traceback": text,
            "node": os.environ.get("AIGRID_NODE"),
        }
        folder = Path(results)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"rank-{_rank()}.error.json", json.dumps(record).encode())
    return text


def _main_module(script: str) -> dict[str, Any]:
    """A fresh ``__main__`` module for the job's code, as ``python script.py`` would have:
    classes defined there pickle, and spawned processes find their functions."""
    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    sys.modules["__main__"] = main
    return main.__dict__


def run(script: str, args: list[str]) -> int:
    source = Path(script).read_text(encoding="utf-8")
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)
    namespace = _main_module(script)
    try:
        load_inputs(namespace)
        code = compile(source, script, "exec")
    except Exception as e:
        sys.stderr.write(record_error(e, e.__traceback__))
        return 1
    try:
        exec(code, namespace)  # noqa: S102 (running the job's code is the point)
    except SystemExit as e:
        if e.code in (None, 0):  # sys.exit() after the work: still a success
            return _finish(namespace)
        raise
    except Exception as e:
        # Drop this frame: the traceback starts in the job's code.
        sys.stderr.write(record_error(e, e.__traceback__.tb_next if e.__traceback__ else None))
        return 1
    return _finish(namespace)


def _finish(namespace: dict[str, Any]) -> int:
    try:
        save_outputs(namespace)
    except OutputError as e:
        sys.stderr.write(record_error(e, None))
        return 1
    return 0


def main() -> None:
    if len(sys.argv) < 2:
        sys.stderr.write("usage: python -m jupyter_aigrid.runner SCRIPT [ARGS...]\n")
        raise SystemExit(2)
    raise SystemExit(run(sys.argv[1], sys.argv[2:]))


if __name__ == "__main__":
    main()
