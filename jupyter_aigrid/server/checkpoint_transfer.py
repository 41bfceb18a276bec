"""The master's side of checkpoints: what each node holds, staging the newest verified one
where a gang resumes, the copies a node keeps of other nodes' pieces, and the requests the
master leaves for the ranks.

The format and the job's side are :mod:`jupyter_aigrid.checkpoints`. The master never opens a
node's files itself: the functions below that take a node's folder (:func:`listing`,
:func:`keep_only`, :func:`remove_root`, :func:`ask`...) run *on* the node through its
executor's :class:`~.executors.nodefiles.NodeFiles` (which calls them by name: keep them
module-level, with plain-data arguments and results), and :func:`scan` and :func:`stage` use
a ``NodeFiles`` to reach the nodes: by default the local one, for folders on this machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoints import (
    CheckpointError,
    data_file,
    listen_file,
    parse_name,
    piece_names,
    ranks_in,
    read_manifest,
    read_verified,
    request_file,
    write_json,
)
from .executors.nodefiles import NodeFiles


@dataclass
class Found:
    """One checkpoint as seen across nodes: who holds each rank's piece."""

    name: str
    holders: dict[int, list[str]] = field(default_factory=dict)  # rank -> nodes

    def missing(self, world_size: int) -> list[int]:
        return [r for r in range(world_size) if r not in self.holders]


def listing(root: Path) -> dict[str, list[int]]:
    """Every checkpoint folder in ``root``, with the ranks whose manifest is there (not
    verified): what one node reports of a job's checkpoints."""
    return {name: sorted(ranks_in(root, name)) for name in piece_names(root)}


def copies_holder(node: str) -> str:
    """The holder name of the copies kept on ``node`` of other nodes' pieces (in
    ``<root>/.copies``), beside ``node`` itself for the pieces its ranks wrote."""
    return f"{node}#copies"


def holder_node(holder: str) -> str:
    """The node a holder's folder is on."""
    return holder.partition("#")[0]


def scan(roots: dict[str, Path], files: NodeFiles | None = None) -> list[Found]:
    """Every checkpoint folder in the holders' ``roots`` (holder -> root: a node, or the
    copies kept on one), newest first; holders that cannot be reached are left out."""
    files = NodeFiles() if files is None else files
    holders = list(roots)
    listed = files.call_each([(holder_node(h), listing, (roots[h],)) for h in holders], {})
    by_name: dict[str, Found] = {}
    for holder, names in zip(holders, listed, strict=True):
        for name, ranks in names.items():
            found = by_name.setdefault(name, Found(name))
            for rank in ranks:
                found.holders.setdefault(rank, []).append(holder)
    return sorted(by_name.values(), key=lambda f: parse_name(f.name) or (0, 0), reverse=True)


def complete(roots: dict[str, Path], world_size: int) -> list[str]:
    """Names of the checkpoints whose every piece has a manifest, newest first (a listing:
    nothing is hashed; partial checkpoints never appear)."""
    return [f.name for f in scan(roots) if not f.missing(world_size)]


@dataclass
class Staged:
    """The outcome of :func:`stage`: the checkpoint chosen (None: there is none to restore),
    its step and size, the bytes copied, and what was wrong with newer ones."""

    name: str | None = None
    step: int | None = None
    bytes: int = 0
    copied: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)


def stage(
    roots: dict[str, Path], ranks: dict[int, str], world_size: int, files: NodeFiles | None = None
) -> Staged:
    """Put the newest verified checkpoint where the ranks will run: ``ranks`` maps each rank
    to its node, ``roots`` each holder (a node, or the copies kept on one) to its folder. A
    piece already on its rank's node is verified in place; any other is copied there and
    verified on the way (``files.copy_checkpoint``; ``files`` runs work on the nodes). A
    checkpoint that is partial or does not verify is passed over for the one before it, and
    reported."""
    files = NodeFiles() if files is None else files
    result = Staged()
    for found in scan(roots, files):
        missing = found.missing(world_size)
        if missing:
            what = ", ".join(str(r) for r in missing[:8])
            result.problems.append((found.name, f"incomplete: no manifest for rank {what}"))
            continue
        try:
            total = copied = 0
            step = None
            for rank, node in sorted(ranks.items()):
                manifest, size, moved = _place_piece(found, rank, node, roots, files)
                copied += moved
                if manifest.get("world_size") != world_size:
                    msg = f"written by a gang of {manifest.get('world_size')}, not {world_size}"
                    raise CheckpointError(msg)
                total += size
                step = manifest.get("step") if step is None else step
        except (CheckpointError, OSError) as e:
            result.problems.append((found.name, str(e)))
            result.copied += copied
            continue
        result.name, result.step, result.bytes = found.name, step, total
        result.copied += copied
        break
    return result


def _place_piece(
    found: Found, rank: int, node: str, roots: dict[str, Path], files: NodeFiles
) -> tuple[dict[str, Any], int, int]:
    """Rank ``rank``'s piece of ``found`` verified on ``node``: the copy already there if it
    verifies, else one copied from the first holder whose piece verifies. Returns the
    manifest, the piece's size and the bytes copied; CheckpointError if no copy is good."""
    dst = roots[node] / found.name
    holders = sorted(found.holders[rank], key=lambda h: h != node)  # its own node first
    errors = []
    for holder in holders:
        try:
            if holder == node:
                manifest = files.call(node, read_verified, dst, rank, roots[node])
                return manifest, manifest["files"][data_file(rank)]["bytes"], 0
            src = roots[holder] / found.name
            size = files.copy_checkpoint(holder_node(holder), src, roots[holder], node, dst, rank)
            return files.call(node, read_manifest, dst, rank, roots[node]), size, size
        except (CheckpointError, OSError) as e:
            errors.append(f"{e}" if len(holders) == 1 else f"{e} (on {holder})")
    raise CheckpointError("; ".join(errors))


def keep_only(root: Path, name: str) -> None:
    """Delete every checkpoint folder in ``root`` but ``name`` (the copies a node keeps of
    other nodes' pieces: only the newest is kept)."""
    for other in piece_names(root):
        if other != name:
            remove_root(root / other)


def remove_root(root: Path) -> None:
    """Delete a job's checkpoint folder on one node (links in it are removed, never
    followed); nothing if it is not there."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(root).st_mode):
            shutil.rmtree(root, ignore_errors=True)


# -- requests to the ranks ------------------------------------------------------------------


def is_listening(root: Path, attempt: int, rank: int) -> bool:
    """Has rank ``rank`` of ``attempt`` said it answers checkpoint requests?"""
    return listen_file(root, attempt, rank).exists()


def clear_request(root: Path) -> None:
    """Take back the master's request (a new attempt must not take it for its own)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(request_file(root))


def ask(roots: Iterable[Path], request_id: str, reason: str) -> None:
    """The master's side: ask every rank under ``roots`` for a checkpoint."""
    for root in roots:
        write_json(request_file(root), {"id": request_id, "time": time.time(), "reason": reason})
