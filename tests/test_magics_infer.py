"""Inference with QoS from the notebook: ``%%aigrid infer`` (its options and the JobSpec it
submits, through a real IPython shell against a real server), ``%aigrid profiles`` and the
ProfileWidget, and the job widget's inference line.

Two tests go through the master's side of inference QoS (the ``qos`` JobSpec field, the
job's ``inference`` record and ``GET /profiles``).
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from test_magics import _job_count, _until

from jupyter_aigrid.client import AIGridError
from jupyter_aigrid.magics import JobHandle, JobWidget
from jupyter_aigrid.magics.commands import PARSERS
from jupyter_aigrid.magics.parsing import inference_fields, latency_ms
from jupyter_aigrid.magics.profiles import (
    PAD_TOP,
    PLOT_HEIGHT,
    ProfileWidget,
    profile_plot_svg,
    profiles_text,
)

SVG = "{http://www.w3.org/2000/svg}"

SERVE_CELL = """
import time
from jupyter_aigrid import runtime
for batch in range(20):
    t = time.perf_counter()
    sum(i * i for i in range(2000))
    runtime.report(latency_ms=(time.perf_counter() - t) * 1e3, items=4)
served = 20
print("served", served, "batches")
"""


# -- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [("50ms", 50.0), ("0.05s", 50.0), ("50", 50.0), (" 2.5 ms ", 2.5), (".5s", 500.0), ("1s", 1e3)],
)
def test_latencies_in_milliseconds_seconds_or_bare_milliseconds(text, ms):
    assert latency_ms(text) == ms


@pytest.mark.parametrize("text", ["0", "0ms", "-5ms", "fast", "50us", "", "5 m", "50 ms ms"])
def test_bad_latencies_say_what_is_allowed(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"50ms, 0\.05s or 50 \(milliseconds\)"):
        latency_ms(text)


def _infer_args(line: str) -> argparse.Namespace:
    return PARSERS["infer"].parse_args(line.split())


def test_infer_options_become_the_inference_fields():
    args = _infer_args("--model resnet50 --slo 0.05s --deadline 10m --qos realtime --gpus 2")
    assert inference_fields(args) == {
        "kind": "inference",
        "model": "resnet50",
        "slo": {"latency_ms": 50.0, "deadline_s": 600.0},
        "qos": "realtime",
    }
    assert args.gpus == 2
    for deadline, seconds in [("90s", 90.0), ("10m", 600.0), ("1h", 3600.0), ("45", 45.0)]:
        fields = inference_fields(_infer_args(f"--model m --deadline {deadline}"))
        assert fields["slo"] == {"deadline_s": seconds}
    # Without --qos the master's default class applies: the spec does not name one.
    assert "qos" not in inference_fields(_infer_args("--model m --slo 20"))


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("--model m --slo fast", ["argument --slo", "50ms, 0.05s or 50", "'fast'"]),
        ("--model m --slo 0", ["argument --slo", "positive latency"]),
        ("--model m --deadline soon", ["argument --deadline", "90s, 10m or 2h", "'soon'"]),
        ("--model m --deadline -3m", ["argument --deadline"]),
        ("--model m --slo 5ms --qos urgent", ["argument --qos", "'realtime'", "'batch'"]),
        ("--slo 5ms", ["required", "--model"]),
        ("--model= --slo 5ms", ["argument --model", "must name the model"]),
        ("--model m --slos 5ms", ["unrecognized arguments: --slos", "did you mean --slo"]),
    ],
)
def test_bad_infer_options_name_the_option(line, words):
    with pytest.raises(UsageError) as info:
        _infer_args(line)
    for word in words:
        assert word in str(info.value)
    assert str(info.value).startswith("%aigrid infer: ")


def test_an_slo_or_a_deadline_is_required():
    with pytest.raises(UsageError) as info:
        inference_fields(_infer_args("--model m --qos batch"))
    text = str(info.value)
    assert "--slo" in text and "--deadline" in text and "50ms" in text and "10m" in text


# -- end to end through the magic ---------------------------------------------------------------


def test_infer_submits_an_inference_job_and_streams_it_like_run(ip, server):
    with capture_output() as cap:
        result = ip.run_cell_magic(
            "aigrid",
            "infer --model tiny-mlp --slo 50ms --deadline 10m --gpus 1 --pull served",
            SERVE_CELL,
        )
    assert result is None
    assert ip.user_ns.pop("served") == 20
    assert "[0] served 20 batches" in cap.stdout.splitlines()
    assert any("application/vnd.jupyter.widget-view+json" in o.data for o in cap.outputs)
    job = server.client().jobs()[-1]
    spec = job["spec"]
    assert (job["kind"], job["state"], job["name"], job["gpus"]) == (
        "inference",
        "succeeded",
        "tiny-mlp",  # named after its model
        1,
    )
    assert (spec["model"], spec["slo"]) == ("tiny-mlp", {"latency_ms": 50, "deadline_s": 600})
    assert spec["template"] == "inference"
    assert "qos" not in spec or spec["qos"] == "interactive"
    # Its reports are where the master reads them.
    reports = server.client().result(job["id"])
    assert "latency_ms" in str(reports), reports


def test_infer_detached_widget_shows_the_request(ip, server):
    handle = ip.run_cell_magic(
        "aigrid", "infer --model tiny-mlp --slo 0.02s --name probe --detach", "pass"
    )
    assert isinstance(handle, JobHandle)
    with capture_output():
        ip.run_line_magic("aigrid", f"wait {handle.id}")
    widget = handle.widget
    job = server.client().job(handle.id)
    assert job["name"] == "probe" and job["spec"]["slo"] == {"latency_ms": 20}
    widget.update(job)
    assert widget.inference["model"] == "tiny-mlp"
    assert widget.qos == "interactive"
    line = widget._timeline.value
    assert "aigrid-inference" in line and "<code>tiny-mlp</code>" in line
    assert "SLO p95 &le; 20 ms" in line and "QoS <b>interactive</b>" in line


@pytest.mark.parametrize(
    ("line", "cell", "words"),
    [
        ("infer --model m", "pass", ["--slo", "--deadline", "or both"]),
        ("infer --slo 50ms", "pass", ["--model"]),
        ("infer --model m --slo 1 serve.py", "pass", ["the cell is the code", "%aigrid infer"]),
        ("infer --model m --slo 1", "\n \n", ["the cell is empty", "%%aigrid infer"]),
        ("infer --model m --slo 1 --pull nope", "x = 1", ["--pull nope", "never sets nope"]),
        ("profiles", "pass", ["only run takes a cell (and infer)", "%aigrid profiles"]),
    ],
)
def test_bad_infer_input_submits_nothing(ip, server, line, cell, words):
    before = _job_count(server)
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("aigrid", line, cell)
    for word in words:
        assert word in str(info.value)
    assert _job_count(server) == before


def test_infer_line_form_and_help(ip, server, tmp_path):
    with pytest.raises(UsageError, match="give a script: %aigrid infer --model resnet50"):
        ip.run_line_magic("aigrid", "infer --model m --slo 5ms")
    script = tmp_path / "serve.py"
    script.write_text("import sys\nargv = sys.argv[1:]\n")
    with capture_output():
        ip.run_line_magic("aigrid", f"infer --model m --slo 5ms --pull argv {script} --port 1")
    assert ip.user_ns.pop("argv") == ["--port", "1"]
    job = server.client().jobs()[-1]
    assert (job["kind"], job["name"], job["spec"]["args"]) == ("inference", "m", ["--port", "1"])
    with capture_output() as cap:
        ip.run_line_magic("aigrid", "infer --help")
    for option in ("--model", "--slo", "--deadline", "--qos", "--gpus", "--pull", "--detach"):
        assert option in cap.stdout
    usage = cap.stdout.splitlines()[2:4]
    assert usage[0].strip().startswith("%%aigrid infer --model MODEL (--slo LATENCY | --deadline")
    assert usage[1].strip().startswith("%aigrid infer --model MODEL")  # not argparse's %a
    doc = ip.find_cell_magic("aigrid").__doc__
    assert "In [12]: %%aigrid infer --model resnet50 --slo 50ms --qos realtime" in doc
    assert "%aigrid profiles [--model MODEL]" in doc


def test_qos_class_reaches_the_master_and_the_widget(ip, server):
    handle = ip.run_cell_magic(
        "aigrid", "infer --model tiny-mlp --slo 50ms --qos realtime --detach", SERVE_CELL
    )
    with capture_output():
        ip.run_line_magic("aigrid", f"wait {handle.id}")
    client = server.client()
    job = client.job(handle.id)
    assert job["spec"]["qos"] == "realtime"
    # The master may read the job's reports just after it ends.
    job = _until(
        lambda: (j := client.job(handle.id))["inference"]["observed"] and j,
        timeout_s=30,
        what="the observed latencies",
    )
    info = job["inference"]
    assert (info["model"], info["qos"], info["slo"]) == ("tiny-mlp", "realtime", {"latency_ms": 50})
    assert info["resource"] == "cpu"  # no --gpus: a CPU job
    assert info["observed"]["count"] == 20 and info["slo_met"] in (True, False)
    handle.widget.update(job)
    line = handle.widget._timeline.value
    assert handle.widget.qos == "realtime" and "on <b>cpu</b>" in line
    assert ("SLO met" if info["slo_met"] else "SLO missed") in line


def test_profiles_magic_shows_what_the_master_learnt(ip, server):
    assert ip.run_line_magic("aigrid", "profiles").payload["resources"]
    with capture_output():
        ip.run_cell_magic("aigrid", "infer --model sim-mlp --slo 50ms --gpus 1", SERVE_CELL)
    client = server.client()
    _until(lambda: client.profiles("sim-mlp")["profiles"], timeout_s=30, what="a profile")
    widget = ip.run_line_magic("aigrid", "profiles --model sim-mlp --slo 50ms")
    assert isinstance(widget, ProfileWidget)
    rows = widget.payload["profiles"]
    assert {(r["model"], r["resource"]) for r in rows} == {("sim-mlp", "simulated")}
    assert rows[0]["count"] >= 20
    assert "SIMULATED" in widget._table.value and "aigrid-slo" in widget._plots.value
    assert widget.refresh()["profiles"][0]["model"] == "sim-mlp"
    everything = ip.run_line_magic("aigrid", "profiles")
    assert "sim-mlp" in {r["model"] for r in everything.payload["profiles"]}


# -- the ProfileWidget from a payload -----------------------------------------------------------


def _row(model: str, resource: str, p50: float | None, p95: float | None, **kw: Any) -> dict:
    count = kw.pop("count", 0 if p95 is None else 500)
    return {
        "model": model,
        "resource": resource,
        "count": count,
        "ewma_ms": None if p50 is None else p50 * 1.1,
        "p50_ms": p50,
        "p95_ms": p95,
        "throughput": kw.pop("throughput", None),
        "run_s": None,
        "updated_at": 1_790_000_000.0,
        "cost_per_hour": kw.pop("cost", 1.0),
    }


H100 = "NVIDIA H100 80GB HBM3"
PAYLOAD = {
    "profiles": [
        _row("resnet50", H100, 20.0, 50.0, throughput=850.0, cost=3.0),
        _row("resnet50", "simulated:a100", 12.5, 25.0),
        _row("resnet50", "cpu", 180.0, 400.0, cost=0.1),
        _row("resnet50", "NVIDIA A10", None, None, cost=0.8),  # known, never measured
        _row("bert", "cpu", 30.0, 45.0, cost=0.1),
    ],
    "resources": [
        {"resource": H100, "cost_per_hour": 3.0, "gpus": 8, "free": 2},
        {"resource": "simulated:a100", "cost_per_hour": 1.0, "gpus": 4, "free": 4},
        {"resource": "cpu", "cost_per_hour": 0.1, "gpus": 0, "free": 0},
    ],
}


def _plots(widget: ProfileWidget) -> dict[str, ET.Element]:
    """Each model's plot, parsed (the SVG must be well-formed XML)."""
    found = {}
    html = widget._plots.value
    start = 0
    while (start := html.find("<svg", start)) >= 0:
        end = html.index("</svg>", start) + len("</svg>")
        svg = ET.fromstring(html[start:end])
        title = svg.find(f"{SVG}text").text
        found[title] = svg
        start = end
    return found


