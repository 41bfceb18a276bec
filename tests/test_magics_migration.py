"""Checkpoint and migration on the notebook side: the client calls, the ``%aigrid checkpoint``
and ``%aigrid migrate`` magics, and the widget's timeline, without a master behind them."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from IPython.core.error import UsageError

from jupyter_aigrid.client import AIGridError, Client
from jupyter_aigrid.magics import AIGridMagics, JobHandle, JobWidget
from jupyter_aigrid.magics.commands import PARSERS
from jupyter_aigrid.magics.job_html import actions_html, checkpoint_html, migration_html
from jupyter_aigrid.magics.magics import checkpoint_requested, migration_started
from jupyter_aigrid.server.records import Job
from jupyter_aigrid.server.views import job_actions, migration_view

HOSTILE = "<script>alert(1)</script>"
NOWHERE = "http://127.0.0.1:9"  # nothing listens: any real request fails at once
T0 = 1_893_456_000.0  # 2030-01-01T00:00:00Z


def _phase(name: str, start: float, took: float | None, size: int | None = None) -> dict:
    """A phase as the master stores it: Unix times, unfinished while ``took`` is None."""
    return {
        "phase": name,
        "started_at": T0 + start,
        "finished_at": None if took is None else T0 + start + took,
        "duration_s": took,
        "bytes": size,
    }


def _migration(state: str, phases: list[dict], now: float = T0 + 60, **extra: Any) -> dict:
    """The job view's ``migration``, made by the master's own view of a stored record (its
    ``steps`` included), as the widget receives it."""
    stored = {
        "id": 1,
        "kind": "migrate",
        "reason": "requested by alice",
        "state": state,
        "from": ["node-0"],
        "to": ["node-1"],
        "checkpoint": "ckpt-00000004.0",
        "phases": phases,
        "error": None,
        "started_at": T0,
        "finished_at": None,
        **extra,
    }
    return migration_view(stored, now)


def _job(state: str = "running", migration: dict | None = None, checkpoint=None) -> dict:
    return {
        "id": "3",
        "name": "train",
        "state": state,
        "spec": {},
        "placement": [],
        "qos": "normal",
        "migration": migration,
        "checkpoint": checkpoint,
    }


def _cells(html: str) -> list[str]:
    """The phase headers of a timeline, in order, as their text."""
    return [h.split(">", 1)[1].split("<", 1)[0] for h in html.split("<th")[1:]]


def _statuses(html: str) -> list[str]:
    """The status of each phase of a timeline, in order (its header's title)."""
    return [h.split('title="', 1)[1].split('"', 1)[0] for h in html.split("<th")[1:]]


# -- rendering ------------------------------------------------------------------------------------


def test_no_migration_renders_nothing():
    assert migration_html(_job()) == ""
    assert migration_html({"id": "3"}) == ""
    assert checkpoint_html(_job()) == ""
    assert checkpoint_html(_job(checkpoint={"listening": False, "latest": None})) == ""


def test_finished_migration_shows_every_phase_with_time_and_bytes():
    phases = [
        _phase("checkpointing", 0, 2.5, 12_345_678),
        _phase("stopping", 3, 1.0),
        _phase("transferring", 4, 3.25, 12_345_678),
        _phase("restoring", 8, 4.0, 12_345_678),
    ]
    html = migration_html(_job(migration=_migration("done", phases, finished_at=T0 + 12)))
    assert _cells(html) == ["checkpointing", "stopping", "transferring", "restoring"]
    assert _statuses(html) == ["done"] * 4
    assert "2.5 s &middot; 12 MiB" in html
    assert "1.0 s &middot; -" in html  # stopping moves no bytes
    assert "3.3 s &middot; 12 MiB" in html
    assert "node-0 &rarr; node-1" in html
    assert "ckpt-00000004.0" in html and "requested by alice" in html
    assert "took 12 s" in html
    assert "&hellip;" not in html  # nothing is running any more
    assert "done" in html


def test_running_phase_is_highlighted_and_later_ones_are_pending():
    phases = [_phase("checkpointing", 0, 2.0, 1000), _phase("stopping", 2, 1.0)]
    phases.append(_phase("transferring", 3, None))
    migration = _migration("transferring", phases, now=T0 + 3 + 4.5)
    html = migration_html(_job(migration=migration))
    assert _cells(html) == ["checkpointing", "stopping", "transferring &hellip;", "restoring"]
    assert _statuses(html) == ["done", "done", "active", "pending"]
    running = html.split("<th")[3]
    assert "#1e88e5" in running  # the active phase's colour
    assert "4.5 s" in html  # its time so far, as the master timed it
    pending = html.split("<th")[4]
    assert "#9e9e9e" in pending


def test_the_widget_draws_the_masters_steps_and_nothing_else():
    # Whatever the phases say, the steps are what is drawn: one rule, on the master.
    migration = _migration("transferring", [_phase("transferring", 0, None)])
    migration["steps"] = [
        {"phase": "checkpointing", "status": "skipped", "duration_s": None, "bytes": None},
        {"phase": "restoring", "status": "failed", "duration_s": 61, "bytes": 2048},
    ]
    html = migration_html(_job(migration=migration))
    assert _cells(html) == ["checkpointing", "restoring &#10007;"]
    assert _statuses(html) == ["skipped", "failed"]
    assert "line-through" in html.split("<th")[1]
    assert "1 m 1 s &middot; 2.0 KiB" in html
    assert "<th" not in migration_html(_job(migration={**migration, "steps": []}))


def test_just_started_migration_highlights_its_state_as_the_phase():
    html = migration_html(_job(migration=_migration("checkpointing", [])))
    assert _cells(html) == ["checkpointing &hellip;", "stopping", "transferring", "restoring"]
    # A resume starts from a checkpoint already written: the master skips the first two.
    resume = _migration(
        "transferring", [], kind="resume", reason="restarting after: node lost", to=[]
    )
    html = migration_html(_job(migration=resume))
    assert _statuses(html) == ["skipped", "skipped", "active", "pending"]
    assert "<b>resume 1</b>" in html


def test_failed_migration_shows_where_and_why():
    phases = [_phase("checkpointing", 0, None)]
    migration = _migration(
        "failed", phases, error="checkpoint timeout after 60 s", finished_at=T0 + 60
    )
    html = migration_html(_job(migration=migration))
    assert _cells(html) == ["checkpointing &#10007;", "stopping", "transferring", "restoring"]
    assert _statuses(html) == ["failed", "skipped", "skipped", "skipped"]  # nothing to come
    assert "#e53935" in html.split("<th")[1]
    assert "1 m &middot; -" in html  # it ran until the migration failed
    assert "<b>error:</b> checkpoint timeout after 60 s" in html
    assert ">failed</span>" in html


def test_everything_from_the_job_is_escaped():
    migration = _migration(
        "failed",
        [_phase("checkpointing", 0, 1.0, 5), _phase("stopping", 1, None)],
        reason=HOSTILE,
        error=HOSTILE,
        checkpoint=HOSTILE,
        to=[HOSTILE],
        id=HOSTILE,
    )
    migration["from"] = HOSTILE
    migration["steps"][0] = {**migration["steps"][0], "phase": HOSTILE, "status": HOSTILE}
    checkpoint = {
        "listening": True,
        "latest": {"name": HOSTILE, "step": HOSTILE, "bytes": HOSTILE, "at": HOSTILE},
        "request": {"id": HOSTILE, "state": HOSTILE, "reason": HOSTILE},
    }
    refused = {"allowed": False, "reason": HOSTILE}
    actions = {"cancel": refused, "checkpoint": refused, "migrate": refused}
    for html in (
        migration_html(_job(migration=migration)),
        checkpoint_html(_job(checkpoint=checkpoint)),
        actions_html({**_job(), "actions": actions}),
    ):
        assert "<script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_checkpoint_line_shows_latest_and_request():
    checkpoint = {
        "listening": True,
        "latest": {"name": "ckpt-00000004.0", "step": 120, "bytes": 2_500_000, "at": "x"},
        "request": {"id": "c3", "state": "pending", "requested_at": "x", "reason": "by alice"},
    }
    html = checkpoint_html(_job(checkpoint=checkpoint))
    assert "<b>ckpt-00000004.0</b> (step 120, 2.4 MiB)" in html
    assert "checkpoint request c3" in html and ">pending</span>" in html and "by alice" in html
    listening = checkpoint_html(_job(checkpoint={"listening": True, "latest": None}))
    assert "none written yet" in listening


def _row(state: str = "running", **extra: Any) -> Job:
    """A stored job, as far as the master's action rule reads it."""
    return Job(id="3", seq=3, owner="u", state=state, spec={}, submitted_at=0.0, **extra)


def test_actions_line_takes_the_masters_word():
    allowed = {**_job(), "actions": job_actions(_row(), listening=True)}
    html = actions_html(allowed)
    assert "<code>%aigrid checkpoint 3</code>" in html and "<code>%aigrid migrate 3</code>" in html
    deaf = {**_job(), "actions": job_actions(_row(), listening=False)}
    html = actions_html(deaf)
    assert "checkpoint: <i>not now, job 3 does not answer checkpoint requests" in html
    assert "should_checkpoint()" in html and "%aigrid migrate" not in html
    pending = {"request": {"state": "pending", "reason": "by alice"}}
    busy = {**_job(), "actions": job_actions(_row(checkpoint=pending), listening=True)}
    assert "already writing a checkpoint (by alice)" in actions_html(busy)
    # A job that is not running says so in its badge; a view without actions shows none.
    queued = {**_job("queued"), "actions": job_actions(_row("queued"), listening=False)}
    assert actions_html(queued) == ""
    assert actions_html(_job()) == ""


def test_widget_shows_the_timeline_and_rereads_on_migration_events():
    client = FakeClient()
    widget = JobWidget(client, _job(migration=_migration("checkpointing", [])), follow=False)
    try:
        assert "checkpointing &hellip;" in widget._timeline.value
        assert "migration checkpointing" in widget._header.value
        # Events are matched on the record's job_id, whatever their type.
        widget._client = client
        client.job_view = _job(
            migration=_migration("transferring", [_phase("transferring", 0, None)]),
            checkpoint={"listening": True, "latest": {"name": "ckpt-7", "step": 7, "bytes": 1}},
        )
        event = {"seq": 9, "type": "job_migration", "job_id": "3", "data": {"state": "x"}}
        assert widget._on_change(event) is False
        assert widget.migration["state"] == "transferring"
        assert "transferring &hellip;" in widget._timeline.value
        assert "ckpt-7" in widget._timeline.value
        client.job_view = _job(migration=None, checkpoint=None)
        widget._on_change({"seq": 10, "type": "job_checkpoint", "job_id": "3", "data": {}})
        assert widget._timeline.value == ""
        # Another job's event is none of its business.
        client.job_view = _job(migration=_migration("done", []))
        widget._on_change({"seq": 11, "type": "job_migration", "job_id": "4", "data": {}})
        assert widget.migration is None
    finally:
        widget.close()


# -- the client ---------------------------------------------------------------------------------


def _response(status: int, body: dict) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = json.dumps(body).encode()
    resp.reason = "Conflict" if status == 409 else "OK"
    return resp


def test_client_posts_checkpoint_and_migrate(monkeypatch):
    client = Client(NOWHERE, "tok")
    sent: list[tuple[str, str, Any]] = []

    def request(method, url, **kwargs):
        sent.append((method, url, json.loads(kwargs["data"])))
        return _response(202, _job())

    monkeypatch.setattr(client.session, "request", request)
    assert client.checkpoint("3")["id"] == "3"
    client.migrate("3")
    client.migrate("3", node="node-1")
    base = f"{NOWHERE}/aigrid/api/jobs/3"
    assert sent == [
        ("POST", f"{base}/checkpoint", {}),
        ("POST", f"{base}/migrate", {}),
        ("POST", f"{base}/migrate", {"node": "node-1"}),
    ]


def test_client_errors_keep_status_and_field(monkeypatch):
    client = Client(NOWHERE, "tok")
    answer = _response(400, {"message": "no node 'x'", "field": "node"})
    monkeypatch.setattr(client.session, "request", lambda *a, **k: answer)
    with pytest.raises(AIGridError) as info:
        client.migrate("3", node="x")
    assert (info.value.status, info.value.field, info.value.message) == (400, "node", "no node 'x'")


# -- the magics -----------------------------------------------------------------------------------


class FakeClient(Client):
    """Answers as the master would, and records what it was asked."""

    def __init__(self) -> None:
        super().__init__(NOWHERE, "tok")
        self.calls: list[tuple] = []
        self.error: AIGridError | None = None
        self.job_view = _job()

    def job(self, job_id: str) -> dict[str, Any]:
        return self.job_view

    def checkpoint(self, job_id: str) -> dict[str, Any]:
        self.calls.append(("checkpoint", job_id))
        if self.error:
            raise self.error
        request = {"id": "c3", "state": "pending", "requested_at": "x", "reason": "by alice"}
        latest = {"name": "ckpt-00000004.0", "step": 120, "bytes": 10, "at": "x"}
        return _job(checkpoint={"listening": True, "latest": latest, "request": request})

    def migrate(self, job_id: str, node: str | None = None) -> dict[str, Any]:
        self.calls.append(("migrate", job_id, node))
        if self.error:
            raise self.error
        return _job(migration=_migration("checkpointing", [], to=[node or "node-1"]))

    def cluster(self) -> dict[str, Any]:
        return {"nodes": [{"name": "node-0"}, {"name": "node-1"}]}


@pytest.fixture
def magics():
    client = FakeClient()
    shown: list[JobWidget] = []
    m = AIGridMagics(None, client=client)

    def run(line: str):
        result = m.aigrid(line)
        if isinstance(result, JobWidget):
            shown.append(result)
        return result

    m.run = run
    yield m
    for widget in shown:
        widget.close()


def test_migrate_magic_passes_the_node_and_confirms(magics, capsys):
    widget = magics.run("migrate 3 --node node-1")
    assert magics.client.calls == [("migrate", "3", "node-1")]
    assert capsys.readouterr().out == (
        "job 3: migration 1 started (checkpointing), node-0 -> node-1\n"
    )
    assert isinstance(widget, JobWidget) and widget.migration["state"] == "checkpointing"
    magics.run("migrate --node=node-0 3")
    magics.run("migrate 3")
    assert magics.client.calls[1:] == [("migrate", "3", "node-0"), ("migrate", "3", None)]


def test_checkpoint_magic_confirms(magics, capsys):
    widget = magics.run("checkpoint 3")
    assert magics.client.calls == [("checkpoint", "3")]
    out = capsys.readouterr().out
    assert out == "job 3: checkpoint c3 requested (pending); latest ckpt-00000004.0 (step 120)\n"
    assert "checkpoint request c3" in widget._timeline.value


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("migrate 3 --nod node-1", ["unrecognized arguments: --nod", "did you mean --node?"]),
        ("migrate 3 --node", ["--node", "expected one argument"]),
        ("migrate", ["the following arguments are required: ID"]),
        ("migrate 3 4", ["unrecognized arguments: 4"]),
        ("checkpoint 3 --node node-1", ["%aigrid checkpoint", "unrecognized arguments: --node"]),
        ("checkpoint", ["the following arguments are required: ID"]),
        ("migrat 3", ["unknown command 'migrat'", "did you mean 'migrate'"]),
    ],
)
def test_misuse_is_a_usage_error_and_asks_nothing(magics, line, words):
    with pytest.raises(UsageError) as info:
        magics.run(line)
    for word in words:
        assert word in str(info.value)
    assert magics.client.calls == []


