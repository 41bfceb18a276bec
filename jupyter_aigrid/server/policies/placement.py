"""Gang placement: all replicas of a job, or none, packed onto as few nodes as possible."""

from __future__ import annotations

from ..model import NodeView, Placement, Request, Slot, Snapshot


def place_gang(req: Request, snapshot: Snapshot) -> Placement | None:
    """Place every replica of ``req`` at once, or return None.

    Without ``req.nodes`` the gang goes to the fewest nodes: one node when one can take it
    (the one left with the fewest free GPUs, i.e. best fit), else the roomiest nodes first,
    with the last one chosen as the tightest that still fits the remainder. With
    ``req.nodes = K`` the replicas are spread as evenly as possible over exactly K nodes.
    """
    fits = [(n, n.replicas_that_fit(req)) for n in snapshot.nodes]
    fits = [(n, k) for n, k in fits if k > 0]
    shares = _spread_exactly(req, fits) if req.nodes is not None else _pack_fewest(req, fits)
    if shares is None:
        return None
    return _assign(req, shares)


def _leftover(node: NodeView) -> tuple[int, float]:
    return (len(node.free_gpus), node.free_cpus)


def _pack_fewest(
    req: Request, fits: list[tuple[NodeView, int]]
) -> list[tuple[NodeView, int]] | None:
    whole = [(n, k) for n, k in fits if k >= req.replicas]
    if whole:
        best = min(whole, key=lambda nk: (_leftover(nk[0]), nk[0].name))
        return [(best[0], req.replicas)]
    roomiest = sorted(fits, key=lambda nk: (-nk[1], nk[0].name))
    chosen: list[tuple[NodeView, int]] = []
    left = req.replicas
    for i, (node, k) in enumerate(roomiest):
        if k >= left:
            # Tightest node among the rest that still takes the remainder.
            rest = [(n, m) for n, m in roomiest[i:] if m >= left]
            tight = min(rest, key=lambda nk: (nk[1], _leftover(nk[0]), nk[0].name))
            chosen.append((tight[0], left))
            return chosen
        chosen.append((node, k))
        left -= k
    return None


def _spread_exactly(
    req: Request, fits: list[tuple[NodeView, int]]
) -> list[tuple[NodeView, int]] | None:
    k_nodes = req.nodes or 1
    if k_nodes > req.replicas or len(fits) < k_nodes:
        return None
    base, extra = divmod(req.replicas, k_nodes)
    roomiest = sorted(fits, key=lambda nk: (-nk[1], nk[0].name))[:k_nodes]
    shares = [base + (1 if i < extra else 0) for i in range(k_nodes)]
    if any(k < share for (_, k), share in zip(roomiest, shares, strict=True)):
        return None
    # Keep node order stable by name so rank 0 lands on a predictable node.
    pairs = [(n, share) for (n, _), share in zip(roomiest, shares, strict=True)]
    return pairs


def _assign(req: Request, shares: list[tuple[NodeView, int]]) -> Placement:
    slots: list[Slot] = []
    rank = 0
    for node, count in shares:
        free = node.free_gpu_indices(req.gpu_type)
        for local_rank in range(count):
            start = local_rank * req.gpus_per_replica
            gpus = tuple(free[start : start + req.gpus_per_replica])
            slots.append(Slot(rank=rank, node=node.name, local_rank=local_rank, gpus=gpus))
            rank += 1
    return Placement(tuple(slots))


def describe_capacity(snapshot: Snapshot) -> str:
    """Human words for what a cluster has, used in 'unschedulable' errors."""
    parts = []
    for n in snapshot.nodes:
        kinds: dict[str, int] = {}
        for g in n.gpus:
            label = f"{g.model} (simulated)" if g.simulated else g.model
            kinds[label] = kinds.get(label, 0) + 1
        gpus = ", ".join(f"{c} x {m}" for m, c in kinds.items()) or "no GPUs"
        parts.append(f"{n.name}: {gpus}, {n.cpus} CPUs, {n.memory_mb} MB")
    total = sum(len(n.gpus) for n in snapshot.nodes)
    return f"{total} GPUs on {len(snapshot.nodes)} node(s) [" + "; ".join(parts) + "]"