def _bars(svg: ET.Element, cls: str) -> dict[str, ET.Element]:
    return {
        g.get("data-resource"): rect
        for g in svg.iter(f"{SVG}g")
        for rect in g.iter(f"{SVG}rect")
        if rect.get("class") == cls
    }


def test_profile_plot_draws_the_slo_at_its_height():
    widget = ProfileWidget(payload=PAYLOAD, slo_ms=50.0)
    plots = _plots(widget)
    assert set(plots) == {"resnet50", "bert"}
    svg = plots["resnet50"]
    (slo,) = [line for line in svg.iter(f"{SVG}line") if line.get("class") == "aigrid-slo"]
    slo_y = float(slo.get("y1"))
    assert slo.get("y2") == slo.get("y1")  # horizontal
    p95 = _bars(svg, "aigrid-p95")
    assert set(p95) == {H100, "simulated:a100", "cpu"}  # nothing drawn for the unmeasured A10
    # The H100's p95 is exactly the SLO: its bar ends on the line.
    assert float(p95[H100].get("y")) == pytest.approx(slo_y, abs=0.01)
    baseline = float(p95[H100].get("y")) + float(p95[H100].get("height"))
    # 25 ms is half the SLO: half as high; 400 ms is 8 times as high.
    assert float(p95["simulated:a100"].get("height")) == pytest.approx((baseline - slo_y) / 2, 0.01)
    assert float(p95["cpu"].get("height")) == pytest.approx((baseline - slo_y) * 8, 0.01)
    assert PAD_TOP <= float(p95["cpu"].get("y")) < slo_y
    assert baseline < PLOT_HEIGHT
    assert {r.get("data-ms") for r in _bars(svg, "aigrid-p50").values()} == {"20", "12.5", "180"}
    assert "no data" in "".join(svg.itertext())
    # bert's plot has its own scale: the SLO sits above its 45 ms p95 bar.
    bert = plots["bert"]
    (bert_slo,) = [ln for ln in bert.iter(f"{SVG}line") if ln.get("class") == "aigrid-slo"]
    assert float(bert_slo.get("y1")) < float(_bars(bert, "aigrid-p95")["cpu"].get("y"))


