"""FIFO and gang placement as plain snapshot -> decision tests."""

from __future__ import annotations

import pytest

from jupyter_aigrid.server.inventory import simulated_gpus
from jupyter_aigrid.server.model import Launch, Node, Placement, Request, Slot, Snapshot
from jupyter_aigrid.server.policies import load_policy, place_gang, schedule_round


def cluster(*gpus_per_node: int, cpus: int = 64) -> Snapshot:
    nodes = [
        Node(name=f"n{i}", gpus=tuple(simulated_gpus(f"n{i}", g)), cpus=cpus, memory_mb=1 << 20)
        for i, g in enumerate(gpus_per_node)
    ]
    return Snapshot.empty(nodes)


def req(job_id="j", replicas=1, per=1, nodes=None, seq=0, cpus=1.0, mem=0) -> Request:
    return Request(job_id, "u", replicas, per, cpus, mem, nodes=nodes, submitted_at=seq, seq=seq)


def busy(snapshot: Snapshot, node: str, *gpus: int) -> Snapshot:
    slot = Slot(0, node, 0, tuple(gpus))
    return snapshot.allocate(req("busy", per=len(gpus)), Placement((slot,)))


def test_gang_goes_to_one_node_when_it_fits_best_fit():
    snap = busy(cluster(8, 8), "n0", 0, 1, 2, 3, 4)  # n0 has 3 free, n1 has 8
    p = place_gang(req(replicas=3), snap)
    assert p is not None
    assert {s.node for s in p.slots} == {"n0"}  # the tightest node that holds it all
    assert [s.gpus for s in p.slots] == [(5,), (6,), (7,)]
    assert [(s.rank, s.local_rank) for s in p.slots] == [(0, 0), (1, 1), (2, 2)]


def test_gang_spans_the_fewest_nodes():
    snap = cluster(4, 2, 4, 1)
    p = place_gang(req(replicas=6), snap)
    assert p is not None
    per_node = {n: sum(s.node == n for s in p.slots) for n in p.nodes}
    assert len(per_node) == 2 and sorted(per_node.values()) == [2, 4]


def test_all_or_nothing():
    snap = busy(cluster(2, 2), "n1", 0)
    assert place_gang(req(replicas=4), snap) is None
    assert place_gang(req(replicas=3), snap) is not None


def test_nodes_k_spreads_over_exactly_k():
    p = place_gang(req(replicas=4, nodes=2), cluster(8, 8, 8))
    assert p is not None
    assert len(p.nodes) == 2
    assert [sum(s.node == n for s in p.slots) for n in p.nodes] == [2, 2]
    assert place_gang(req(replicas=4, nodes=4), cluster(8, 8, 8)) is None


def test_multi_gpu_replicas_and_cpu_limits():
    p = place_gang(req(replicas=2, per=2), cluster(4))
    assert p is not None and [s.gpus for s in p.slots] == [(0, 1), (2, 3)]
    # CPUs limit a node as GPUs do: two 40-CPU replicas need two 64-CPU nodes.
    assert place_gang(req(replicas=2, cpus=40), cluster(4, cpus=64)) is None
    tight = place_gang(req(replicas=2, cpus=40), cluster(4, 4, cpus=64))
    assert tight is not None and len(tight.nodes) == 2


def test_fifo_head_of_line_blocks():
    snap = cluster(4)
    queue = [req("big", replicas=8, seq=1), req("small", replicas=1, seq=2)]
    assert schedule_round(load_policy("fifo"), queue, snap) == []


def test_fifo_places_in_order_and_takes_resources_as_it_goes():
    snap = cluster(4)
    queue = [req("c", replicas=2, seq=3), req("a", replicas=2, seq=1), req("b", replicas=1, seq=2)]
    launches = schedule_round(load_policy("fifo"), queue, snap)
    assert [launch.job_id for launch in launches] == ["a", "b"]
    used = [g for launch in launches for s in launch.placement.slots for g in s.gpus]
    assert sorted(used) == [0, 1, 2]
    assert isinstance(launches[0], Launch)


def test_unknown_policy_names_the_installed_ones():
    with pytest.raises(ValueError, match=r"unknown policy 'nope'.*fifo"):
        load_policy("nope")
