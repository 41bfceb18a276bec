"""Every state change and placement is emitted through the server's jupyter_events logger."""

from __future__ import annotations

from jupyter_aigrid.server import events


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
    assert final["previous_state"] == "running" and final["name"] == "evented"


async def test_events_are_also_stored(api, aigrid_master):
    job = await api.submit({"code": "raise SystemExit(2)"})
    await api.wait(job["id"])
    stored = aigrid_master.store.events(job["id"])
    assert [e["data"]["state"] for e in stored] == ["queued", "starting", "running", "failed"]
    assert "exited with code 2" in stored[-1]["data"]["reason"]
