"""SQLite through sqlite-utils: the single source of truth of the master.

The database runs in WAL mode with ``synchronous=FULL``, so a job acknowledged to a client
survives a crash or a power cut. Every write happens inside :meth:`Store.write`
(``BEGIN IMMEDIATE``), and only the master's one database thread writes. The schema is built
and upgraded by the steps in :mod:`.schema`, each applied once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from .dataset_rows import DatasetRows
from .records import Job, Replica
from .schema import upgrade
from .states import job_change_allowed, replica_change_allowed

#: Job fields that hold a state machine's state (checked on every write).
_WATCHED_JOB = frozenset({"state", "pending_state", "migration", "checkpoint", "staging"})

#: Columns stored as JSON text, decoded on the way out.
_JSON_COLUMNS = frozenset(
    {
        "spec",
        "description",
        "placement",
        "exit_codes",
        "gpu_indices",
        "data",
        "labels",
        "migration",
        "checkpoint",
        "staging",
        "inference",
        "prediction",
    }
)


#: Most events read (and sent) in one go.
EVENTS_BATCH = 1000
_EVENTS_SINCE = (
    "SELECT e.seq, e.time, e.schema_id, e.job_id, e.data, j.owner FROM events e "
    "LEFT JOIN jobs j ON j.id = e.job_id WHERE e.seq > ? ORDER BY e.seq LIMIT ?"
)
_JOB_EVENTS_SINCE = (
    "SELECT e.seq, e.time, e.schema_id, e.job_id, e.data, j.owner FROM events e "
    "LEFT JOIN jobs j ON j.id = e.job_id WHERE e.seq > ? AND e.job_id = ? "
    "ORDER BY e.seq LIMIT ?"
)


def _decode(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: json.loads(v) if k in _JSON_COLUMNS and v is not None else v for k, v in row.items()}


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        k: json.dumps(v) if k in _JSON_COLUMNS and v is not None else v for k, v in fields.items()
    }


def exclusive_lock(path: Path, what: str = "database"):
    """Hold ``path`` locked for as long as the store is open: one master per database.

    The lock dies with the process, so a master killed with -9 never blocks its successor.
    """
    f = open(path, "a+")  # noqa: SIM115 - held open until close()
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        msg = (
            f"another AI Grid master ({holder}) is using the {what} {path.with_suffix('')}; "
            "stop it, or give this server its own c.AIGridApp.state_dir"
        )
        raise RuntimeError(msg) from None
    f.truncate(0)
    f.write(f"pid {os.getpid()}")
    f.flush()
    return f


class Store(DatasetRows):
    """All persistent state. Not thread-safe by design: one thread owns it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = exclusive_lock(self.path.with_name(self.path.name + ".lock"))
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        self.conn = conn
        self.db = sqlite_utils.Database(conn, strict=True)
        #: Called after the outermost transaction commits / rolls back (on the writer thread).
        self.on_commit: Callable[[], None] | None = None
        self.on_rollback: Callable[[], None] | None = None
        try:
            self._migrate()
        except BaseException:
            self.close()  # a refused database must not keep its lock
            raise

    def close(self) -> None:
        self.conn.close()
        self._lock.close()

    @contextmanager
    def write(self) -> Iterator[Store]:
        """One write transaction, taken with BEGIN IMMEDIATE; commits or rolls back whole."""
        if self.conn.in_transaction:
            yield self
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
            self.conn.execute("COMMIT")  # may fail too (a full disk): then nothing happened
        except BaseException:
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            if self.on_rollback is not None:
                self.on_rollback()
            raise
        if self.on_commit is not None:
            self.on_commit()

    def _migrate(self) -> None:
        with self.write():
            upgrade(self.db, self.path)

    def cluster_id(self) -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key='cluster_id'").fetchone()
        return row[0]

    def schema_version(self) -> int | None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else None

    # -- jobs ---------------------------------------------------------------------------------

    def insert_job(self, fields: dict[str, Any]) -> Job:
        """Store a new job and give it the next id; returns the stored job."""
        with self.write():
            seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            row = {**fields, "id": str(seq), "seq": seq, "restarts": 0, "attempt": 0}
            self.db["jobs"].insert(_encode(row))
        return self.job(row["id"])  # type: ignore[return-value]

    def job(self, job_id: str) -> Job | None:
        for row in self.db["jobs"].rows_where("id = ?", [job_id]):
            return Job.from_row(_decode(row))  # type: ignore[arg-type]
        return None

    def jobs(self, states: tuple[str, ...] | None = None, owner: str | None = None) -> list[Job]:
        where, args = [], []
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        rows = self.db["jobs"].rows_where(" AND ".join(where) or None, args, order_by="seq")
        return [Job.from_row(_decode(r)) for r in rows]  # type: ignore[arg-type]

    def update_job(self, job_id: str, **fields: Any) -> bool:
        """Write ``fields`` of job ``job_id``; False (nothing written) if they would move one
        of its state machines in a way its table forbids (see :mod:`.states`)."""
        with self.write():
            if _WATCHED_JOB.intersection(fields):
                old = self.job(job_id)
                watched = {k: getattr(old, k) for k in _WATCHED_JOB} if old else None
                if watched is not None and not job_change_allowed(job_id, watched, fields):
                    return False
            self.db["jobs"].update(job_id, _encode(fields))
        return True

    # -- replicas -----------------------------------------------------------------------------

    def insert_replicas(self, rows: list[dict[str, Any]]) -> None:
        with self.write():
            self.db["replicas"].insert_all([_encode(r) for r in rows])

    def replicas(self, job_id: str, attempt: int) -> list[Replica]:
        rows = self.db["replicas"].rows_where(
            "job_id = ? AND attempt = ?", [job_id, attempt], order_by="rank"
        )
        return [Replica.from_row(_decode(r)) for r in rows]  # type: ignore[arg-type]

    def last_attempt(self, job_id: str) -> int | None:
        """The highest attempt any replica of the job was started for (None: none was)."""
        row = self.conn.execute(
            "SELECT MAX(attempt) FROM replicas WHERE job_id = ?", [job_id]
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def replica(self, replica_id: str) -> Replica | None:
        for row in self.db["replicas"].rows_where("id = ?", [replica_id]):
            return Replica.from_row(_decode(row))  # type: ignore[arg-type]
        return None

    def replicas_in(self, states: tuple[str, ...]) -> list[Replica]:
        rows = self.db["replicas"].rows_where(
            f"state IN ({','.join('?' * len(states))})", list(states), order_by="job_id, rank"
        )
        return [Replica.from_row(_decode(r)) for r in rows]  # type: ignore[arg-type]

    def update_replica(self, replica_id: str, **fields: Any) -> bool:
        """Write ``fields`` of a replica; False (nothing written) for an illegal state change."""
        with self.write():
            if "state" in fields:
                old = self.replica(replica_id)
                if old is not None and not replica_change_allowed(
                    replica_id, {"state": old.state}, fields
                ):
                    return False
            self.db["replicas"].update(replica_id, _encode(fields))
        return True

    # -- events -------------------------------------------------------------------------------

    def record_event(self, schema_id: str, job_id: str | None, data: dict[str, Any]) -> None:
        with self.write():
            self.db["events"].insert(
                _encode(
                    {"time": time.time(), "schema_id": schema_id, "job_id": job_id, "data": data}
                )
            )

    def events_since(
        self, since: int, job_id: str | None = None, limit: int = EVENTS_BATCH
    ) -> list[dict[str, Any]]:
        """Events after ``since``, oldest first, each with the ``owner`` of its job."""
        if job_id is None:
            rows = self.db.execute(_EVENTS_SINCE, [since, limit]).fetchall()
        else:
            rows = self.db.execute(_JOB_EVENTS_SINCE, [since, job_id, limit]).fetchall()
        keys = ("seq", "time", "schema_id", "job_id", "data", "owner")
        return [{**dict(zip(keys, r, strict=True)), "data": json.loads(r[4])} for r in rows]

    # -- the image catalog ----------------------------------------------------------------------

    def images(self) -> list[dict[str, Any]]:
        return list(self.db["images"].rows_where(order_by="framework, id"))

    def image(self, image_id: str) -> dict[str, Any] | None:
        for row in self.db["images"].rows_where("id = ?", [image_id]):
            return row
        return None

    def put_image(self, entry: dict[str, Any]) -> None:
        with self.write():
            self.db["images"].upsert({**entry, "updated_at": time.time()}, pk="id")

    def delete_image(self, image_id: str) -> bool:
        with self.write():
            return self.db.execute("DELETE FROM images WHERE id = ?", [image_id]).rowcount > 0

    def profiles(self) -> list[dict[str, Any]]:
        """Every stored performance profile (as ``Profile.to_row()`` gave it)."""
        rows = self.conn.execute("SELECT row FROM profiles ORDER BY model, resource").fetchall()
        return [json.loads(r[0]) for r in rows]

    def put_profile(self, row: dict[str, Any]) -> None:
        self.db["profiles"].upsert(
            {
                "model": row["model"],
                "resource": row["resource"],
                "row": json.dumps(row),
                "updated_at": row.get("updated_at") or time.time(),
            },
            pk=("model", "resource"),
        )

    def count_events(self, schema_id: str, state: str) -> int:
        """How many stored events of ``schema_id`` entered ``state``."""
        return self.db.execute(
            "SELECT COUNT(*) FROM events WHERE schema_id = ? AND json_extract(data, '$.state') = ?",
            [schema_id, state],
        ).fetchone()[0]

    def last_event_seq(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        rows = self.db["events"].rows_where("job_id = ?", [job_id], order_by="seq")
        return [_decode(r) for r in rows]  # type: ignore[misc]
