"""Staging: a gang's datasets are verified (or copied) on each of its nodes before it starts.

For every dataset of the job and every node of its placement, in the background:

1. the node's own copy, if it has one, is hashed again (every use is preceded by a
   verification); if it matches, that is the copy the job reads;
2. otherwise (no copy, or a corrupt one, which is marked so and emits an event) a verified
   copy on another node is copied there, through :func:`jupyter_aigrid.contents.copy_tree`,
   which hashes what it wrote: a source that turns out corrupt is marked so, and the next
   verified copy is tried.

The job shows ``phase: staging`` with the bytes done, and then starts (resuming from its
checkpoint if it has one). If no verified copy is left anywhere, it fails with the reason.
:class:`DataStaging` is the master's component for it; the copying runs on the core's pool.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ... import contents
from .. import events
from ..dataset_files import VIEWS, make_view, remove, seal
from ..dataset_rows import CORRUPT, VERIFIED
from ..model import FAILED, STARTING, Placement
from ..records import Job
from .core import Core, Part
from .datasets import Datasets
from .ports import Ending, Launching, Moving

log = logging.getLogger(__name__)
#: Seconds between two staging progress events of one job.
PROGRESS_EVERY_S = 1.0


def _existing(dest: Path, manifest: contents.Manifest) -> bool | None:
    """On a node: is there a good copy at ``dest`` (left by a staging cut short, or another
    job's just now)? None if nothing is there; a bad one is removed (False)."""
    if not os.path.lexists(dest):
        return None
    if not contents.verify_tree(dest, manifest):
        return True
    remove(dest)
    return False


def _stage_one(files, item: dict[str, Any], progress) -> dict[str, Any]:
    """Runs on a staging thread: make ``item``'s node hold a verified copy (see above);
    ``files`` (the executor's node files) does the work on the nodes."""
    manifest = contents.Manifest.from_json(item["manifest"])
    node = item["node"]
    out = {
        "key": item["key"],
        "node": node,
        "path": None,
        "managed": 1,
        "copied_from": None,
        "corrupt": [],
    }
    here = item.get("here")
    if here is not None:
        problems = files.verify_tree(node, Path(here["abs"]), manifest, progress)
        if not problems:
            return {**out, "path": here["path"], "managed": here["managed"]}
        out["corrupt"].append((node, problems))
        if here["managed"]:
            files.call(node, remove, Path(here["abs"]))
    dest = Path(item["dest"])
    if files.call(node, _existing, dest, manifest):
        return {**out, "path": item["dest_path"]}
    errors = []
    for source_node, source in item["sources"]:
        try:
            files.copy_tree(source_node, Path(source), node, dest, manifest, progress)
        except FileExistsError:
            if files.call(node, _existing, dest, manifest):
                return {**out, "path": item["dest_path"]}
            errors.append(f"a bad copy appeared at {item['dest_path']} on {node}")
            continue
        except contents.ContentError as e:
            out["corrupt"].append((source_node, [e.message]))
            continue
        except OSError as e:
            errors.append(f"copying from {source_node} failed: {e}")
            continue
        files.call(node, seal, dest)
        return {**out, "path": item["dest_path"], "copied_from": source_node}
    why = "; ".join(errors) or "no node holds a verified copy"
    return {**out, "error": f"{item['key']} could not be staged to {node}: {why}"}


def stage_items(files, items: list[dict[str, Any]], progress) -> list[dict[str, Any]]:
    out = []
    for item in items:
        try:
            out.append(_stage_one(files, item, progress))
        except OSError as e:  # its node cannot be reached
            why = f"{item['key']} could not be staged to {item['node']}: {e}"
            out.append({"key": item["key"], "node": item["node"], "corrupt": [], "error": why})
    return out


class DataStaging(Part):
    """Staging datasets before a gang starts (see the module docstring)."""

    #: Wired by the master (they call back here): what fails a job, and what starts it.
    lifecycle: Ending
    moves: Moving
    launcher: Launching

    def __init__(self, core: Core, datasets: Datasets) -> None:
        super().__init__(core)
        self.datasets = datasets

    def needs_data(self, row: Job) -> bool:
        return bool(row.spec.get("datasets"))

    def _data_items(self, row: Job) -> list[dict[str, Any]]:
        items = []
        nodes = Placement.from_json(row.placement).nodes
        for key in row.spec["datasets"]:
            name, _, number = key.partition("@")
            version = self.store.dataset_version(name, int(number))
            if version is None:
                continue  # deleted: refused while the job is unfinished, so never
            locations = self.store.dataset_locations(name, int(number))
            sources = sorted(
                (loc for loc in locations if loc["state"] == VERIFIED),
                key=lambda loc: -(loc.get("verified_at") or 0.0),
            )
            for node in nodes:
                mine = next((loc for loc in locations if loc["node"] == node), None)
                here = None
                if mine is not None and mine["state"] != CORRUPT:
                    here = {
                        "abs": str(self.datasets.location_path(mine)),
                        "path": mine["path"],
                        "managed": mine["managed"],
                    }
                dest_path = self.datasets.managed_path(name, version["root"])
                items.append(
                    {
                        "key": key,
                        "name": name,
                        "version": int(number),
                        "node": node,
                        "bytes": version["bytes"],
                        "manifest": version["manifest"],
                        "here": here,
                        "dest_path": dest_path,
                        "dest": str(contents.contained(self.datasets.node_root(node), dest_path)),
                        "sources": [
                            (loc["node"], str(self.datasets.location_path(loc)))
                            for loc in sources
                            if loc["node"] != node
                        ],
                    }
                )
        return items

    def stage(self, row: Job) -> None:
        """Start verifying/copying the gang's datasets where it is placed (in a transaction
        of the caller's or its own); the gang starts once :meth:`collect` sees it done."""
        items = self._data_items(row)
        total = sum(item["bytes"] for item in items)
        staging = {
            "state": "staging",
            "attempt": row.attempt,
            "bytes": total,
            "done": 0,
            "datasets": [
                {"dataset": i["key"], "node": i["node"], "bytes": i["bytes"]} for i in items
            ],
            "started_at": time.time(),
            "finished_at": None,
            "error": None,
        }
        with self.store.write():
            self.store.update_job(row.id, staging=staging)
            self._staging_event(row.id, staging)
        memory = self.memory(row.id)
        counter = memory.data_progress = [0, total, 0.0]

        def progress(n: int) -> None:
            counter[0] += n

        future = self.core.stager.submit(stage_items, self.node_files, items, progress)
        keys = {(i["name"], i["version"], i["node"]) for i in items}
        memory.data_staging = (row.attempt, future, keys)

    def _staging_event(self, job_id: str, staging: dict[str, Any]) -> None:
        self.journal.record(
            events.JOB_STAGING,
            job_id,
            {
                "job_id": job_id,
                "state": staging["state"],
                "attempt": staging["attempt"],
                "bytes": staging["bytes"],
                "done": staging["done"],
                "error": staging.get("error"),
            },
        )

    def progress(self) -> None:
        """A progress event per staging job, at most every PROGRESS_EVERY_S, stored like
        every event so that widgets following ``GET /events`` see it too."""
        now = time.time()
        for job_id, memory in self.memory.having("data_staging"):
            counter = memory.data_progress
            if counter is not None and now - counter[2] >= PROGRESS_EVERY_S:
                counter[2] = now
                progress = {
                    "state": "progress",
                    "attempt": memory.data_staging[0],
                    "bytes": counter[1],
                    "done": min(counter[0], counter[1]),
                }
                with self.store.write():
                    self._staging_event(job_id, progress)

    def collect(self) -> None:
        for job_id, memory in self.memory.having("data_staging"):
            attempt, future, _ = memory.data_staging
            if not future.done():
                continue
            done = (memory.data_progress or [0, 0])[0]
            memory.data_staging = memory.data_progress = None
            self.memory.settle(job_id)
            failure = None
            try:
                results = future.result()
            except Exception as e:
                log.exception("AI Grid: staging the datasets of job %s failed", job_id)
                results, failure = [], f"staging failed: {e}"
            self._staged_data(job_id, attempt, results, done, failure)

    def _staged_data(
        self, job_id: str, attempt: int, results: list, done: int, failure: str | None = None
    ) -> None:
        now = time.time()
        errors = [failure] if failure else []
        with self.store.write():
            for res in results:
                name, _, number = res["key"].partition("@")
                for node, problems in res["corrupt"]:
                    self.datasets.record_verified(name, int(number), node, problems)
                if res.get("error"):
                    errors.append(res["error"])
                elif res["path"] is not None and self.store.dataset_version(name, int(number)):
                    node = res["node"]
                    self.store.put_location(
                        name,
                        int(number),
                        node,
                        path=res["path"],
                        managed=res["managed"],
                        state=VERIFIED,
                        verified_at=now,
                        error=None,
                    )
                    if res["copied_from"]:
                        self.datasets.dataset_event(
                            name, int(number), node, "staged", source=res["copied_from"]
                        )
            row = self.store.job(job_id)
            if row is None or row.state != STARTING or row.attempt != attempt:
                return  # cancelled meanwhile: the copies are kept, the job does not start
            staging = {
                **(row.staging or {}),
                "state": "failed" if errors else "done",
                "done": min(done, (row.staging or {}).get("bytes") or done),
                "finished_at": now,
                "error": "; ".join(errors) or None,
            }
            self.store.update_job(job_id, staging=staging)
            self._staging_event(job_id, staging)
            if errors:
                reason = "staging its data failed: " + "; ".join(errors)
                self.lifecycle.set_state(row, FAILED, reason=reason, finished_at=now)
                self.moves.end_migration(self.store.job(job_id), succeeded=False)
                return
            if self.core.has_checkpoints(job_id):
                self.moves.stage(self.store.job(job_id))
                return
        self.launcher.launch(self.store.job(job_id), None)

    def view_dir(self, row: Job, node: str) -> str:
        """``$AIGRID_DATA`` of the job on ``node``: a folder of links, ``<name>`` -> the
        verified copy there (made afresh for every attempt)."""
        folder = self.datasets.node_root(node) / VIEWS / self.files.key(row.id)
        links = {}
        for key in row.spec.get("datasets") or []:
            name, _, number = key.partition("@")
            loc = next(
                (
                    x
                    for x in self.store.dataset_locations(name, int(number))
                    if x["node"] == node and x["state"] == VERIFIED
                ),
                None,
            )
            if loc is not None:
                links[name] = str(self.datasets.location_path(loc))
        return self.node_files.call(node, make_view, folder, links)

    def mounts(self, row: Job, node: str) -> tuple[str, ...]:
        """What a container on ``node`` mounts read-only: the links and the copies."""
        paths = [str(self.datasets.node_root(node) / VIEWS / self.files.key(row.id))]
        for key in row.spec.get("datasets") or []:
            name, _, number = key.partition("@")
            for loc in self.store.dataset_locations(name, int(number)):
                if loc["node"] == node and loc["state"] == VERIFIED:
                    paths.append(str(self.datasets.location_path(loc)))
        return tuple(paths)
