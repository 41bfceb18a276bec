"""Every state change and placement is emitted through the server's jupyter_events logger."""

from __future__ import annotations

import json

import pytest

from jupyter_aigrid.server import events
from jupyter_aigrid.server.errors import NotFound


async def test_state_and_placement_events(api, jp_serverapp):
    seen: list[tuple[str, dict]] = []

    async def listener(logger, schema_id: str, data: dict) -> None:
        seen.append((schema_id, dict(data)))

    for schema_id in events.SCHEMA_IDS:
        jp_serverapp.event_logger.add_listener(schema_id=schema_id, listener=listener)
    job = await api.submit({"code": "print(1)", "gpus": 2, "name": "evented"})
    await api.wait(job["id"])
    await api.wait(job["id"])  # lets the listener tasks scheduled by the last emit run

    states = [d["state"] for s, d in seen if s == events.JOB_STATE and d["job_id"] == job["id"]]
    assert states == ["queued", "starting", "running", "succeeded"]
    placements = [d for s, d in seen if s == events.JOB_PLACEMENT]
    assert len(placements) == 1
    assert [p["rank"] for p in placements[0]["placement"]] == [0, 1]
    assert all(p["simulated"] for p in placements[0]["placement"])
    final = next(d for s, d in seen if s == events.JOB_STATE and d["state"] == "succeeded")
    assert final["previous_state"] == "running"
    # The bus is every user's: names, owners and reasons are read over REST by who may.
    assert not {"name", "owner", "reason"} & set(final)


async def test_events_are_also_stored(api, aigrid_master):
    job = await api.submit({"code": "raise SystemExit(2)"})
    await api.wait(job["id"])
    stored = [
        e for e in aigrid_master.store.events(job["id"]) if e["schema_id"] == events.JOB_STATE
    ]
    assert [e["data"]["state"] for e in stored] == ["queued", "starting", "running", "failed"]
    assert "exited with code 2" in stored[-1]["data"]["reason"]


def _ndjson(resp) -> list[dict]:
    return [json.loads(line) for line in resp.body.decode().splitlines() if line.strip()]


async def test_events_endpoint_reads_back_and_follows_a_job(api):
    first = await api.call("GET", "events", raw=True)
    start = int(first.headers["X-AIGrid-Seq"])
    assert _ndjson(first) == []  # without since: only the position
    job = await api.submit({"code": "print(1)", "gpus": 2})
    # Following one job ends once it has ended, with every event of it sent.
    followed = _ndjson(
        await api.call(
            "GET",
            "events",
            params={"job": job["id"], "since": start, "follow": 1},
            raw=True,
            request_timeout=60,
        )
    )
    assert [(e["type"], e["data"].get("state")) for e in followed] == [
        ("job_state", "queued"),
        ("job_state", "starting"),
        ("job_placement", None),
        ("job_state", "running"),
        ("job_state", "succeeded"),
    ]
    seqs = [e["seq"] for e in followed]
    assert seqs == sorted(seqs) and seqs[0] > start
    placement = followed[2]["data"]["placement"]
    assert placement == [
        {k: s[k] for k in ("rank", "node", "local_rank")}
        | {"gpus": [g["index"] for g in s["gpus"]], "simulated": True}
        for s in (await api.job(job["id"]))["placement"]
    ]
    again = _ndjson(await api.call("GET", "events", params={"since": start}, raw=True))
    assert [e["seq"] for e in again] == seqs


async def test_other_users_see_ids_and_states_only(api, aigrid_master):
    job = await api.submit({"code": "print(1)", "name": "secret-name"})
    await api.wait(job["id"])
    mine, _ = await aigrid_master.events("root-or-whoever", admin=True, since=0)
    theirs, _ = await aigrid_master.events("mallory", admin=False, since=0)
    assert [e["seq"] for e in theirs] == [e["seq"] for e in mine]
    assert any(e["data"].get("name") == "secret-name" for e in mine)
    for event in theirs:
        assert set(event["data"]) <= {"job_id", "state", "previous_state", "attempt", "gpus"}
    with pytest.raises(NotFound):
        await aigrid_master.events("mallory", admin=False, since=0, job_id=job["id"])


async def test_event_query_errors(api):
    status, body = await api.error("GET", "events", params={"since": "-1"})
    assert (status, body["field"]) == (400, "since")
    status, body = await api.error("GET", "events", params={"job": "999"})
    assert status == 404


async def test_rolled_back_events_are_never_emitted(api, aigrid_master, jp_serverapp):
    seen: list[dict] = []

    async def listener(logger, schema_id: str, data: dict) -> None:
        seen.append(dict(data))

    jp_serverapp.event_logger.add_listener(schema_id=events.JOB_STATE, listener=listener)
    job = await api.submit({"code": "pass"})
    await api.wait(job["id"])
    stored = len(aigrid_master.store.events(job["id"]))

    def fails_after_recording() -> None:
        with aigrid_master.store.write():
            data = {"job_id": job["id"], "state": "preempted"}
            aigrid_master.journal.record(events.JOB_STATE, job["id"], data)
            raise RuntimeError("the transaction fails")

    with pytest.raises(RuntimeError):
        await aigrid_master.call(fails_after_recording)
    await api.wait(job["id"])
    assert len(aigrid_master.store.events(job["id"])) == stored
    assert "preempted" not in [d["state"] for d in seen]


async def test_a_long_backlog_is_sent_whole(api, aigrid_master):
    job = await api.submit({"code": "pass"})
    await api.wait(job["id"])

    def many() -> None:
        with aigrid_master.store.write():
            for i in range(2500):
                aigrid_master.journal.record(
                    events.JOB_STATE, job["id"], {"job_id": job["id"], "state": "queued", "n": i}
                )

    await aigrid_master.call(many)
    followed = _ndjson(
        await api.call(
            "GET", "events", params={"job": job["id"], "since": 0, "follow": 1}, raw=True
        )
    )
    assert len(followed) == len(aigrid_master.store.events(job["id"])) > 2500
