"""Defragmentation: move small gangs so that a gang waiting on scattered free GPUs fits."""

from __future__ import annotations

from collections.abc import Callable, Collection

from ..model import Migrate, Placement, Request
from ..snapshot import Snapshot
from .placement import place_gang


def defragment(
    waiting: Request,
    snapshot: Snapshot,
    movable: Collection[str],
    place: Callable[[Request, Snapshot], Placement | None] = place_gang,
) -> list[Migrate]:
    """Migrations that free one node enough for ``waiting``, which does not fit now although
    the cluster has as many free GPUs as it needs; [] when there is no such move.

    Only gangs in ``movable`` move, and only gangs that run on one node; the node to clear is
    the one that holds the fewest of their GPUs. Each gang goes where ``place`` puts it on the
    other nodes.
    """
    if waiting.gpus == 0 or waiting.gpus > snapshot.free_gpus:
        return []
    if place(waiting, snapshot) is not None:
        return []
    candidates = []
    for node in snapshot.nodes:
        gangs = [g for g in snapshot.running.values() if node.name in g.placement.nodes]
        if gangs and all(
            g.request.job_id in movable and g.placement.nodes == (node.name,) for g in gangs
        ):
            candidates.append((sum(g.request.gpus for g in gangs), node.name, gangs))
    for _, name, gangs in sorted(candidates, key=lambda c: (c[0], c[1])):
        cleared = snapshot
        for g in gangs:
            cleared = cleared.release(g.request.job_id)
        elsewhere = Snapshot(
            nodes=tuple(v for v in cleared.nodes if v.name != name),
            data_on=cleared.data_on,
            dataset_bytes=cleared.dataset_bytes,
        )
        moves = []
        for g in sorted(gangs, key=lambda g: -g.request.gpus):
            target = place(g.request, elsewhere)
            if target is None:
                break
            elsewhere = elsewhere.allocate(g.request, target)
            moves.append((g.request, target))
        else:
            after = cleared
            for request, target in moves:
                after = after.allocate(request, target)
            if place(waiting, after) is not None:
                reason = f"defragmentation for job {waiting.job_id}"
                return [Migrate(r.job_id, t, reason) for r, t in moves]
    return []
