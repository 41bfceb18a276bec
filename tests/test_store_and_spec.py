"""The store's durability settings and schema version; spec defaults and derivation."""

from __future__ import annotations

import sqlite3

import pytest

from jupyter_aigrid.server.spec import SpecError, validate
from jupyter_aigrid.server.store import SCHEMA_VERSION, Store


def test_store_is_durable_and_versioned(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.schema_version() == SCHEMA_VERSION
    tables = set(store.db.table_names())
    assert {"jobs", "replicas", "nodes", "gpus", "events", "meta"} <= tables
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
            store.update_job(job["id"], state="running")
            raise RuntimeError("crash mid-transaction")

    with pytest.raises(RuntimeError):
        crash_mid_transaction()
    assert store.job(job["id"])["state"] == "queued"
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


def test_a_version_1_database_gains_the_new_columns(tmp_path):
    path = tmp_path / "db.sqlite"
    store = Store(path)
    job = store.insert_job(
        {"name": "old", "owner": "u", "kind": "training", "state": "queued", "priority": "normal",
         "gpus": 0, "replicas": 1, "spec": {"code": "pass"}, "submitted_at": 1.0}
    )  # fmt: skip
    store.close()
    raw = sqlite3.connect(path)
    raw.execute("ALTER TABLE jobs DROP COLUMN attained_gpu_s")
    raw.execute("ALTER TABLE jobs DROP COLUMN description")
    raw.execute("ALTER TABLE jobs DROP COLUMN inference")
    raw.execute("ALTER TABLE jobs DROP COLUMN prediction")
    raw.execute("DROP TABLE profiles")
    raw.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION == 7
    tables = {"datasets", "dataset_versions", "dataset_locations", "profiles"}
    assert tables <= set(store.db.table_names())
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
    assert store.job(job["id"])["name"] == "old"  # nothing lost
    store.close()
