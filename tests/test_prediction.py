"""Run time prediction from history: which match wins, the fallbacks in order, what backfill
does with it, the errors the simulator reports, and the code hash of a submitted job."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_aigrid.server.history import BASES, History, Prediction
from jupyter_aigrid.server.inventory import simulated_gpus
from jupyter_aigrid.server.model import Node, Placement, Request, Slot
from jupyter_aigrid.server.policies import load_policy, schedule_round
from jupyter_aigrid.server.snapshot import Snapshot
from jupyter_aigrid.server.spec import code_hash, to_request, validate
from jupyter_aigrid.sim import Simulator, TraceJob, make_nodes
from jupyter_aigrid.sim.engine import PredictionError, prediction_errors

DAY = 86400.0


def req(job_id: str = "j", **kw) -> Request:
    """A one-GPU training request by ``u`` named ``train``, rendered with ``ddp``."""
    fields = {"owner": "u", "job_type": "train", "template": "ddp", "code_hash": ""}
    fields.update(kw)
    replicas = fields.pop("replicas", 1)
    return Request(job_id, fields.pop("owner"), replicas, 1, 1.0, 0, **fields)


def both(history: History, request: Request) -> Prediction:
    """The prediction, checked to be exactly what ``estimate_s`` hands the policies."""
    found = history.predict(request)
    assert found.seconds == history.estimate_s(request)
    assert found.basis in BASES
    return found


# -- which history match wins --------------------------------------------------------------------


def test_the_same_code_run_again_wins_over_a_newer_same_name_job_with_other_code():
    h = History()
    h = h.add(req("old", code_hash="aaa", submitted_at=0.0), 100.0)
    h = h.add(req("new", code_hash="bbb", submitted_at=10.0), 900.0)  # newest sibling
    again = req("again", code_hash="aaa", submitted_at=20.0)
    assert both(h, again) == Prediction(100.0, "same-code")
    # Each part of the key matters: a change falls back to the siblings (same name and GPUs).
    assert both(h, req("other", code_hash="ccc", submitted_at=20.0)) == Prediction(900.0, "sibling")
    assert both(h, req("o", code_hash="aaa", owner="v", submitted_at=20.0)).basis == "sibling"
    assert both(h, req("t", code_hash="aaa", template="mpi", submitted_at=20.0)).basis == "sibling"
    # Other GPUs: no sibling either, so the type's runs (fewer than 3: their mean).
    two = req("g", code_hash="aaa", replicas=2, submitted_at=20.0)
    assert both(h, two) == Prediction(500.0, "type")


def test_the_same_code_estimate_is_the_median_of_its_last_five_runs():
    h = History()
    for i, run in enumerate((5000.0, 100.0, 300.0, 200.0, 1000.0, 400.0)):
        h = h.add(req(f"r{i}", code_hash="aaa", submitted_at=float(i)), run)
    # 5000 s has left the window: median of 100, 300, 200, 1000, 400.
    assert both(h, req(code_hash="aaa")) == Prediction(300.0, "same-code")
    assert h.same_code[("u", "ddp", 1, "aaa")][0] == (100.0, 300.0, 200.0, 1000.0, 400.0)


def test_without_a_code_hash_there_is_no_same_code_match():
    h = History().add(req("a", code_hash=""), 100.0)
    assert len(h.same_code) == 0
    assert both(h, req("b", code_hash="")).basis == "sibling"


def test_fallbacks_in_order_then_the_limit_then_nothing():
    limit = 50.0
    assert both(History(), req("x")) == Prediction(None, "none")
    assert both(History(), req("x", time_limit_s=600.0)) == Prediction(600.0, "limit")
    h = History()
    h = h.add(req("a", owner="u", job_type="train", submitted_at=0.0), 100.0)
    h = h.add(req("b", owner="v", job_type="eval", replicas=2, submitted_at=0.0), 700.0)
    assert both(h, req("s", job_type="train", submitted_at=DAY)) == Prediction(100.0, "sibling")
    later = req("t", job_type="train", submitted_at=30 * DAY)  # no sibling within a week
    assert both(h, later) == Prediction(100.0, "type")
    assert both(h, req("o", owner="u", job_type="new")) == Prediction(100.0, "owner")
    unknown = req("g", owner="w", job_type="new", replicas=2)
    assert both(h, unknown) == Prediction(700.0, "gpus")
    assert both(h, req("all", owner="w", job_type="new", replicas=4)) == Prediction(400.0, "global")
    # A declared limit below the history's figure is what the policy sees, and says so.
    capped = req("c", job_type="train", submitted_at=DAY, time_limit_s=limit)
    assert both(h, capped) == Prediction(limit, "limit")
    roomy = req("r", job_type="train", submitted_at=DAY, time_limit_s=10 * limit)
    assert both(h, roomy) == Prediction(100.0, "sibling")


def test_adding_never_changes_the_history_added_to():
    before = History().add(req("a", code_hash="aaa"), 100.0)
    after = before.add(req("b", code_hash="aaa"), 300.0)
    assert both(before, req(code_hash="aaa")) == Prediction(100.0, "same-code")
    assert both(after, req(code_hash="aaa")) == Prediction(200.0, "same-code")


# -- backfill uses it ----------------------------------------------------------------------------


def one_node(gpus: int) -> Snapshot:
    node = Node(name="n0", gpus=tuple(simulated_gpus("n0", gpus)), cpus=64, memory_mb=1 << 20)
    return Snapshot.empty([node])


@pytest.mark.parametrize(("code", "started"), [("short", ["cand"]), ("fresh", [])])
def test_backfill_starts_a_job_its_same_code_history_says_ends_in_time(code, started):
    history = History()
    history = history.add(req("s", code_hash="short", replicas=2), 50.0)
    history = history.add(req("l", code_hash="long", replicas=2), 500.0)  # newest sibling
    snap = one_node(8).with_history(history)
    holder = req("running", job_type="hold", replicas=6, time_limit_s=100.0)
    slots = tuple(Slot(i, "n0", i, (i,)) for i in range(6))
    snap = snap.allocate(holder, Placement(slots)).at(0.0)
    head = req("head", job_type="big", replicas=8, seq=1, time_limit_s=50.0)
    cand = req("cand", code_hash=code, replicas=2, seq=2)
    decided = schedule_round(load_policy("backfill"), [head, cand], snap)
    # 'short' ends by 50 s, before the head's reservation at 100 s; 'fresh' is a new code:
    # its newest sibling ran 500 s, which would delay the head.
    assert [launch.job_id for launch in decided.launches] == started


# -- the simulator's report ----------------------------------------------------------------------


def tiny_trace() -> list[TraceJob]:
    # One GPU, FIFO: a runs 0-100, b 100-300, c 300-350, d 350-750.
    return [
        TraceJob("a", 0.0, 100.0, 1, "x", "u"),
        TraceJob("b", 10.0, 200.0, 1, "x", "u"),
        TraceJob("c", 20.0, 50.0, 1, "y", "u"),
        TraceJob("d", 30.0, 400.0, 1, "x", "u"),
    ]


def test_the_simulator_reports_exactly_the_errors_of_what_the_policy_saw():
    result = Simulator(tiny_trace(), make_nodes(1, 1), load_policy("fifo"), 0.0).run()
    seen = {r.job.job_id: r.prediction for r in result.records}
    assert seen == {
        "a": Prediction(None, "none"),  # nothing has finished yet
        "b": Prediction(100.0, "sibling"),  # a; APE |100 - 200| / 200 = 0.5
        "c": Prediction(150.0, "owner"),  # mean of a, b; APE |150 - 50| / 50 = 2.0
        "d": Prediction(200.0, "sibling"),  # b; APE 0.5
    }
    assert result.prediction == {
        "all": PredictionError(jobs=4, predicted=3, mape=1.0, median_ape=0.5, within_2x=2 / 3),
        "sibling": PredictionError(2, 2, 0.5, 0.5, 1.0),
        "owner": PredictionError(1, 1, 2.0, 2.0, 0.0),
        "none": PredictionError(1, 0, None, None, None),
    }
    assert result.prediction["all"].coverage == 0.75
    oracle = Simulator(tiny_trace(), make_nodes(1, 1), load_policy("fifo"), 0.0, oracle=True)
    assert oracle.run().prediction["all"] == PredictionError(4, 4, 0.0, 0.0, 1.0)


def test_errors_count_within_two_x_at_both_edges_and_leave_out_zero_second_runs():
    pairs = [
        (Prediction(50.0, "type"), 100.0),  # exactly half
        (Prediction(200.0, "type"), 100.0),  # exactly twice
        (Prediction(201.0, "type"), 100.0),
        (Prediction(5.0, "type"), 0.0),  # ran 0 s: no percentage error
        (Prediction(100.0, "global"), 100.0),
    ]
    errors = prediction_errors(pairs)
    got = errors["type"]
    assert (got.jobs, got.predicted, got.within_2x) == (4, 4, 2 / 3)
    assert got.mape == pytest.approx((0.5 + 1.0 + 1.01) / 3)
    assert list(errors) == ["all", "type", "global"]  # most specific basis first
    assert (errors["all"].jobs, errors["global"].jobs) == (5, 1)
    assert errors["all"].mape == pytest.approx((0.5 + 1.0 + 1.01 + 0.0) / 4)


def test_the_command_line_prints_the_prediction_errors(tmp_path: Path):
    trace = tmp_path / "tiny.csv"
    rows = ["job_id,submit_time_s,duration_s,num_gpus,job_type,user"]
    rows += [f"{j.job_id},{j.submit_s},{j.duration_s},1,{j.job_type},u" for j in tiny_trace()]
    trace.write_text("\n".join(rows) + "\n")
    args = ["--trace", str(trace), "--nodes", "1", "--gpus-per-node", "1", "--policy", "fifo"]
    out = subprocess.run(
        [sys.executable, "-m", "jupyter_aigrid.sim", *args, "--plots", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = {tuple(line.split()[:2]): line.split()[2:] for line in out.stdout.splitlines()}
    assert lines[("fifo", "all")] == ["4", "100.0%", "50.0%", "66.7%", "75.0%"]
    assert lines[("fifo", "owner")] == ["1", "200.0%", "200.0%", "0.0%", "100.0%"]
    assert lines[("fifo", "none")] == ["1", "-", "-", "-", "0.0%"]


# -- the code hash of a submitted job ------------------------------------------------------------


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_submitted_job_gets_its_template_and_the_hash_of_its_code():
    spec = validate({"name": "train", "code": "print('hi')", "gpus": 2})
    request = to_request("1", "alice", spec, 0.0, 0)
    assert request.template == spec["template"] == "pytorch-ddp"
    assert request.code_hash == sha("print('hi')")
    command = validate({"command": ["python", "train.py", "--epochs", "3"]})
    request = to_request("2", "alice", command, 0.0, 1)
    assert request.template == "single"
    assert request.code_hash == sha(json.dumps(["python", "train.py", "--epochs", "3"]))


def test_the_hash_tells_code_and_arguments_apart_and_nothing_else():
    base = {"name": "train", "code": "print('hi')"}
    same = code_hash(validate({**base, "name": "renamed", "priority": "low"}))
    assert same == code_hash(validate(base))
    assert code_hash(validate({**base, "code": "print('ho')"})) != same
    with_args = code_hash(validate({**base, "args": ["--epochs", "3"]}))
    assert with_args not in (same, code_hash(validate({**base, "args": ["--epochs", "30"]})))


def test_a_job_resubmitted_from_its_spec_is_predicted_from_its_own_last_run():
    spec = validate({"name": "train", "code": "fit()", "gpus": 1})
    other = validate({"name": "train", "code": "fit(longer=True)", "gpus": 1})
    history = History()
    history = history.add(to_request("1", "alice", spec, 0.0, 0), 120.0)
    history = history.add(to_request("2", "alice", other, 1.0, 1), 3600.0)
    again = to_request("3", "alice", spec, 2.0, 2)
    assert history.predict(again) == Prediction(120.0, "same-code")
    assert history.predict(to_request("4", "bob", spec, 2.0, 3)) == Prediction(3600.0, "sibling")