def test_the_slo_line_stays_on_the_plot_when_it_is_above_every_bar():
    svg = ET.fromstring(profile_plot_svg([_row("m", "cpu", 1.0, 2.0)], slo_ms=1000.0, title="m"))
    (slo,) = [line for line in svg.iter(f"{SVG}line") if line.get("class") == "aigrid-slo"]
    bar = _bars(svg, "aigrid-p95")["cpu"]
    assert PAD_TOP <= float(slo.get("y1")) < float(bar.get("y"))
    without = ET.fromstring(profile_plot_svg([_row("m", "cpu", 1.0, 2.0)], title="m"))
    assert not [ln for ln in without.iter(f"{SVG}line") if ln.get("class") == "aigrid-slo"]


def test_simulated_resources_are_labelled_everywhere():
    widget = ProfileWidget(payload=PAYLOAD, model="resnet50", slo_ms=50.0)
    svg = _plots(widget)["resnet50"]
    groups = {g.get("data-resource"): g for g in svg.iter(f"{SVG}g")}
    assert groups["simulated:a100"].get("class") == "aigrid-simulated"
    assert "SIMULATED" in "".join(groups["simulated:a100"].itertext())
    assert groups[H100].get("class") is None and "SIMULATED" not in "".join(groups[H100].itertext())
    rows = widget._table.value.split("<tr>")[2:]
    sim_row = next(r for r in rows if "simulated:a100" in r)
    h100_row = next(r for r in rows if H100 in r)
    cpu_row = next(r for r in rows if ">cpu<" in r and "resnet50" in r)  # 400 ms
    assert "SIMULATED" in sim_row and "SIMULATED" not in h100_row + cpu_row
    assert ">meets<" in sim_row and ">meets<" in h100_row and ">misses<" in cpu_row
    assert "SIMULATED" in widget._notes.value and "CPU slots" in widget._notes.value
    text = repr(widget)
    assert "simulated:a100 (SIMULATED)" in text and f"{H100} (SIMULATED)" not in text


