"""The database's schema, as the steps that built it: each one runs once per database.

Steps are sqlite-utils :class:`~sqlite_utils.Migrations`, recorded in ``_sqlite_migrations``
as they are applied, each in the same transaction as its record. A database written before
steps were recorded (``meta.schema_version`` 1 to 7) gets every step once: each checks what
is there before it adds anything, so it is a no-op where an earlier version already did it.
A database with a step this version does not know was written by a newer jupyter-aigrid and
is refused. ``tests/fixtures/store/`` holds a database of every version that shipped, and
``tests/test_store_and_spec.py`` upgrades each one.

To change the schema, append a step (never edit one that shipped) and raise nothing else:
:data:`SCHEMA_VERSION` is the number of steps.
"""

from __future__ import annotations

import time
import uuid

from sqlite_utils import Database, Migrations

from .dataset_rows import create_tables

STEPS = Migrations("jupyter_aigrid")
#: Every step's name, in order.
NAMES: list[str] = []


def step(name: str):
    NAMES.append(name)
    return STEPS(name=name)


def _add_columns(db: Database, table: str, columns: dict[str, type]) -> None:
    have = db[table].columns_dict
    for name, kind in columns.items():
        if name not in have:
            db[table].add_column(name, kind)


@step("001_jobs_replicas_events")
def _jobs_replicas_events(db: Database) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db["jobs"].create(
        {
            "id": str,
            "seq": int,
            "name": str,
            "owner": str,
            "kind": str,
            "state": str,
            "reason": str,
            "priority": str,
            "gpus": int,
            "replicas": int,
            "spec": str,
            "placement": str,
            "exit_codes": str,
            "submitted_at": float,
            "started_at": float,
            "finished_at": float,
            "restarts": int,
            "attempt": int,
            "pending_state": str,
        },
        pk="id",
        not_null={"seq", "owner", "state", "spec", "submitted_at"},
        if_not_exists=True,
    )
    db["jobs"].create_index(["state", "seq"], if_not_exists=True)
    db["jobs"].create_index(["seq"], unique=True, if_not_exists=True)
    db["replicas"].create(
        {
            "id": str,
            "job_id": str,
            "attempt": int,
            "rank": int,
            "local_rank": int,
            "node": str,
            "gpu_indices": str,
            "state": str,
            "pid": int,
            "pid_start": float,
            "exit_code": int,
            "exit_path": str,
            "started_at": float,
            "finished_at": float,
        },
        pk="id",
        foreign_keys=[("job_id", "jobs", "id")],
        if_not_exists=True,
    )
    db["replicas"].create_index(["job_id", "attempt"], if_not_exists=True)
    db["replicas"].create_index(["state"], if_not_exists=True)
    db["events"].create(
        {"seq": int, "time": float, "schema_id": str, "job_id": str, "data": str},
        pk="seq",
        if_not_exists=True,
    )
    db["events"].create_index(["job_id"], if_not_exists=True)


@step("002_cluster_id_and_service")
def _cluster_id_and_service(db: Database) -> None:
    # Job ids restart at 1 in a new database: files are kept under this id so a new job 1
    # never meets an old job 1's logs, code or checkpoints. (Version 1 had none.)
    if db.execute("SELECT 1 FROM meta WHERE key = 'cluster_id'").fetchone() is None:
        db["meta"].insert({"key": "cluster_id", "value": uuid.uuid4().hex[:12]})
    _add_columns(db, "jobs", {"attained_gpu_s": float})  # service before a preemption


@step("003_images")
def _images(db: Database) -> None:
    if "images" in db.table_names():
        return  # seeded when it was made; after that the catalog is the admins'
    db["images"].create(
        {
            "id": str,
            "ref": str,
            "framework": str,
            "framework_version": str,
            "cuda": str,
            "python": str,
            "description": str,
            "updated_at": float,
        },
        pk="id",
        not_null={"ref", "framework"},
    )
    from .images import DEFAULT_IMAGES

    db["images"].insert_all({**i, "updated_at": time.time()} for i in DEFAULT_IMAGES)


@step("004_job_description")
def _job_description(db: Database) -> None:
    _add_columns(db, "jobs", {"description": str})  # the rendered description, with its image


@step("005_checkpoints_and_migration")
def _checkpoints_and_migration(db: Database) -> None:
    # What the master asked for and learnt, the latest move, and the restart backoff.
    _add_columns(db, "jobs", {"migration": str, "checkpoint": str, "retry_at": float})


@step("006_datasets")
def _datasets(db: Database) -> None:
    create_tables(db)  # datasets, their versions and locations; jobs.staging


@step("007_profiles")
def _profiles(db: Database) -> None:
    # Performance profiles; jobs.inference (the resource chosen, predicted and observed
    # latency) and jobs.prediction (a training job's predicted run time).
    db["profiles"].create(
        {"model": str, "resource": str, "row": str, "updated_at": float},
        pk=("model", "resource"),
        if_not_exists=True,
    )
    _add_columns(db, "jobs", {"inference": str, "prediction": str})


@step("008_drop_inventory_tables")
def _drop_inventory_tables(db: Database) -> None:
    # Written at every inventory change and never read: the executor is the inventory.
    for table in ("gpus", "nodes"):
        if table in db.table_names():
            db[table].drop()


SCHEMA_VERSION = len(NAMES)


def upgrade(db: Database, path: object) -> None:
    """Apply every step this database lacks, in order, each once; refuse a newer database."""
    recorded = None
    if "meta" in db.table_names():
        recorded = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    unknown = [m.name for m in STEPS.applied(db) if m.name not in NAMES]
    if unknown or (recorded and int(recorded[0]) > SCHEMA_VERSION):
        newer = ", ".join(unknown) or f"schema version {recorded[0]}"
        msg = (
            f"the database {path} was written by a newer jupyter-aigrid ({newer}; this one "
            f"knows {SCHEMA_VERSION} steps); upgrade jupyter-aigrid"
        )
        raise RuntimeError(msg)
    STEPS.apply(db)
    db["meta"].upsert({"key": "schema_version", "value": str(SCHEMA_VERSION)}, pk="key")
