"""Policies and gang placement as plain snapshot -> decision tests, with known answers."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from jupyter_aigrid.server.history import History
from jupyter_aigrid.server.inventory import simulated_gpus
from jupyter_aigrid.server.master.queue import run_time_s
from jupyter_aigrid.server.model import Launch, Node, Placement, Request, Slot
from jupyter_aigrid.server.policies import load_policy, place_gang, schedule_round
from jupyter_aigrid.server.policies.backfill import remaining_s, reservation
from jupyter_aigrid.server.records import Job
from jupyter_aigrid.server.snapshot import Snapshot
from jupyter_aigrid.sim import Simulator, TraceJob, make_nodes


def cluster(*gpus_per_node: int, cpus: int = 64) -> Snapshot:
    nodes = [
        Node(name=f"n{i}", gpus=tuple(simulated_gpus(f"n{i}", g)), cpus=cpus, memory_mb=1 << 20)
        for i, g in enumerate(gpus_per_node)
    ]
    return Snapshot.empty(nodes)


def req(job_id="j", replicas=1, per=1, nodes=None, seq=0, cpus=1.0, mem=0, **kw) -> Request:
    return Request(
        job_id, kw.pop("owner", "u"), replicas, per, cpus, mem, nodes=nodes,
        submitted_at=kw.pop("submitted_at", seq), seq=seq, **kw,
    )  # fmt: skip


def busy(snapshot: Snapshot, node: str, *gpus: int, job_id="busy", **kw) -> Snapshot:
    slots = tuple(Slot(i, node, i, (g,)) for i, g in enumerate(gpus))
    return snapshot.allocate(req(job_id, replicas=len(gpus), **kw), Placement(slots))


# -- gang placement -----------------------------------------------------------------------------


@pytest.mark.parametrize(("cpus", "share", "fit"), [(2, 0.01, 200), (3, 0.1, 30), (1, 0.3, 3)])
def test_fractional_cpu_replicas_that_fit_are_counted_whole(cpus, share, fit):
    """200 replicas of 0.01 CPU fit on 2 CPUs (2 // 0.01 is 199.0 in floats); one more does
    not, and a gang of exactly that many is placed on a CPU-only node."""
    snap = cluster(0, cpus=cpus)
    view = snap.node("n0")
    assert view.replicas_that_fit(req(replicas=fit + 1, per=0, cpus=share)) == fit
    placed = place_gang(req(replicas=fit, per=0, cpus=share), snap)
    assert placed is not None and len(placed.slots) == fit
    assert place_gang(req(replicas=fit + 1, per=0, cpus=share), snap) is None
    # And after a third of it is taken, what is left is counted just as exactly.
    third = place_gang(req("a", replicas=fit // 3, per=0, cpus=share), snap)
    left = snap.allocate(req("a", replicas=fit // 3, per=0, cpus=share), third)
    assert left.node("n0").replicas_that_fit(req(replicas=fit, per=0, cpus=share)) == (
        fit - fit // 3
    )


def test_gang_goes_to_one_node_when_it_fits_best_fit():
    snap = busy(cluster(8, 8), "n0", 0, 1, 2, 3, 4)  # n0 has 3 free, n1 has 8
    p = place_gang(req(replicas=3), snap)
    assert p is not None
    assert {s.node for s in p.slots} == {"n0"}  # the tightest node that holds it all
    assert [s.gpus for s in p.slots] == [(5,), (6,), (7,)]
    assert [(s.rank, s.local_rank) for s in p.slots] == [(0, 0), (1, 1), (2, 2)]


def test_best_fit_keeps_whole_nodes_for_big_gangs():
    snap = busy(cluster(8, 8, 8), "n1", 0, 1, 2)  # n1: 5 free
    small = place_gang(req(replicas=2), snap)
    assert {s.node for s in small.slots} == {"n1"}  # not a fresh node
    snap = snap.allocate(req("small", replicas=2), small)
    big = place_gang(req(replicas=16), snap)
    assert big is not None and set(big.nodes) == {"n0", "n2"}  # two whole nodes


def test_eight_or_fewer_on_one_node_and_multiples_of_eight_on_whole_nodes():
    snap = busy(cluster(8, 8, 8, 8), "n0", 0, 1, 2, 3, 4, 5)  # n0: 2 free
    eight = place_gang(req(replicas=8), snap)
    assert len(eight.nodes) == 1 and eight.nodes[0] != "n0"
    sixteen = place_gang(req(replicas=16), snap)
    assert len(sixteen.nodes) == 2 and "n0" not in sixteen.nodes
    # When no node can take it whole, a gang may still span nodes.
    spread = place_gang(
        req(replicas=8), busy(busy(cluster(8, 8), "n0", 0, 1, 2, 3), "n1", 0, 1, 2, 3, job_id="b")
    )
    assert spread is not None and sorted(
        sum(s.node == n for s in spread.slots) for n in spread.nodes
    ) == [4, 4]


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


@pytest.mark.parametrize("seed", range(20))
def test_a_gang_is_never_partially_placed(seed):
    rng = random.Random(seed)
    snap = cluster(*[rng.choice([2, 4, 8]) for _ in range(rng.randint(1, 6))])
    for i in range(30):
        r = req(f"j{i}", replicas=rng.choice([1, 1, 2, 3, 4, 8, 12, 16]), per=rng.choice([1, 1, 2]))
        p = place_gang(r, snap)
        if p is None:
            continue
        assert len(p.slots) == r.replicas
        taken = [(s.node, g) for s in p.slots for g in s.gpus]
        assert len(taken) == len(set(taken)) == r.gpus
        assert all(g in snap.node(n).free_gpus for n, g in taken)
        snap = snap.allocate(r, p)
    assert snap.free_gpus == sum(len(n.free_gpus) for n in snap.nodes)


def test_data_locality_hook_prefers_nodes_holding_the_data():
    snap = cluster(8, 8)
    local = Snapshot(snap.nodes, data_on={"n1": frozenset({"imagenet"})})
    p = place_gang(req(replicas=2, datasets=("imagenet",)), local)
    assert set(p.nodes) == {"n1"}
    assert set(place_gang(req(replicas=2), local).nodes) == {"n0"}


def with_data(snapshot: Snapshot, **held: dict[str, int]) -> Snapshot:
    """``snapshot`` with node name -> {dataset key -> bytes} on its nodes."""
    return snapshot.with_data(held, {"a@1": 100, "b@1": 100})


def test_locality_is_the_bytes_of_the_jobs_data_on_a_node():
    snap = with_data(cluster(8, 8), n0={"a@1": 60, "b@1": 100, "c@1": 7})
    job = req(datasets=("a@1", "b@1", "a@1"))  # a dataset named twice counts once
    assert snap.locality(job, "n0") == 160
    assert snap.locality(job, "n1") == 0 and snap.locality(req(), "n0") == 0
    assert snap.missing_bytes(job, ["n0", "n1", "n0"]) == 40 + 200
    assert cluster(8).locality(job, "n0") == 0  # no data_on at all


def test_locality_picks_the_node_with_the_most_data_among_equally_tight_ones():
    snap = busy(busy(cluster(8, 8, 8, 8), "n0", *range(5)), "n2", *range(5), job_id="b2")
    snap = with_data(
        snap,
        n0={"a@1": 100},
        n2={"a@1": 100, "b@1": 30},
        n3={"a@1": 100, "b@1": 100},  # a whole free node: more data, but roomier
    )
    job = req(replicas=2, datasets=("a@1", "b@1"))
    assert place_gang(job, snap).nodes == ("n2",)
    assert place_gang(req(replicas=2), snap).nodes == ("n0",)  # data-blind: node order
    # Equal bytes: node order, as without data.
    assert place_gang(req(replicas=2, datasets=("a@1",)), snap).nodes == ("n0",)


def test_locality_never_makes_a_gang_wait_or_breaks_a_whole_node():
    # n0: 2 free, n1: 6 free with the data, n2 whole and free with the data.
    snap = busy(busy(cluster(8, 8, 8), "n0", *range(6)), "n1", 0, 1, job_id="b1")
    snap = with_data(snap, n1={"a@1": 100}, n2={"a@1": 100})
    job = req(replicas=2, datasets=("a@1",))
    assert place_gang(job, snap).nodes == ("n0",)  # best fit wins over data
    assert place_gang(req(replicas=6, datasets=("a@1",)), snap).nodes == ("n1",)
    # The only node with the data is full: the gang starts elsewhere now, it does not wait.
    full = with_data(busy(cluster(4, 4), "n1", *range(4)), n1={"a@1": 100})
    assert place_gang(req(replicas=3, datasets=("a@1",)), full).nodes == ("n0",)
    # Nothing fits anywhere: data changes nothing either.
    assert place_gang(req(replicas=5, datasets=("a@1",)), full) is None


def test_multi_node_gangs_prefer_nodes_holding_the_data():
    data = {"n1": {"a@1": 100}, "n3": {"a@1": 100}}
    # Whole nodes: any whole free node is as good as another, so the two with the data.
    whole = with_data(cluster(8, 8, 8, 8), **data)
    big = place_gang(req(replicas=16, datasets=("a@1",)), whole)
    assert big.nodes == ("n1", "n3")
    assert [s.node for s in big.slots[:8]] == ["n1"] * 8  # rank 0 on the first in order
    assert place_gang(req(replicas=16), whole).nodes == ("n0", "n1")
    # Spanning nodes (no node takes it whole): the roomiest, then the tightest that takes the
    # rest; among equally roomy or equally tight nodes, those with the data.
    twelve = req(replicas=12, datasets=("a@1",))
    spread = busy(busy(cluster(8, 8, 8, 8), "n0", *range(4)), "n1", *range(4), job_id="b1")
    assert set(place_gang(twelve, with_data(spread, **data)).nodes) == {"n3", "n1"}
    assert set(place_gang(replace(twelve, datasets=()), spread).nodes) == {"n2", "n0"}
    # ... but the tightest node still takes the rest, even when a roomier one has the data.
    tight = with_data(busy(cluster(8, 8, 8, 8), "n0", *range(4)), n2={"a@1": 100}, n3={"a@1": 9})
    assert set(place_gang(twelve, tight).nodes) == {"n2", "n0"}
    # Two-GPU replicas: n0 (5 free) and n1, n2 (4 free) each take two. The data node goes
    # first only among nodes as free as itself, or it would leave other GPUs free.
    pairs = busy(busy(busy(cluster(8, 8, 8), "n0", *range(3)), "n1", *range(4), job_id="b1"),
                 "n2", *range(4), job_id="b2")  # fmt: skip
    p = place_gang(req(replicas=3, per=2, datasets=("a@1",)), with_data(pairs, n2={"a@1": 100}))
    assert [(s.node, s.gpus) for s in p.slots] == [("n0", (3, 4)), ("n0", (5, 6)), ("n2", (4, 5))]
    # Exactly K nodes.
    k = place_gang(req(replicas=4, nodes=2, datasets=("a@1",)), whole)
    assert set(k.nodes) == {"n1", "n3"}
    assert set(place_gang(req(replicas=4, nodes=2), whole).nodes) == {"n0", "n1"}


@pytest.mark.parametrize("seed", range(30))
def test_locality_leaves_the_queue_the_same_free_gpus_as_a_data_blind_placement(seed):
    rng = random.Random(seed)
    snap = cluster(*[rng.choice([4, 8, 8]) for _ in range(rng.randint(2, 7))])
    for i in range(12):  # a random fill
        r = req(f"f{i}", replicas=rng.randint(1, 6))
        p = place_gang(r, snap)
        if p is not None and rng.random() < 0.7:
            snap = snap.allocate(r, p)
    held = {
        n.name: {"a@1": rng.choice([0, 40, 100]), "b@1": rng.choice([0, 100])}
        for n in snap.nodes
        if rng.random() < 0.6
    }
    local = with_data(snap, **held)
    for i in range(40):
        kw = rng.choice([{}, {}, {"per": 2}, {"nodes": rng.randint(1, 3)}])
        r = req(f"j{i}", replicas=rng.choice([1, 2, 3, 4, 6, 8, 12, 16]), **kw)
        blind = place_gang(r, snap)
        aware = place_gang(replace(r, datasets=("a@1", "b@1")), local)
        assert (aware is None) == (blind is None)
        if blind is None:
            continue

        def shape(p, s=snap, r=r):
            return sorted(len(n.free_gpus) for n in s.allocate(r, p).nodes)

        assert shape(aware) == shape(blind), r
        if len(blind.nodes) == 1:
            wants = replace(r, datasets=("a@1", "b@1"))
            assert local.locality(wants, aware.nodes[0]) >= local.locality(wants, blind.nodes[0])


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


def test_release_gives_everything_back():
    snap = cluster(8, 8)
    p = place_gang(req("a", replicas=12), snap)
    after = snap.allocate(req("a", replicas=12), p).release("a")
    assert after.nodes == snap.nodes and after.free_gpus == 16 and not after.running


# -- policies -----------------------------------------------------------------------------------


def test_fifo_head_of_line_blocks():
    snap = cluster(4)
    queue = [req("big", replicas=8, seq=1), req("small", replicas=1, seq=2)]
    assert schedule_round(load_policy("fifo"), queue, snap).launches == ()


def test_fifo_places_in_order_and_takes_resources_as_it_goes():
    snap = cluster(4)
    queue = [req("c", replicas=2, seq=3), req("a", replicas=2, seq=1), req("b", replicas=1, seq=2)]
    launches = schedule_round(load_policy("fifo"), queue, snap).launches
    assert [launch.job_id for launch in launches] == ["a", "b"]
    used = [g for launch in launches for s in launch.placement.slots for g in s.gpus]
    assert sorted(used) == [0, 1, 2]
    assert isinstance(launches[0], Launch)


def test_priority_order_is_respected():
    queue = [
        req("low", priority="low", seq=1),
        req("normal", priority="normal", seq=2),
        req("high", priority="high", seq=3),
        req("high2", priority="high", seq=4),
    ]
    decided = schedule_round(load_policy("priority"), queue, cluster(3))
    assert [launch.job_id for launch in decided.launches] == ["high", "high2", "normal"]


def test_priority_preempts_lower_preemptible_gangs_only():
    snap = busy(cluster(4), "n0", 0, 1, job_id="low", priority="low", preemptible=True)
    snap = busy(snap, "n0", 2, 3, job_id="pinned", priority="low", preemptible=False).at(10.0)
    decided = schedule_round(
        load_policy("priority"), [req("urgent", replicas=2, priority="high")], snap
    )
    assert decided.launches == ()
    assert [p.job_id for p in decided.preemptions] == ["low"]
    # Nothing worth preempting for a job of the same class.
    same = schedule_round(load_policy("priority"), [req("n", replicas=2, priority="low")], snap)
    assert same.preemptions == ()


def test_fair_share_converges_to_the_weights():
    jobs = [
        TraceJob(f"{user}{i}", 0.0, 100.0, 1, user=user, row=i)
        for i in range(300)
        for user in ("alice", "bob")
    ]
    policy = load_policy("fairshare", weights={"alice": 2.0, "bob": 1.0})
    result = Simulator(jobs, make_nodes(3, 4), policy, preempt_overhead_s=0).run()
    for t in (150.0, 1050.0, 2050.0):
        held = {"alice": 0, "bob": 0}
        for rec in result.records:
            if rec.first_start <= t < rec.finish:
                held[rec.job.user] += 1
        assert held == {"alice": 8, "bob": 4}, t


def test_fair_share_gives_an_idle_users_share_to_others():
    queue = [req(f"a{i}", owner="alice", seq=i) for i in range(6)]
    decided = schedule_round(load_policy("fairshare", weights={"bob": 5}), queue, cluster(4))
    assert len(decided.launches) == 4


def test_las_demotes_jobs_by_attained_service():
    policy = load_policy("las", thresholds_gpu_s=[1000.0])
    # "old" has run 1000 s on 2 GPUs: 2000 GPU-s, past the threshold; "young" just started.
    snap = busy(cluster(4), "n0", 0, 1, job_id="old", preemptible=True).at(1000.0)
    snap = snap.allocate(
        req("young", replicas=2, preemptible=True),
        Placement((Slot(0, "n0", 0, (2,)), Slot(1, "n0", 1, (3,)))),
        started_at=990.0,
    )
    assert policy.queue_of(snap.running["old"].attained_gpu_s(snap.now)) == 1
    assert policy.queue_of(snap.running["young"].attained_gpu_s(snap.now)) == 0
    new = req("new", replicas=2, submitted_at=999.0, seq=9)
    decided = schedule_round(policy, [new], snap)
    assert [p.job_id for p in decided.preemptions] == ["old"]
    # A job that was preempted after much service waits behind a fresh one.
    served = req("served", seq=1, attained_gpu_s=5000.0)
    fresh = req("fresh", seq=2, submitted_at=5.0)
    assert [r.job_id for r in policy.order([served, fresh], cluster(1))] == ["fresh", "served"]


def test_a_job_without_gpus_keeps_its_service_across_runs():
    # A CPU-only job counts as one slot: its run time is its service, before and after a
    # preemption, so estimates of what it has left stay right.
    cpu = req("cpu", per=0, preemptible=True, time_limit_s=1000.0)
    assert cpu.gpus == 0 and cpu.slots == 1
    snap = cluster(2).allocate(cpu, Placement((Slot(0, "n0", 0, ()),)), started_at=0.0).at(300.0)
    assert snap.running["cpu"].attained_gpu_s(snap.now) == 300.0
    assert [g.request.job_id for g in snap.most_served()] == ["cpu"]
    again = req("cpu", per=0, time_limit_s=1000.0, attained_gpu_s=300.0)
    assert remaining_s(again, cluster(2)) == 700.0
    row = Job(
        id="1",
        seq=1,
        owner="u",
        state="succeeded",
        spec={},
        submitted_at=0.0,
        gpus=0,
        attained_gpu_s=300.0,
        started_at=1000.0,
        finished_at=1200.0,
    )
    assert run_time_s(row) == 500.0


def test_backfill_never_delays_the_head_jobs_reserved_start():
    # 6 of 8 GPUs are held by a job declared to end at t=100.
    snap = busy(cluster(8), "n0", *range(6), job_id="running", time_limit_s=100.0).at(0.0)
    head = req("head", replicas=8, seq=1, time_limit_s=50.0)
    assert reservation(head, snap) == (100.0, 0)
    long = req("long", replicas=2, seq=2, time_limit_s=500.0)  # would still hold GPUs at 100
    short = req("short", replicas=2, seq=3, time_limit_s=90.0)  # done before 100
    decided = schedule_round(load_policy("backfill"), [head, long, short], snap)
    assert [launch.job_id for launch in decided.launches] == ["short"]
    # FIFO would have started nothing at all.
    assert schedule_round(load_policy("fifo"), [head, long, short], snap).launches == ()


def test_estimates_come_from_limits_and_history_never_the_job_itself():
    h = History()
    job = req("x", job_type="resnet")
    assert h.estimate_s(job) is None
    assert h.estimate_s(req("y", time_limit_s=600.0)) == 600.0
    h = h.add(req("done1", job_type="resnet"), 100.0).add(req("done2", job_type="resnet"), 300.0)
    assert h.estimate_s(job) == 300.0  # its most recent sibling (same type, GPUs, week)
    later = req("later", job_type="resnet", submitted_at=30 * 86400.0)
    assert h.estimate_s(later) == 200.0  # no sibling that close: the type's runs
    assert h.estimate_s(req("z", job_type="other", owner="u")) == 200.0  # by owner
    assert h.estimate_s(req("c", job_type="resnet", time_limit_s=50.0)) == 50.0  # capped


@pytest.mark.parametrize(
    "name", ["fifo", "priority", "fairshare", "las", "backfill", "srtf", "aigrid"]
)
def test_every_builtin_policy_is_registered_and_places_gangs_whole(name):
    policy = load_policy(name)
    assert policy.name == name
    queue = [req(f"j{i}", replicas=r, seq=i) for i, r in enumerate([3, 2, 4, 1, 1])]
    decided = schedule_round(policy, queue, cluster(4, 4))
    for launch in decided.launches:
        r = next(q for q in queue if q.job_id == launch.job_id)
        assert len(launch.placement.slots) == r.replicas


def test_unknown_policy_and_bad_options_are_named():
    with pytest.raises(ValueError, match=r"unknown policy 'nope'.*fifo"):
        load_policy("nope")
    with pytest.raises(ValueError, match="takes no options"):
        load_policy("fifo", bogus=1)
    with pytest.raises(TypeError):
        load_policy("las", bogus=1)
    with pytest.raises(ValueError, match="weight of 'bob' must be > 0"):
        load_policy("fairshare", weights={"bob": 0})


def test_preemption_takes_the_fewest_victims_and_never_a_gang_just_launched():
    # n0: B holds all 8 GPUs; n1: C holds 7 and A (the most served) 1. W needs a whole node.
    snap = cluster(8, 8)
    place = lambda s, job, node, gpus, start, **kw: s.allocate(  # noqa: E731
        req(job, replicas=len(gpus), preemptible=True, **kw),
        Placement(tuple(Slot(i, node, i, (g,)) for i, g in enumerate(gpus))),
        started_at=start,
    )
    snap = place(snap, "B", "n0", range(8), 0.0)
    snap = place(snap, "C", "n1", range(7), 0.0)
    snap = place(snap, "A", "n1", [7], 0.0, attained_gpu_s=1e6).at(1000.0)
    decided = schedule_round(load_policy("las"), [req("W", replicas=8, seq=5)], snap)
    assert [p.job_id for p in decided.preemptions] == ["B"]
    # A gang placed in this very round is never its victim: W (short, 2 GPUs) cannot fit
    # beside R, L (1 GPU) is launched on the free GPU; preempting R alone would not free
    # enough for W, and L, just launched, must not be taken as well.
    running = place(cluster(2), "R", "n0", [0], 0.0, time_limit_s=5000.0).at(100.0)
    decided = schedule_round(
        load_policy("srtf", min_run_s=0),
        [req("W", replicas=2, seq=2, time_limit_s=10.0),
         req("L", preemptible=True, seq=3, time_limit_s=900.0)],
        running,
    )  # fmt: skip
    assert [launch.job_id for launch in decided.launches] == ["L"]
    assert decided.preemptions == ()


def test_aigrid_preempts_only_gangs_with_at_least_twice_the_work_left():
    def running(limit_s: float) -> Snapshot:
        gang = req("R", replicas=4, preemptible=True, time_limit_s=limit_s)
        slots = tuple(Slot(i, "n0", i, (i,)) for i in range(4))
        return cluster(4).allocate(gang, Placement(slots), started_at=0.0).at(100.0)

    waiting = [req("W", replicas=4, seq=2, time_limit_s=1000.0)]
    # R has 1,900 s left (1.9x W's 1,000): plain SRTF evicts it, aigrid does not.
    assert [
        p.job_id for p in schedule_round(load_policy("srtf"), waiting, running(2000.0)).preemptions
    ] == ["R"]
    assert schedule_round(load_policy("aigrid"), waiting, running(2000.0)).preemptions == ()
    # With 2,100 s left (2.1x), aigrid evicts it too.
    assert [
        p.job_id
        for p in schedule_round(load_policy("aigrid"), waiting, running(2200.0)).preemptions
    ] == ["R"]
    with pytest.raises(ValueError, match=r"preempt_factor must be at least 1, got 0\.5"):
        load_policy("aigrid", preempt_factor=0.5)
