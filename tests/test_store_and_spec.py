"""The store's durability settings and schema version; spec defaults and derivation."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from jupyter_aigrid.server.records import Job, Migration
from jupyter_aigrid.server.schema import NAMES, SCHEMA_VERSION
from jupyter_aigrid.server.spec import SpecError, validate
from jupyter_aigrid.server.states import Stop
from jupyter_aigrid.server.store import Store
from jupyter_aigrid.server.validation import validate_body
from jupyter_aigrid.vocabulary import JobState


def test_store_is_durable_and_versioned(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.schema_version() == SCHEMA_VERSION
    tables = set(store.db.table_names())
    assert {"jobs", "replicas", "events", "meta"} <= tables
    assert "STRICT" in store.db["jobs"].schema.upper()
    store.close()


def test_a_failed_write_changes_nothing(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    row = {
        "name": "a",
        "owner": "u",
        "kind": "training",
        "state": "queued",
        "priority": "normal",
        "gpus": 0,
        "replicas": 1,
        "spec": {},
        "submitted_at": 1.0,
    }
    job = store.insert_job(row)

    def crash_mid_transaction():
        with store.write():
            store.update_job(job.id, state="starting")
            raise RuntimeError("crash mid-transaction")

    with pytest.raises(RuntimeError):
        crash_mid_transaction()
    assert store.job(job.id).state == "queued"
    store.close()


def test_a_job_row_is_a_typed_record_and_an_unknown_column_is_an_error(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    fields = {"owner": "u", "state": "queued", "spec": {"code": "pass"}, "submitted_at": 1.0}
    job = store.insert_job({**fields, "placement": [{"rank": 0, "node": "n"}]})
    assert isinstance(job, Job) and store.jobs() == [job]
    assert (job.id, job.seq, job.attempt, job.restarts) == ("1", 1, 0, 0)
    assert job.state is JobState.QUEUED
    assert job.placement == [{"rank": 0, "node": "n"}] and job.migration is None
    assert Migration.of(job) is None and not job.settled and job.stopping is None
    store.update_job(job.id, state="starting")
    store.update_job(job.id, state="running", pending_state="failed")
    running = store.job(job.id)
    assert (running.state, running.stopping, running.settled) == ("running", Stop.FAIL, False)
    assert replace(running, pending_state=None).settled
    with pytest.raises(ValueError, match=r"unknown columns \['colour'\]"):
        Job.from_row({**fields, "id": "2", "seq": 2, "colour": "red"})
    store.close()


def test_one_master_per_database(tmp_path):
    first = Store(tmp_path / "db.sqlite")
    with pytest.raises(RuntimeError, match=r"another AI Grid master \(pid \d+\) is using"):
        Store(tmp_path / "db.sqlite")
    first.close()
    Store(tmp_path / "db.sqlite").close()


def test_newer_schema_is_refused(tmp_path):
    Store(tmp_path / "db.sqlite").close()
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="schema version 99"):
        Store(tmp_path / "db.sqlite")


def test_spec_defaults_and_derivation():
    spec = validate({"code": "pass", "gpus": 4, "gpus_per_replica": 2})
    assert (spec["replicas"], spec["gpus_per_replica"], spec["gpus"]) == (2, 2, 4)
    assert spec["priority"] == "normal" and spec["max_restarts"] == 0
    assert spec["cpus_per_replica"] == 1 and spec["name"] == "job"
    cpu = validate({"command": ["true"], "replicas": 3})
    assert (cpu["replicas"], cpu["gpus"], cpu["gpus_per_replica"]) == (3, 0, 0)
    derived = validate({"code": "pass", "replicas": 2, "gpus_per_replica": 2})
    assert derived["gpus"] == 4


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"code": "pass", "gpus": 2, "replicas": 3}, "gpus"),
        ({"code": "pass", "replicas": 2, "nodes": 3}, "nodes"),
        ({"command": ["x"], "args": ["y"]}, "args"),
        ({"code": "pass", "template": "single", "replicas": 2}, "template"),
        ({"code": "pass", "slo": {"latency_ms": 5, "p99": 1}}, "slo.p99"),
        ({"code": "pass", "workdir": "relative/dir"}, "workdir"),
        ({"code": "pass", "env": {"NVIDIA_VISIBLE_DEVICES": "all"}}, "env.NVIDIA_VISIBLE_DEVICES"),
        ({"code": "pass", "privileged": True}, "privileged"),
        ({"code": "pass", "volumes": ["/:/host"]}, "volumes"),
    ],
)
def test_spec_rules_name_the_field(raw, field):
    with pytest.raises(SpecError) as info:
        validate(raw)
    assert info.value.field == field


FIXTURES = Path(__file__).parent / "fixtures" / "store"
SHIPPED = sorted(int(p.stem[1:]) for p in FIXTURES.glob("v*.sql"))


def _old_database(tmp_path: Path, version: int) -> Path:
    """The database a jupyter-aigrid of schema ``version`` wrote (one succeeded job, "old")."""
    path = tmp_path / "db.sqlite"
    raw = sqlite3.connect(path)
    raw.executescript((FIXTURES / f"v{version}.sql").read_text())
    raw.close()
    return path


def test_every_shipped_version_has_a_fixture():
    assert list(range(1, 8)) == SHIPPED


@pytest.mark.parametrize("version", SHIPPED)
def test_a_database_of_every_shipped_version_upgrades(tmp_path, version):
    path = _old_database(tmp_path, version)
    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION
    tables = {"datasets", "dataset_versions", "dataset_locations", "profiles", "images"}
    assert tables <= set(store.db.table_names())
    assert not {"nodes", "gpus"} & set(store.db.table_names())  # never read: dropped
    assert {
        "attained_gpu_s",
        "description",
        "migration",
        "checkpoint",
        "retry_at",
        "staging",
        "inference",
        "prediction",
    } <= set(store.db["jobs"].columns_dict)
    assert store.job("1").name == "old"  # nothing lost
    assert len(store.cluster_id()) == 12  # version 1 had none
    assert store.images()  # the catalog is seeded where a version had none
    applied = store.db.execute("SELECT name, applied_at FROM _sqlite_migrations").fetchall()
    assert [name for name, _ in applied] == NAMES
    store.close()
    store = Store(path)  # every step ran once: opening again applies nothing
    again = store.db.execute("SELECT name, applied_at FROM _sqlite_migrations").fetchall()
    assert again == applied
    assert store.job("1").state == "succeeded"
    store.close()


def test_a_database_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "db.sqlite"
    Store(path).close()
    raw = sqlite3.connect(path)
    raw.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
        "VALUES ('jupyter_aigrid', '999_from_the_future', '2030-01-01')"
    )
    raw.commit()
    raw.close()
    with pytest.raises(RuntimeError, match=r"999_from_the_future.*upgrade jupyter-aigrid"):
        Store(path)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"files": [{"path": "a", "size": 1}]}, "name", "is required"),
        ({"name": "d", "files": []}, "files", "should be non-empty"),
        ({"name": "d", "files": [{"path": "a", "size": -1}]}, "files.0.size", "minimum"),
        ({"name": "d", "files": [{"path": "a", "size": True}]}, "files.0.size", "integer"),
        ({"name": "d", "files": [{"path": "a", "size": 1, "x": 1}]}, "files.0.x", "unknown"),
        ({"name": "d", "files": [{"path": "a", "size": 1, "hash": "AB"}]}, "files.0.hash", "match"),
    ],
)
def test_request_bodies_are_checked_against_the_openapi_schema(body, field, words):
    with pytest.raises(SpecError) as info:
        validate_body("UploadRequest", body, "the upload")
    assert info.value.field == field
    assert words in info.value.message, info.value.message
