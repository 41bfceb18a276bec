"""Gang placement: all replicas of a job, or none, packed onto as few nodes as possible."""

from __future__ import annotations

from collections.abc import Callable

from ..model import NodeView, Placement, Request, Slot
from ..snapshot import Snapshot


def place_gang(req: Request, snapshot: Snapshot) -> Placement | None:
    """Place every replica of ``req`` at once, or return None (never a part of a gang).

    - A gang that fits in one node goes to one node: the best fit (fewest free GPUs left).
    - A gang of whole nodes' worth of GPUs (16 on 8-GPU nodes) takes whole free nodes when
      there are enough of them.
    - Otherwise (and when neither of those is possible now) the fewest nodes: the roomiest
      first, the last one the tightest that fits.
    - ``req.nodes = K`` spreads the replicas as evenly as possible over exactly K nodes.

    Best fit keeps free nodes whole for the big gangs that need them (less fragmentation).

    Data locality breaks ties, and only ties. Among the placements that the rules above rank
    equal for the queue (for each node taken: as many replicas and as many free GPUs; any
    whole free nodes) the one with the most bytes of ``req.datasets`` already on its nodes
    (:meth:`Snapshot.locality`) wins; free CPUs and node names come after. That is what
    "does not hurt the queue" means here: locality never makes a gang wait, never takes a
    roomier node than best fit would (so never breaks up a whole free node to reach data),
    and leaves the same free GPUs per node, as a multiset, as the data-blind placement, so
    every gang that could start after the one placed still can. ``place`` sees one gang and
    not the queue, so it cannot tell whether the GPUs a roomier data node would give up are
    the ones a waiting gang needs; a tie-break is the preference that costs the queue nothing
    whatever is waiting. With no datasets, or an empty ``data_on``, decisions are exactly
    the data-blind ones.
    """
    if req.gpus > snapshot.free_gpus:
        return None
    size = snapshot.max_gpus_per_node
    local = _locality(req, snapshot)
    if req.nodes is None and req.gpu_type is None and req.gpus > 0:
        if req.gpus <= size:
            node = _best_single_node(req, snapshot, local)
            if node is not None:
                return _assign(req, [(node, req.replicas)])
        elif req.gpus % size == 0:
            shares = _whole_nodes(req, snapshot, size, local)
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
        shares = _pack_fewest(req, fits, local)
    else:
        fits = _fits(req, snapshot.nodes)
        shares = (
            _spread_exactly(req, fits, local)
            if req.nodes is not None
            else _pack_fewest(req, fits, local)
        )
    return None if shares is None else _assign(req, shares)


#: A node's locality score for the gang being placed (bytes of its data already there).
Locality = Callable[[NodeView], int]


def _no_data(node: NodeView) -> int:
    return 0


def _locality(req: Request, snapshot: Snapshot) -> Locality:
    if not req.datasets or not snapshot.data_on:
        return _no_data
    return lambda node: snapshot.locality(req, node.name)


def _fits(req: Request, nodes) -> list[tuple[NodeView, int]]:
    fits = [(n, n.replicas_that_fit(req)) for n in nodes]
    return [(n, k) for n, k in fits if k > 0]


def _best_single_node(req: Request, snapshot: Snapshot, local: Locality) -> NodeView | None:
    """The tightest node that takes the whole gang; among equally tight ones, the most
    local (then the first in node order)."""
    for k in range(req.gpus, snapshot.max_gpus_per_node + 1):
        best, most = None, -1
        for i in snapshot.positions_with_free(k):
            node = snapshot.nodes[i]
            if node.replicas_that_fit(req) < req.replicas:
                continue
            if local is _no_data:
                return node
            score = local(node)
            if score > most:
                best, most = node, score
        if best is not None:
            return best
    return None


def _whole_nodes(
    req: Request, snapshot: Snapshot, size: int, local: Locality
) -> list[tuple[NodeView, int]] | None:
    wanted = req.gpus // size
    per = req.replicas // wanted if req.replicas % wanted == 0 else None
    if per is None:
        return None
    chosen = []
    for i in snapshot.positions_with_free(size):
        node = snapshot.nodes[i]
        if len(node.gpus) == size and node.replicas_that_fit(req) >= per:
            chosen.append((node, per))
            if len(chosen) == wanted and local is _no_data:
                return chosen
    if len(chosen) < wanted:
        return None
    # Any whole free node is as good as another for the queue: take the most local ones,
    # kept in node order (ranks land as they would without data).
    most_local = sorted(range(len(chosen)), key=lambda j: -local(chosen[j][0]))[:wanted]
    return [chosen[j] for j in sorted(most_local)]


def _pack_fewest(
    req: Request, fits: list[tuple[NodeView, int]], local: Locality
) -> list[tuple[NodeView, int]] | None:
    if sum(k for _, k in fits) < req.replicas:
        return None
    whole = [(n, k) for n, k in fits if k >= req.replicas]
    if whole:
        best = min(whole, key=lambda nk: _tightest(nk[0], local))
        return [(best[0], req.replicas)]
    roomiest = _roomiest(fits, local)
    chosen: list[tuple[NodeView, int]] = []
    left = req.replicas
    for i, (node, k) in enumerate(roomiest):
        if k >= left:
            # Tightest node among the rest that still takes the remainder.
            rest = [(n, m) for n, m in roomiest[i:] if m >= left]
            tight = min(rest, key=lambda nk: (nk[1], *_tightest(nk[0], local)))
            chosen.append((tight[0], left))
            return chosen
        chosen.append((node, k))
        left -= k
    return None


def _roomiest(fits: list[tuple[NodeView, int]], local: Locality) -> list[tuple[NodeView, int]]:
    """Nodes by replicas that fit, most first, then by name; then, within each set of nodes
    that take as many replicas and have as many free GPUs, the most local take the first of
    that set's places (so a placement that takes a prefix leaves the same free GPUs)."""
    order = sorted(fits, key=lambda nk: (-nk[1], nk[0].name))
    if local is _no_data:
        return order
    places: dict[tuple[int, int], list[int]] = {}
    for i, (node, k) in enumerate(order):
        places.setdefault((k, len(node.free_gpus)), []).append(i)
    out = list(order)
    for where in places.values():
        alike = sorted((order[i] for i in where), key=lambda nk: (-local(nk[0]), nk[0].name))
        for i, nk in zip(where, alike, strict=True):
            out[i] = nk
    return out


def _tightest(node: NodeView, local: Locality) -> tuple[int, int, float, str]:
    """Best-fit order: fewest free GPUs, then the most local, fewest free CPUs, name."""
    return (len(node.free_gpus), -local(node), node.free_cpus, node.name)


def _spread_exactly(
    req: Request, fits: list[tuple[NodeView, int]], local: Locality
) -> list[tuple[NodeView, int]] | None:
    k_nodes = req.nodes or 1
    if k_nodes > req.replicas or len(fits) < k_nodes:
        return None
    base, extra = divmod(req.replicas, k_nodes)
    roomiest = _roomiest(fits, local)[:k_nodes]
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
