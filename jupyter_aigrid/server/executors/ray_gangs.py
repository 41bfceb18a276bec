"""Gang reservation on Ray: one placement group per gang, each bundle on its rank's node.

Our policy has chosen a node for every rank; Ray's placement group reserves them all at once
(a gang starts whole or not at all), each bundle pinned to its node by the ``ray.io/node-id``
label selector, and checked to have landed exactly there. The group is detached and named
after the gang, so a restarted master finds it again; it is removed once none of the gang's
replicas runs.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..model import Slot
from .base import ExecutorError

#: How long a gang's placement group may take to be reserved before its start fails.
PLACEMENT_TIMEOUT_S = 60.0


def gang_name(job_key: str, attempt: int) -> str:
    """``aigrid-<job key>-<attempt>``: the placement group's name."""
    return f"aigrid-{job_key}-{attempt}"


def bundle_of(gpus: int) -> dict[str, float]:
    """A rank's bundle: its GPUs and a sliver of CPU, or one CPU when it has no GPU."""
    return {"GPU": float(gpus), "CPU": 0.01} if gpus else {"CPU": 1.0}


class GangReservations:
    """The placement groups of the gangs that run, by gang name.

    Parameters
    ----------
    node_ids
        Node name -> Ray node id of the nodes alive; the executor keeps it current.
    """

    def __init__(self, node_ids: dict[str, str]) -> None:
        self._node_ids = node_ids
        #: Gang name -> placement group.
        self.groups: dict[str, Any] = {}
        #: Gang name -> rank -> (bundle index, bundle).
        self._bundles: dict[str, dict[int, tuple[int, dict[str, float]]]] = {}

    def reserve(self, name: str, slots: tuple[Slot, ...]) -> None:
        """Reserve the gang's bundles, each on the node its slot names, all at once;
        ExecutorError if Ray cannot, or puts one elsewhere. A gang reserved already is kept."""
        from ray.util.placement_group import placement_group, placement_group_table

        if name in self.groups:
            return
        unknown = sorted({s.node for s in slots} - set(self._node_ids))
        if unknown:
            msg = f"no Ray node named {', '.join(unknown)}"
            raise ExecutorError(msg)
        bundles = [bundle_of(len(s.gpus)) for s in slots]
        pg = placement_group(
            bundles,
            strategy="PACK",
            name=name,
            lifetime="detached",
            bundle_label_selector=[{"ray.io/node-id": self._node_ids[s.node]} for s in slots],
        )
        if not pg.wait(timeout_seconds=PLACEMENT_TIMEOUT_S):
            _remove(pg)
            msg = f"Ray could not reserve the gang's resources within {PLACEMENT_TIMEOUT_S:g} s"
            raise ExecutorError(msg)
        landed = placement_group_table(pg).get("bundles_to_node_id") or {}
        wanted = {i: self._node_ids[s.node] for i, s in enumerate(slots)}
        if {int(i): n for i, n in landed.items()} != wanted:
            _remove(pg)
            msg = f"Ray placed the gang's bundles elsewhere than asked: {landed} for {wanted}"
            raise ExecutorError(msg)
        self.groups[name] = pg
        self._bundles[name] = {s.rank: (i, bundles[i]) for i, s in enumerate(slots)}

    def bundle(self, name: str, rank: int) -> tuple[Any, int, dict[str, float]]:
        """Rank ``rank``'s placement group, bundle index and bundle (ExecutorError if the
        gang was not reserved)."""
        pg = self.groups.get(name)
        if pg is None or rank not in self._bundles.get(name, {}):
            msg = f"rank {rank}'s gang has no placement group (prepare_gang first)"
            raise ExecutorError(msg)
        index, bundle = self._bundles[name][rank]
        return pg, index, bundle

    def adopt(self, name: str) -> None:
        """After a master restart: take back the gang's group, if Ray still has it."""
        from ray.util.placement_group import get_placement_group

        if name not in self.groups:
            with contextlib.suppress(ValueError):
                self.groups[name] = get_placement_group(name)

    def release(self, name: str) -> None:
        """The gang no longer runs: its placement group goes."""
        pg = self.groups.pop(name, None)
        self._bundles.pop(name, None)
        if pg is not None:
            _remove(pg)


def _remove(pg: Any) -> None:
    from ray.util.placement_group import remove_placement_group

    with contextlib.suppress(Exception):
        remove_placement_group(pg)
