"""Inference jobs through a real server: the resource type is chosen from learnt profiles,
results update the profiles, a degraded type is abandoned, realtime preempts batch.

Two logical nodes, one simulated GPU each, declared as different models ("fast" and
"slow"). The job is a stand-in model whose latency depends on the resource type it is given
(``AIGRID_RESOURCE``): it really sleeps that long per request and reports what it measured,
so the profiles learn from real timings of real processes.
"""

from __future__ import annotations

import pytest

from jupyter_aigrid.server.master.inference import latency_summary, results
from jupyter_aigrid.server.profiles import ProfileBook
from jupyter_aigrid.server.store import Store

FAST, SLOW = "simulated:fast", "simulated:slow"
RESULTS_PER_JOB = 12

SERVE = """
import os, time
from jupyter_aigrid import runtime
ms = {"simulated:fast": 4.0, "simulated:slow": 40.0}[os.environ["AIGRID_RESOURCE"]]
if os.environ.get("DEGRADED") == os.environ["AIGRID_RESOURCE"]:
    ms *= 20  # this resource has become slow (a throttled GPU, a noisy neighbour)
for _ in range(int(os.environ.get("REQUESTS", "12"))):
    t = time.perf_counter()
    time.sleep(ms / 1000)
    runtime.report(latency_ms=(time.perf_counter() - t) * 1000, items=4)
"""


@pytest.fixture
def aigrid_config():
    return {
        "local_nodes": 2,
        "simulated_gpus": 1,
        "local_cpus_per_node": 4,
        "gpu_models": {"node-0": "fast", "node-1": "slow"},
        "gpu_cost_per_hour": {FAST: 3.0, SLOW: 1.0},
        "profile_min_samples": 10,
        "profile_explore": 1.0,
        "profile_half_life": 10.0,
    }


def infer(qos: str = "interactive", slo_ms: float = 20.0, **extra) -> dict:
    return {
        "kind": "inference",
        "model": "resnet-test",
        "slo": {"latency_ms": slo_ms},
        "qos": qos,
        "code": SERVE,
        "gpus": 1,
        **extra,
    }


async def run(api, spec: dict) -> dict:
    job = await api.submit(spec)
    done = await api.wait(job["id"])
    assert done["state"] == "succeeded", done
    return done


async def profiles(api) -> dict[str, dict]:
    view = await api.call("GET", "profiles", params={"model": "resnet-test"})
    return {p["resource"]: p for p in view["profiles"]}


async def test_profiles_learn_and_realtime_jobs_go_where_the_slo_is_met(api, aigrid_master):
    # Cold start: interactive jobs explore until both types have enough results.
    learned = {}
    for _ in range(10):
        done = await run(api, infer())
        record = done["inference"]
        assert record["resource"] in (FAST, SLOW) and record["qos"] == "interactive"
        assert record["observed"]["count"] == RESULTS_PER_JOB
        assert record["observed"]["items"] == 4 * RESULTS_PER_JOB
        learned = await profiles(api)
        if all(learned.get(r, {}).get("count", 0) >= 10 for r in (FAST, SLOW)):
            break
    assert set(learned) == {FAST, SLOW}, learned

    # The profiles hold what the jobs measured: p95 near the sleep, the slow one 10x.
    for resource, floor in ((FAST, 4.0), (SLOW, 40.0)):
        p = learned[resource]
        assert p["count"] >= 10 and p["cost_per_hour"] == (3.0 if resource == FAST else 1.0)
        assert floor <= p["p50_ms"] <= p["p95_ms"] < floor * 2.5 + 5, p
        assert p["throughput"] > 0 and p["updated_at"] is not None
    view = await api.call("GET", "profiles")
    resources = {r["resource"]: r for r in view["resources"]}
    assert resources[FAST]["gpus"] == 1 and resources[FAST]["simulated"] is True
    assert resources["cpu"]["cost_per_hour"] == 0.1

    # Realtime jobs with a 20 ms SLO: only "fast" meets it, dearer as it is.
    for _ in range(3):
        done = await run(api, infer("realtime"))
        record = done["inference"]
        assert (record["resource"], record["reason"]) == (FAST, "meets_slo"), record
        assert record["predicted_p95_ms"] < 20 and record["slo_met"] is True
        assert done["qos"] == "realtime" and done["priority"] == "high"
    # An interactive job whose SLO both meet goes to the cheaper one.
    done = await run(api, infer(slo_ms=500.0))
    assert (done["inference"]["resource"], done["inference"]["reason"]) == (SLOW, "meets_slo")

    # "fast" degrades: its results show it, and realtime jobs leave it.
    seen = []
    for _ in range(4):
        done = await run(api, infer("realtime", env={"DEGRADED": FAST}))
        seen.append((done["inference"]["resource"], done["inference"]["slo_met"]))
    assert seen[0] == (FAST, False), seen  # the first one finds out
    assert seen[-1][0] == SLOW and seen[-2][0] == SLOW, seen
    assert (await profiles(api))[FAST]["p95_ms"] > 40


