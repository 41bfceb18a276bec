"""The master's per-job memory: one record per job, gone when the job ends."""

from __future__ import annotations

from concurrent.futures import Future

from jupyter_aigrid.server.memory import Memory


def test_a_record_is_made_on_first_use_and_dropped_when_the_job_ends():
    memory = Memory()
    assert memory.get("1") is None
    memory("1").not_before = 5.0
    memory("1").listening = 0
    assert memory.get("1").not_before == 5.0
    assert [job for job, _ in memory.having("listening")] == []  # attempt 0 is falsy
    memory("2").watching = True
    assert [job for job, _ in memory.having("watching")] == ["2"]
    memory.end("1")
    assert memory.get("1") is None and len(memory) == 1


def test_work_in_flight_keeps_an_ended_job_until_it_is_collected():
    memory = Memory()
    future: Future = Future()
    memory("7").data_staging = (0, future, set())
    memory.end("7")
    assert memory.get("7") is not None  # its staging still runs on a pool thread
    assert memory.count("data_staging") == 1
    future.set_result([])
    for job_id, record in memory.having("data_staging"):
        record.data_staging = None
        memory.settle(job_id)
    assert memory.get("7") is None and len(memory) == 0


def test_clear_unsets_a_field_everywhere_and_settles_ended_jobs():
    memory = Memory()
    memory("a").checkpoint_staging = (1, Future())
    memory("b").checkpoint_staging = (1, Future())
    memory.end("b")
    memory.clear("checkpoint_staging")
    assert memory.count("checkpoint_staging") == 0
    assert memory.get("a") is not None and memory.get("b") is None
