"""The registry of policies: the built-in ones and those installed under the entry point
group ``jupyter_aigrid.policies``. It only finds and instantiates them."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from .base import Policy

ENTRY_POINT_GROUP = "jupyter_aigrid.policies"

#: Built-in policies: name -> "module:class" under this package (imported when loaded).
BUILTIN = {
    "fifo": "fifo:FifoPolicy",
    "priority": "priority:PriorityPolicy",
    "fairshare": "fairshare:FairSharePolicy",
    "las": "las:LasPolicy",
    "backfill": "backfill:BackfillPolicy",
    "srtf": "srtf:SrtfPolicy",
    "aigrid": "aigrid:AIGridPolicy",
}


def available_policies() -> dict[str, object]:
    """Name -> entry point of every installed policy (built-in ones come in the same way)."""
    found: dict[str, object] = dict(BUILTIN)
    found.update({ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)})
    return found


def load_policy(name: str, **options: Any) -> Policy:
    """Instantiate the policy registered as ``name`` with ``options``."""
    found = available_policies()
    if name not in found:
        msg = f"unknown policy {name!r}; installed policies: {', '.join(sorted(found))}"
        raise ValueError(msg)
    entry = found[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        cls = getattr(import_module(f"{__package__}.{module}"), attr)
    else:
        cls = entry.load()  # type: ignore[attr-defined]
    return cls(**options)
