"""The store's dataset tables: datasets, their versions (by root hash) and every location.

Mixed into :class:`~jupyter_aigrid.server.store.Store`; like the rest of the store, only the
master's thread calls it, and every write happens inside ``Store.write()``.
"""

from __future__ import annotations

import json
import time
from typing import Any

#: The states of a copy of a dataset version on a node.
VERIFIED, CORRUPT, UNVERIFIED = "verified", "corrupt", "unverified"
LOCATION_STATES = (VERIFIED, CORRUPT, UNVERIFIED)


def create_tables(db) -> None:
    """Schema version 6: the three dataset tables and ``jobs.staging``."""
    db["datasets"].create(
        {"name": str, "owner": str, "created_at": float},
        pk="name",
        not_null={"owner"},
        if_not_exists=True,
    )
    db["dataset_versions"].create(
        {
            "name": str,
            "version": int,
            "root": str,
            "bytes": int,
            "files": int,
            "manifest": str,
            "created_at": float,
        },
        pk=("name", "version"),
        foreign_keys=[("name", "datasets", "name")],
        if_not_exists=True,
    )
    db["dataset_versions"].create_index(["name", "root"], unique=True, if_not_exists=True)
    db["dataset_locations"].create(
        {
            "name": str,
            "version": int,
            "node": str,
            "path": str,
            # 1: the master made this copy (upload, staging) and deletes it with the dataset;
            # 0: registered where an admin put it, forgotten but never deleted.
            "managed": int,
            "state": str,
            "verified_at": float,
            "error": str,
            "updated_at": float,
        },
        pk=("name", "version", "node"),
        if_not_exists=True,
    )
    if "staging" not in db["jobs"].columns_dict:
        db["jobs"].add_column("staging", str)


class DatasetRows:
    """Reads and writes of the dataset tables (``self.db``: the sqlite-utils Database)."""

    db: Any

    def dataset(self, name: str) -> dict[str, Any] | None:
        for row in self.db["datasets"].rows_where("name = ?", [name]):
            return row
        return None

    def datasets(self) -> list[dict[str, Any]]:
        return list(self.db["datasets"].rows_where(order_by="name"))

    def dataset_versions(self, name: str, manifests: bool = False) -> list[dict[str, Any]]:
        """Versions of ``name``, oldest first (without their manifests unless asked)."""
        rows = []
        for row in self.db["dataset_versions"].rows_where("name = ?", [name], order_by="version"):
            row["manifest"] = json.loads(row["manifest"]) if manifests else None
            rows.append(row)
        return rows

    def dataset_version(self, name: str, version: int) -> dict[str, Any] | None:
        for row in self.db["dataset_versions"].rows_where(
            "name = ? AND version = ?", [name, version]
        ):
            return {**row, "manifest": json.loads(row["manifest"])}
        return None

    def dataset_locations(
        self, name: str | None = None, version: int | None = None
    ) -> list[dict[str, Any]]:
        where, args = [], []
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if version is not None:
            where.append("version = ?")
            args.append(version)
        return list(
            self.db["dataset_locations"].rows_where(
                " AND ".join(where) or None, args, order_by="name, version, node"
            )
        )

    def verified_bytes(self) -> list[tuple[str, str, int, int]]:
        """(node, name, version, bytes) of every verified copy: the locality input."""
        return self.db.execute(
            "SELECT l.node, l.name, l.version, v.bytes FROM dataset_locations l "
            "JOIN dataset_versions v ON v.name = l.name AND v.version = l.version "
            "WHERE l.state = ?",
            [VERIFIED],
        ).fetchall()

    def bytes_owned(self, owner: str) -> int:
        """What ``owner``'s datasets weigh: every version once, however many copies."""
        return self.db.execute(
            "SELECT COALESCE(SUM(v.bytes), 0) FROM dataset_versions v "
            "JOIN datasets d ON d.name = v.name WHERE d.owner = ?",
            [owner],
        ).fetchone()[0]

    def add_dataset_version(
        self, name: str, owner: str, manifest: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """The version of ``name`` with this manifest's root: an existing one, or a new one
        numbered after the last. Returns (version row, created)."""
        now = time.time()
        with self.write():  # type: ignore[attr-defined]
            if self.dataset(name) is None:
                self.db["datasets"].insert({"name": name, "owner": owner, "created_at": now})
            for row in self.db["dataset_versions"].rows_where(
                "name = ? AND root = ?", [name, manifest["root"]]
            ):
                return {**row, "manifest": manifest}, False
            number = self.db.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM dataset_versions WHERE name = ?",
                [name],
            ).fetchone()[0]
            row = {
                "name": name,
                "version": number,
                "root": manifest["root"],
                "bytes": manifest["bytes"],
                "files": manifest["count"],
                "manifest": json.dumps(manifest),
                "created_at": now,
            }
            self.db["dataset_versions"].insert(row)
        return {**row, "manifest": manifest}, True

    def put_location(self, name: str, version: int, node: str, **fields: Any) -> None:
        """Insert or update the copy of ``name@version`` on ``node``."""
        with self.write():  # type: ignore[attr-defined]
            self.db["dataset_locations"].upsert(
                {
                    "name": name,
                    "version": version,
                    "node": node,
                    **fields,
                    "updated_at": time.time(),
                },
                pk=("name", "version", "node"),
            )

    def delete_dataset_versions(self, name: str, versions: list[int]) -> None:
        """Forget these versions (and their locations); the dataset too once none is left."""
        with self.write():  # type: ignore[attr-defined]
            for number in versions:
                args = [name, number]
                self.db.execute(
                    "DELETE FROM dataset_locations WHERE name = ? AND version = ?", args
                )
                self.db.execute("DELETE FROM dataset_versions WHERE name = ? AND version = ?", args)
            left = self.db.execute(
                "SELECT COUNT(*) FROM dataset_versions WHERE name = ?", [name]
            ).fetchone()[0]
            if not left:
                self.db.execute("DELETE FROM datasets WHERE name = ?", [name])