def test_table_and_text_fallback_carry_every_number():
    widget = ProfileWidget(payload=PAYLOAD, slo_ms=50.0)
    table = widget._table.value
    for cell in ("850.0/s", "3.00/h", "0.10/h", "12.5 ms", "400 ms", "22 ms", ">500<"):
        assert cell in table, cell
    text = widget._repr_mimebundle_()["text/plain"]
    lines = text.splitlines()
    assert lines[0] == "SLO p95 50 ms"
    assert lines[1].split() == [
        "MODEL",
        "RESOURCE",
        "COUNT",
        "P50",
        "P95",
        "EWMA",
        "THROUGHPUT",
        "COST/H",
        "SLO",
    ]
    h100 = next(line for line in lines if H100 in line).split()
    assert h100[5:] == ["500", "20", "ms", "50", "ms", "22", "ms", "850.0/s", "3.00/h", "meets"]
    assert next(ln for ln in lines if "A10" in ln).split()[-3:] == ["-", "0.80/h", "?"]
    # bert first (models in name order), then resnet50 fastest p95 first, unmeasured last.
    assert [line.split()[0] for line in lines[2:]] == ["bert"] + ["resnet50"] * 4
    assert "A10" in lines[-1]
    assert len(text) > 110  # ipywidgets would cut it there