async def test_the_profiles_are_stored_and_survive_the_master(api, aigrid_master, aigrid_state):
    await run(api, infer(gpu_type=SLOW))
    rows = aigrid_master.store.profiles()
    assert [(r["model"], r["resource"], r["count"]) for r in rows] == [
        ("resnet-test", SLOW, RESULTS_PER_JOB)
    ]
    # What a new master loads: the same profile, quantiles and all.
    store = Store(aigrid_master.store.path.with_name("copy.sqlite"))
    try:
        store.put_profile(rows[0])
        book = ProfileBook.from_rows(store.profiles())
        again = book.get("resnet-test", SLOW)
        assert again.count == RESULTS_PER_JOB
        assert again.p95_ms == aigrid_master.inference.book.get("resnet-test", SLOW).p95_ms
    finally:
        store.close()


async def test_a_realtime_job_preempts_a_batch_job_which_then_runs_again(api, aigrid_master):
    long_batch = infer("batch", gpu_type=FAST, env={"REQUESTS": "100000"})
    batch = await api.submit(long_batch)
    await api.wait(batch["id"], states=("running",))
    assert (await api.job(batch["id"]))["preemptible"] is True
    urgent = await run(api, infer("realtime", gpu_type=FAST))
    assert urgent["inference"]["resource"] == FAST
    states = [e["data"].get("state") for e in aigrid_master.store.events(batch["id"])]
    assert "preempted" in states, states
    again = await api.wait(batch["id"], states=("running",))
    assert again["attempt"] == 1
    await api.call("DELETE", "jobs", batch["id"])
    await api.wait(batch["id"])


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"kind": "inference", "code": "pass", "slo": {"latency_ms": 5}}, "model"),
        ({"kind": "inference", "code": "pass", "model": "m", "slo": {}}, "slo"),
        ({"kind": "inference", "code": "pass", "model": "m", "slo": {"latency_ms": -1}}, "slo"),
        (infer(qos="urgent"), "qos"),
        ({"code": "pass", "qos": "realtime"}, "qos"),
        ({"code": "pass", "model": "m"}, "model"),
        ({"code": "pass", "slo": {"latency_ms": 5}}, "slo"),
        (infer(gpu_type="simulated:huge"), "gpu_type"),
    ],
)
async def test_bad_inference_specs_name_the_field(api, aigrid_master, spec, field):
    status, body = await api.error("POST", "jobs", body=spec)
    assert status == 400, body
    assert body["field"] is not None and body["field"].split(".")[0] == field, body


async def test_profiles_query_is_checked(api, aigrid_master):
    status, body = await api.error("GET", "profiles", params={"model": "x" * 300})
    assert (status, body["field"]) == (400, "model")
    assert (await api.call("GET", "profiles", params={"model": "unknown"}))["profiles"] == []


async def test_training_run_times_are_predicted_from_the_same_code_and_scored(api, aigrid_master):
    job = {"code": "import time; time.sleep(0.3)", "name": "sweep", "gpus": 1}
    first = await run(api, job)
    assert first["prediction"]["basis"] == "none" and first["prediction"]["run_s"] is None
    other = await run(api, {**job, "code": "import time; time.sleep(0.1)"})
    assert other["prediction"]["basis"] == "sibling"  # same name, other code
    again = await run(api, job)  # the same code again: predicted from its own last run
    guess = again["prediction"]
    assert guess["basis"] == "same-code", guess
    assert guess["run_s"] == pytest.approx(aigrid_master.store.job(first["id"]).prediction
                                           ["actual_s"])  # fmt: skip
    assert guess["actual_s"] > 0.3 and guess["error"] == pytest.approx(
        abs(guess["run_s"] - guess["actual_s"]) / guess["actual_s"], abs=1e-6
    )
    report = (await api.call("GET", "profiles"))["runtime_predictions"]
    assert report["all"]["jobs"] == 3 and report["all"]["predicted"] == 2
    assert report["same-code"]["predicted"] == 1 and report["none"]["predicted"] == 0


def test_only_reports_with_a_latency_are_results():
    reports = [
        {"latency_ms": 10, "items": 4},
        {"latency_ms": 30},  # one item
        {"latency_ms": True},  # not a number
        {"latency_ms": -1},
        {"loss": 0.3},  # a training metric, not a result
        {"latency_ms": 20, "items": 0},  # no items given: counts as one
    ]
    measured = results(reports)
    assert measured == [(10.0, 4.0), (30.0, 1.0), (20.0, 1.0)]
    summary = latency_summary(measured)
    assert (summary["count"], summary["p50_ms"], summary["p95_ms"]) == (3, 20.0, 30.0)
    assert summary["items"] == 6.0 and summary["throughput"] == pytest.approx(6 / 0.06)
    assert latency_summary([]) is None