def test_parsers_directly():
    args = PARSERS["migrate"].parse_args(["7", "--node", "node-1"])
    assert (args.job_id, args.node) == ("7", "node-1")
    assert PARSERS["migrate"].parse_args(["7"]).node is None
    assert PARSERS["checkpoint"].parse_args(["7"]).job_id == "7"


def test_master_refusals_become_usage_errors(magics):
    magics.client.error = AIGridError("job 3 is not running", 409)
    with pytest.raises(UsageError, match=r"^%aigrid migrate: job 3 is not running$"):
        magics.run("migrate 3")
    with pytest.raises(UsageError, match=r"^%aigrid checkpoint: job 3 is not running$"):
        magics.run("checkpoint 3")
    magics.client.error = AIGridError("unknown node 'nod-1'", 400, "node")
    with pytest.raises(UsageError) as info:
        magics.run("migrate 3 --node nod-1")
    assert str(info.value) == (
        "%aigrid migrate: unknown node 'nod-1' (field: node); did you mean node-1? "
        "(nodes: node-0, node-1)"
    )
    magics.client.error = AIGridError("unknown node 'gpu-box'", 400, "node")
    with pytest.raises(UsageError) as info:
        magics.run("migrate 3 --node gpu-box")
    assert str(info.value).endswith("(field: node); nodes: node-0, node-1")


def test_help_lists_the_new_commands():
    doc = AIGridMagics.aigrid.__doc__
    assert "%aigrid checkpoint ID" in doc and "%aigrid migrate ID [--node NODE]" in doc
    assert "--node" in doc


def test_confirmation_lines():
    assert migration_started(_job(migration=None)) == "job 3: migration requested (running)"
    resume = _migration("restoring", [], kind="resume", to=[])
    assert migration_started(_job(migration=resume)) == (
        "job 3: resume 1 started (restoring), node-0 -> ?"
    )
    assert checkpoint_requested(_job()) == "job 3: checkpoint requested (running)"


def test_job_handle_checkpoint_and_migrate():
    client = FakeClient()
    handle = JobHandle(client, _job(), widget=False)
    assert handle.migrate("node-1")["migration"]["state"] == "checkpointing"
    assert handle.job["migration"]["to"] == ["node-1"]
    assert handle.checkpoint()["checkpoint"]["request"]["id"] == "c3"
    assert client.calls == [("migrate", "3", "node-1"), ("checkpoint", "3")]
    client.error = AIGridError("job 3 does not listen for checkpoints", 409)
    with pytest.raises(AIGridError, match="does not listen"):
        handle.migrate()