def test_an_empty_payload_says_how_profiles_are_made():
    for payload in ({"profiles": [], "resources": []}, {}):
        widget = ProfileWidget(payload=payload, model="resnet50", slo_ms=50.0)
        assert "no latency profiles of model resnet50 yet" in widget._plots.value
        assert "runtime.report(latency_ms=" in widget._plots.value
        assert widget._table.value == "" and "<svg" not in widget._plots.value
        assert repr(widget).startswith("no latency profiles of model resnet50 yet")
    assert profiles_text({}).startswith("no latency profiles yet")
    assert profile_plot_svg([]) == ""


def test_a_payload_widget_cannot_refresh_and_a_widget_needs_one_or_the_other():
    widget = ProfileWidget(payload=PAYLOAD)
    assert widget._button.disabled
    with pytest.raises(RuntimeError, match="no client"):
        widget.refresh()
    with pytest.raises(ValueError, match="needs a client"):
        ProfileWidget()


def test_client_profiles_or_a_clear_error_from_a_master_without_them(server):
    client = server.client()
    error: AIGridError | None = None
    try:
        payload = client.profiles(model="resnet50")
    except AIGridError as e:
        error, payload = e, {}
    if error is not None:  # a master without GET /profiles: not its HTML "page not found"
        assert error.status == 404 and "does not serve profiles" in str(error)
        assert "<" not in str(error)
    else:
        assert set(payload) >= {"profiles", "resources"}
        assert all(r["model"] == "resnet50" for r in payload["profiles"])


# -- the job widget's inference line ------------------------------------------------------------


def _inference_job(server, **inference: Any) -> dict[str, Any]:
    """A real job record of an inference job, with the ``inference`` field of the contract."""
    client = server.client()
    job = client.submit(
        {"code": "pass", "kind": "inference", "model": "resnet50", "slo": {"latency_ms": 50}}
    )
    job = client.wait(job["id"], timeout_s=60)
    record = {
        "model": "resnet50",
        "qos": "realtime",
        "slo": {"latency_ms": 50, "deadline_s": 600},
        "resource": H100,
        "predicted_p95_ms": 41.0,
        "reason": "meets_slo",
        "observed": {
            "count": 1200,
            "p50_ms": 22.0,
            "p95_ms": 47.0,
            "mean_ms": 25.0,
            "items": 4800,
            "throughput": 850.0,
        },
        "slo_met": True,
    }
    return {**job, "inference": {**record, **inference}}


def test_job_widget_shows_the_choice_and_whether_the_slo_was_met(server):
    job = _inference_job(server)
    widget = JobWidget(server.client(), job, follow=False)
    assert widget.inference["resource"] == H100 and widget.qos == "realtime"
    line = widget._timeline.value
    for part in (
        "QoS <b>realtime</b>",
        "SLO p95 &le; 50 ms, deadline 10 m",
        f"on <b>{H100}</b>",
        "predicted to meet the SLO at least cost",
        "p95 predicted 41 ms, observed 47 ms (1200 reports, 850.0/s)",
        ">SLO met</span>",
    ):
        assert part in line, part
    assert "SIMULATED" not in line
    assert "QoS realtime" in widget._header.value

    widget.update(
        _inference_job(
            server, resource="simulated:a100", reason="best_effort", slo_met=False, qos="batch"
        )
    )
    line = widget._timeline.value
    assert ">SLO missed</span>" in line and "SIMULATED" in line and "best effort" in line
    assert widget.qos == "batch"

    widget.update(_inference_job(server, resource=None, observed=None, slo_met=None))
    line = widget._timeline.value
    assert "resource not chosen yet" in line and ">SLO not known yet</span>" in line
    assert "p95 predicted 41 ms, observed -" in line


def test_job_widget_has_no_inference_line_for_training_jobs(server):
    client = server.client()
    job = client.wait(client.submit({"code": "pass"})["id"], timeout_s=60)
    widget = JobWidget(client, job, follow=False)
    assert widget.inference is None and "aigrid-inference" not in widget._timeline.value
    assert widget.qos == job["qos"]
