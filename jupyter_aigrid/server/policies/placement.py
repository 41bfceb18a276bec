"""Gang placement: all replicas of a job, or none, packed onto as few nodes as possible."""

from __future__ import annotations

from ..model import NodeView, Placement, Request, Slot
from ..snapshot import Snapshot


def place_gang(req: Request, snapshot: Snapshot) -> Placement | None:
    """Place every replica of ``req`` at once, or return None (never a part of a gang).

    - A gang that fits in one node goes to one node: the best fit (fewest free GPUs left),
      preferring nodes that hold the job's datasets.
    - A gang of whole nodes' worth of GPUs (16 on 8-GPU nodes) takes whole free nodes when
      there are enough of them.
    - Otherwise (and when neither of those is possible now) the fewest nodes: the roomiest
      first, the last one the tightest that fits.
    - ``req.nodes = K`` spreads the replicas as evenly as possible over exactly K nodes.

    Best fit keeps free nodes whole for the big gangs that need them (less fragmentation).
    """
    if req.gpus > snapshot.free_gpus:
        return None
    size = snapshot.max_gpus_per_node
    if req.nodes is None and req.gpu_type is None and req.gpus > 0:
        if req.gpus <= size:
            node = _best_single_node(req, snapshot)
            if node is not None:
                return _assign(req, [(node, req.replicas)])
        elif req.gpus % size == 0:
            shares = _whole_nodes(req, snapshot, size)
            if shares is not None:
                return _assign(req, shares)
        fits = _fits(
            req,
            (
                snapshot.nodes[i]
                for k in range(size, 0, -1)
                for i in snapshot.positions_with_free(k)
            ),
        )
        shares = _pack_fewest(req, fits)
    else:
        fits = _fits(req, snapshot.nodes)
        shares = _spread_exactly(req, fits) if req.nodes is not None else _pack_fewest(req, fits)
    return None if shares is None else _assign(req, shares)


def _fits(req: Request, nodes) -> list[tuple[NodeView, int]]:
    fits = [(n, n.replicas_that_fit(req)) for n in nodes]
    return [(n, k) for n, k in fits if k > 0]


def _best_single_node(req: Request, snapshot: Snapshot) -> NodeView | None:
    local = bool(req.datasets) and bool(snapshot.data_on)
    fallback = None
    for k in range(req.gpus, snapshot.max_gpus_per_node + 1):
        for i in snapshot.positions_with_free(k):
            node = snapshot.nodes[i]
            if node.replicas_that_fit(req) < req.replicas:
                continue
            if not local or set(req.datasets) <= snapshot.data_on.get(node.name, frozenset()):
                return node
            if fallback is None:
                fallback = node
    return fallback


def _whole_nodes(req: Request, snapshot: Snapshot, size: int) -> list[tuple[NodeView, int]] | None:
    wanted = req.gpus // size
    per = req.replicas // wanted if req.replicas % wanted == 0 else None
    if per is None:
        return None
    chosen = []
    for i in snapshot.positions_with_free(size):
        node = snapshot.nodes[i]
        if len(node.gpus) == size and node.replicas_that_fit(req) >= per:
            chosen.append((node, per))
            if len(chosen) == wanted:
                return chosen
    return None


def _leftover(node: NodeView) -> tuple[int, float]:
    return (len(node.free_gpus), node.free_cpus)


def _pack_fewest(
    req: Request, fits: list[tuple[NodeView, int]]
) -> list[tuple[NodeView, int]] | None:
    if sum(k for _, k in fits) < req.replicas:
        return None
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
