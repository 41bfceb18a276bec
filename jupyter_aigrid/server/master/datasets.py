"""Datasets: versions by content hash, verified copies on nodes, registration, verification.

:class:`Datasets` is the master's component for them. The store says which versions exist
and where each copy lives; hashing, copying and moving trees run on worker threads, and the
master thread only records what they found. Every node keeps its copies under its dataset
root (``c.AIGridApp.dataset_root``/<node>, default ``<scratch>/datasets``;
:mod:`..dataset_files`). Uploads live in :mod:`.dataset_uploads`; job staging (copying a
version where a gang is placed, verifying copies before use) in :mod:`.data_staging`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ... import contents
from .. import events
from ..dataset_files import MANAGED, VIEWS, remove, sweep_node
from ..dataset_rows import CORRUPT, UNVERIFIED, VERIFIED
from ..errors import Conflict, NotFound
from ..model import FINAL_STATES
from ..records import Job
from ..spec import SpecError
from ..validation import validate_body
from ..views import iso, location_view
from .core import Core, Part

log = logging.getLogger(__name__)

_REF = re.compile(r"^(?P<name>[^@]+)(@(?P<version>[^@]+))?$")


class Datasets(Part):
    """The dataset registry and verification (see the module docstring)."""

    def __init__(
        self,
        core: Core,
        call: Callable[..., Awaitable[Any]],
        root: str = "",
        verify_interval_s: float = 6 * 3600.0,
    ) -> None:
        super().__init__(core)
        #: Runs a function on the master thread (the store's only user), from the event loop.
        self.call = call
        #: Where nodes keep datasets ('' = <scratch>/datasets).
        self.dataset_root = root
        #: Every copy of a dataset is hashed again this often (and before each use).
        self.dataset_verify_interval_s = verify_interval_s
        #: Hashing (uploads, verification) off the master thread.
        self._hasher = ThreadPoolExecutor(2, thread_name_prefix="aigrid-hash")
        #: Copies being verified: (name, version, node) -> future of the problems found.
        self._verifying: dict[tuple[str, int, str], Any] = {}
        self._next_verify_check = 0.0
        #: Uploads being moved into place (not to be verified before they are there).
        self.placing: set[tuple[str, int, str]] = set()

    def close(self) -> None:
        self._hasher.shutdown(wait=True, cancel_futures=True)

    # -- where things are ---------------------------------------------------------------------

    def node_root(self, node: str) -> Path:
        if self.dataset_root:
            return Path(self.dataset_root) / node
        return Path(self.nodes.by_name[node].scratch) / "datasets"

    def location_path(self, loc: dict[str, Any]) -> Path:
        return contents.contained(self.node_root(loc["node"]), loc["path"])

    @staticmethod
    def managed_path(name: str, root: str) -> str:
        return f"{MANAGED}/{name}/{root}"

    # -- reading ------------------------------------------------------------------------------

    def dataset_view(self, name: str) -> dict[str, Any]:
        row = self.store.dataset(name)
        if row is None:
            raise NotFound(f"no dataset {name!r}")
        locations: dict[int, list] = {}
        for loc in self.store.dataset_locations(name):
            locations.setdefault(loc["version"], []).append(location_view(loc))
        versions = [
            {
                "version": v["version"],
                "ref": f"{name}@{v['version']}",
                "root": v["root"],
                "bytes": v["bytes"],
                "files": v["files"],
                "created_at": iso(v["created_at"]),
                "locations": locations.get(v["version"], []),
            }
            for v in self.store.dataset_versions(name)
        ]
        latest = versions[-1] if versions else {}
        return {
            "name": name,
            "owner": row["owner"],
            "created_at": iso(row["created_at"]),
            "latest": latest.get("version"),
            "root": latest.get("root"),
            "bytes": latest.get("bytes", 0),
            "files": latest.get("files", 0),
            "versions": versions,
        }

    def _datasets_view(self) -> list[dict[str, Any]]:
        return [self.dataset_view(d["name"]) for d in self.store.datasets()]

    def _resolve(self, ref: Any, field: str) -> dict[str, Any]:
        """``name``, ``name@N`` or ``name@<root hash prefix>`` -> that version's row."""
        match = _REF.match(ref) if isinstance(ref, str) else None
        if match is None:
            raise SpecError(f"{field} must be NAME, NAME@VERSION or NAME@HASH, got {ref!r}", field)
        name, wanted = match["name"], match["version"]
        try:
            contents.check_name(name, field)
        except contents.ContentError as e:
            raise SpecError(e.message, field) from None
        versions = self.store.dataset_versions(name)
        if not versions:
            known = ", ".join(d["name"] for d in self.store.datasets()[:20]) or "none yet"
            raise SpecError(f"{field}: there is no dataset {name!r} (datasets: {known})", field)
        if wanted is None:
            return versions[-1]
        for v in versions:
            if wanted == str(v["version"]) or (len(wanted) >= 8 and v["root"].startswith(wanted)):
                return v
        have = ", ".join(str(v["version"]) for v in versions)
        msg = (
            f"{field}: dataset {name!r} has no version {wanted!r} (versions {have}, or a "
            "root hash prefix of at least 8 digits)"
        )
        raise SpecError(msg, field)

    def resolve_datasets(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Pin a submitted spec's datasets to versions (``name@N``): later uploads never
        change what a queued job reads."""
        refs = spec.get("datasets") or []
        pinned, names = [], set()
        for i, ref in enumerate(refs):
            field = f"datasets[{i}]"
            version = self._resolve(ref, field)
            if version["name"] in names:
                msg = f"{field}: dataset {version['name']!r} is listed twice"
                raise SpecError(msg, field)
            names.add(version["name"])
            usable = [
                loc
                for loc in self.store.dataset_locations(version["name"], version["version"])
                if loc["state"] != CORRUPT
            ]
            if not usable:
                msg = (
                    f"{field}: {version['name']}@{version['version']} has no usable copy (every "
                    "copy failed verification); upload it again"
                )
                raise SpecError(msg, field, status=409)
            pinned.append(f"{version['name']}@{version['version']}")
        return {**spec, "datasets": pinned} if refs else spec

    def data_on(self) -> dict[str, dict[str, int]]:
        """node -> {name@version -> bytes verified there}: the policies' locality input."""
        data: dict[str, dict[str, int]] = {}
        for node, name, number, size in self.store.verified_bytes():
            data.setdefault(node, {})[f"{name}@{number}"] = size
        return data

    def _users_of(self, name: str, version: int | None = None) -> list[Job]:
        """Unfinished jobs that read ``name`` (any version, or ``version``)."""
        users = []
        for row in self.store.jobs():
            if row.state in FINAL_STATES:
                continue
            for ref in row.spec.get("datasets") or []:
                ref_name, _, number = ref.partition("@")
                if ref_name == name and (version is None or number == str(version)):
                    users.append(row)
                    break
        return users

    # -- changing -----------------------------------------------------------------------------

    def may_write(self, name: str, user: str, admin: bool) -> None:
        row = self.store.dataset(name)
        if row is not None and row["owner"] != user and not admin:
            msg = f"dataset {name!r} belongs to {row['owner']}; only they and admins change it"
            raise SpecError(msg, "name", status=403)

    def check_node(self, node: Any) -> str:
        if node is None:
            return self.nodes.all[0].name
        if node not in self.nodes.by_name:
            known = ", ".join(self.nodes.by_name)
            raise SpecError(f"'node' must be one of {known}, got {node!r}", "node")
        return node

    def record_verified(
        self, name: str, number: int, node: str, problems: list[str], **fields: Any
    ) -> None:
        """What hashing a copy found: verified now, or corrupt (and an event)."""
        now = time.time()
        with self.store.write():
            if self.store.dataset_version(name, number) is None:
                return  # deleted meanwhile
            if problems:
                error = "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "")
                self.store.put_location(name, number, node, state=CORRUPT, error=error, **fields)
                log.warning(
                    "AI Grid: dataset %s@%s on %s is corrupt: %s", name, number, node, error
                )
                self.dataset_event(name, number, node, "corrupt", reason=error)
            else:
                self.store.put_location(
                    name, number, node, state=VERIFIED, verified_at=now, error=None, **fields
                )
                self.dataset_event(name, number, node, "verified")

    def dataset_event(self, name: str, number: int, node: str, state: str, **data: Any) -> None:
        self.journal.record(
            events.DATASET,
            None,
            {"dataset": name, "version": number, "node": node, "state": state, **data},
        )

    def _delete_dataset(
        self, name: str, version: int | None, user: str, admin: bool
    ) -> tuple[list[int], list[tuple[str, Path]]]:
        """Forget ``name`` (or one version) unless a job still needs it; return the versions
        and the copies (ours: node, path) to delete from disk."""
        if self.store.dataset(name) is None:
            raise NotFound(f"no dataset {name!r}")
        self.may_write(name, user, admin)
        numbers = [v["version"] for v in self.store.dataset_versions(name)]
        if version is not None:
            if version not in numbers:
                raise NotFound(f"dataset {name!r} has no version {version}")
            numbers = [version]
        users = self._users_of(name, version)
        if users:
            jobs = ", ".join(f"{r.id} ({r.state})" for r in users[:5])
            raise Conflict(f"dataset {name!r} is in use by job(s) {jobs}; cancel them first")
        trees = []
        with self.store.write():
            for number in numbers:
                for loc in self.store.dataset_locations(name, number):
                    if loc["managed"]:
                        trees.append((loc["node"], self.location_path(loc)))
                    self.dataset_event(name, number, loc["node"], "removed")
            self.store.delete_dataset_versions(name, numbers)
        return numbers, trees

    def _verify_targets(
        self, name: str | None = None, wanted=lambda loc: True
    ) -> list[tuple[dict, dict, Path]]:
        """(location, manifest, path) of every copy (of ``name``) that ``wanted`` accepts;
        only those have their manifests read."""
        targets = []
        for loc in filter(wanted, self.store.dataset_locations(name)):
            version = self.store.dataset_version(loc["name"], loc["version"])
            targets.append((loc, version["manifest"], self.location_path(loc)))
        return targets

    # -- public API (coroutines) --------------------------------------------------------------

    async def in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._hasher, fn, *args)

    async def datasets(self) -> list[dict[str, Any]]:
        return await self.call(self._datasets_view)

    async def dataset(self, name: str) -> dict[str, Any]:
        return await self.call(self.dataset_view, name)

    async def register_dataset(self, body: dict[str, Any], user: str, admin: bool) -> dict:
        """Record data an admin put under a node's dataset root (``{"name", "node",
        "path"}``, ``path`` relative to that root), hashed in place."""
        if not admin:
            raise SpecError("only admins may register data already on a node", "path", 403)
        validate_body("DatasetRegistration", body, "the registration")
        try:
            name = contents.check_name(body.get("name"))
            path = contents.check_relpath(body.get("path"), "path")
        except contents.ContentError as e:
            raise SpecError(e.message, e.field) from None
        if path.split("/")[0] in (MANAGED, VIEWS):
            raise SpecError(f"'path' must not be inside {MANAGED} or {VIEWS}", "path")
        node = self.check_node(body.get("node"))
        try:
            tree = contents.contained(self.node_root(node), path)
        except contents.ContentError as e:
            raise SpecError(e.message, "path") from None
        try:
            is_dir = await self.in_thread(self.node_files.call, node, os.path.isdir, tree)
            if not is_dir:
                raise SpecError(f"'path' {path!r} is not a folder on {node}", "path")
            manifest = await self.in_thread(
                self.node_files.call, node, contents.build_manifest, tree
            )
        except contents.ContentError as e:
            raise SpecError(e.message, "path") from None
        except OSError as e:
            raise SpecError(f"'node' {node} cannot be reached: {e}", "node", 503) from None
        await self.call(self._record_registered, name, node, path, manifest.to_json(), user)
        return await self.call(self.dataset_view, name)

    def _record_registered(self, name, node, path, manifest, user) -> None:
        with self.store.write():
            self.may_write(name, user, admin=True)
            version, _ = self.store.add_dataset_version(name, user, manifest)
            self.store.put_location(
                name, version["version"], node, path=path, managed=0, state=UNVERIFIED
            )
            self.record_verified(name, version["version"], node, [])

    async def delete_dataset(
        self, name: str, version: int | None, user: str, admin: bool
    ) -> dict[str, Any]:
        numbers, trees = await self.call(self._delete_dataset, name, version, user, admin)
        for node, tree in trees:
            with contextlib.suppress(OSError):  # a node that left: its copies went with it
                await self.in_thread(self.node_files.call, node, remove, tree)
        return {"deleted": name, "versions": numbers}

    async def verify_dataset(self, name: str, user: str, admin: bool) -> dict[str, Any]:
        """Hash every copy of ``name`` now (its owner and admins: it costs the cluster a read
        of every copy); record what each one is."""
        await self.call(self.dataset_view, name)  # 404 first
        await self.call(self.may_write, name, user, admin)
        for loc, manifest, path in await self.call(self._verify_targets, name):
            problems = await self.in_thread(
                self._verify_on, loc["node"], path, contents.Manifest.from_json(manifest)
            )
            await self.call(
                self.record_verified, loc["name"], loc["version"], loc["node"], problems
            )
        return await self.call(self.dataset_view, name)

    # -- the loop: periodic verification ------------------------------------------------------

    def _verify_on(self, node: str, path: Path, manifest: contents.Manifest) -> list[str]:
        """A copy's problems, hashed on its node; a node that cannot be reached is one."""
        try:
            return self.node_files.verify_tree(node, path, manifest)
        except OSError as e:
            return [f"{node} cannot be reached: {e}"]

    def verify_due(self, now: float) -> None:
        """Start hashing copies not verified for ``dataset_verify_interval_s`` (and those
        never verified); record what the finished ones found."""
        for key, future in list(self._verifying.items()):
            if future.done():
                del self._verifying[key]
                try:
                    problems = future.result()
                except Exception as e:
                    problems = [f"verification failed: {e}"]
                self.record_verified(*key, problems)
        if now < self._next_verify_check:
            return
        self._next_verify_check = now + min(60.0, self.dataset_verify_interval_s / 4)
        staged = self.memory.having("data_staging")
        staging = {key for _, memory in staged for key in memory.data_staging[2]}

        def due(loc: dict[str, Any]) -> bool:
            key = (loc["name"], loc["version"], loc["node"])
            busy = key in self._verifying or key in staging or key in self.placing
            stale = (loc.get("verified_at") or 0.0) + self.dataset_verify_interval_s <= now
            return loc["state"] != CORRUPT and stale and not busy

        for loc, manifest, path in self._verify_targets(wanted=due):
            key = (loc["name"], loc["version"], loc["node"])
            self._verifying[key] = self._hasher.submit(
                self._verify_on, loc["node"], path, contents.Manifest.from_json(manifest)
            )

    def sweep(self) -> None:
        """After a crash: delete copies of ours that no location names (a delete or a
        staging cut short), and views of jobs that have ended."""
        known = {
            (loc["node"], loc["path"]) for loc in self.store.dataset_locations() if loc["managed"]
        }
        unfinished = {
            self.files.key(r.id) for r in self.store.jobs() if r.state not in FINAL_STATES
        }
        for node in self.nodes.by_name:
            mine = {path for where, path in known if where == node}
            try:
                removed = self.node_files.call(
                    node, sweep_node, self.node_root(node), mine, unfinished
                )
            except OSError as e:
                log.warning("AI Grid: could not tidy the datasets on %s: %s", node, e)
                continue
            for rel in removed:
                log.info("AI Grid: removed %s on %s, which no dataset names", rel, node)
