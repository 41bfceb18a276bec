"""The identity of a dataset's content: its name, safe relative paths, and its blake3 manifest.

A dataset is a folder of regular files (no links, FIFOs or devices; empty folders do not
count). Its manifest lists every file as ``(path, size, blake3)``, sorted by path, and its
root hash is the blake3 of one line per file, ``f"{hash} {size} {path}\\n"``: two trees have
the same root exactly when they hold the same bytes under the same paths. The JSON form is::

    {"algorithm": "blake3", "root": "<64 hex>", "bytes": 3, "count": 1,
     "files": [["train/a.bin", 3, "<64 hex>"]]}

Paths are relative POSIX paths that can only lead down (see :func:`check_relpath`), checked
on the way in (requests, manifests) and on the way out (files found on disk). The rules are
the manifest's: a path without newlines is what keeps the root hash's encoding unambiguous.
Reading, verifying and copying trees is :mod:`jupyter_aigrid.contents`, which re-exports
every name here. Only the standard library and ``blake3`` are used: the notebook client
imports this module as well as the server.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import blake3

ALGORITHM = "blake3"
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
MAX_PATH = 4096
MAX_COMPONENT = 255  # bytes of UTF-8, as most filesystems allow
_NAME = re.compile(NAME_PATTERN)
_HEX = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ContentError(ValueError):
    """A bad name or path, or content that does not match its manifest; ``field`` names the
    request field it is about (None when it is about no single field)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


def quoted(value: str, most: int = 80) -> str:
    """``value`` quoted, escapes visible, shortened to about ``most`` characters."""
    return repr(value if len(value) <= most else value[: most - 3] + "...")


def shown_path(path: str) -> str:
    """A relative path as messages show it: bare, or quoted when it holds odd characters."""
    return quoted(path) if _CONTROL.search(path) or len(path) > 200 else path


def check_name(name: object, field: str = "name") -> str:
    """``name`` if it is a valid dataset name (:data:`NAME_PATTERN`), else ContentError."""
    if not isinstance(name, str):
        msg = f"{field} must be a string; got {type(name).__name__}"
        raise ContentError(msg, field)
    if not _NAME.fullmatch(name):  # fullmatch: '$' alone would let a trailing newline through
        msg = (
            f"{field} must be 1 to 64 characters from a-z, 0-9, '.', '_' and '-', "
            f"starting with a letter or digit; got {quoted(name)}"
        )
        raise ContentError(msg, field)
    return name


def check_relpath(path: object, field: str = "path") -> str:
    """``path`` if it is a relative POSIX path that stays inside a dataset, else ContentError.

    1 to 4096 characters; no control character or backslash; not absolute; no empty, ``.``
    or ``..`` component; each component at most 255 bytes of UTF-8. Newlines being refused
    is what keeps the root hash's one-line-per-file encoding unambiguous.
    """
    if not isinstance(path, str):
        msg = f"{field} must be a string; got {type(path).__name__}"
        raise ContentError(msg, field)
    problem = None
    if not path:
        problem = "must not be empty"
    elif len(path) > MAX_PATH:
        problem = f"is {len(path)} characters long; at most {MAX_PATH} are allowed"
    elif _CONTROL.search(path):
        problem = "must not contain control characters"
    elif "\\" in path:
        problem = "must separate its components with '/', and contain no '\\'"
    elif path.startswith("/"):
        problem = "must be relative to the dataset, not absolute"
    else:
        for part in path.split("/"):
            if not part:
                problem = "must not have an empty component (a leading, trailing or double '/')"
            elif part in (".", ".."):
                problem = "must not have a '.' or '..' component"
            else:
                try:
                    size = len(part.encode("utf-8"))
                except UnicodeEncodeError:
                    problem = "must be valid UTF-8 text"
                else:
                    if size > MAX_COMPONENT:
                        problem = (
                            f"has a component of {size} bytes (UTF-8); "
                            f"at most {MAX_COMPONENT} are allowed"
                        )
            if problem:
                break
    if problem:
        msg = f"{field} {problem}; got {quoted(path)}"
        raise ContentError(msg, field)
    return path


def contained(root: str | os.PathLike, rel: str, field: str = "path") -> Path:
    """The real path of ``root/rel``, checked to lie inside the real path of ``root``: links
    already on disk are resolved. ContentError for a bad ``rel`` or one that leads out."""
    check_relpath(rel, field)
    base = os.path.realpath(root)
    target = os.path.realpath(os.path.join(base, rel))
    # commonpath compares whole components: '/d/test' does not contain '/d/testtest/x'.
    if os.path.commonpath([base, target]) != base:
        msg = f"{field} leads outside the dataset (through a link); got {quoted(rel)}"
        raise ContentError(msg, field)
    return Path(target)


@dataclass(frozen=True)
class FileEntry:
    """One file of a dataset: its path below the root, its size in bytes, its blake3 (hex)."""

    path: str
    size: int
    hash: str


@dataclass(frozen=True)
class Manifest:
    """Every file of a dataset, sorted by path, and their :func:`root_hash`. Construction
    checks both (use :meth:`of` to build one from entries in any order)."""

    files: tuple[FileEntry, ...]
    root: str

    def __post_init__(self) -> None:
        _check_layout([f.path for f in self.files], "files")
        if self.root != root_hash(self.files):
            msg = "a manifest's root does not match its files"
            raise ContentError(msg, "root")

    @classmethod
    def of(cls, files: Iterable[FileEntry]) -> Manifest:
        ordered = tuple(sorted(files, key=lambda f: f.path))
        return cls(ordered, root_hash(ordered))

    @cached_property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def count(self) -> int:
        return len(self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "algorithm": ALGORITHM,
            "root": self.root,
            "bytes": self.bytes,
            "count": self.count,
            "files": [[f.path, f.size, f.hash] for f in self.files],
        }

    @classmethod
    def from_json(cls, data: object, field: str = "manifest") -> Manifest:
        """The manifest ``data`` (as :meth:`to_json` writes it) holds, every part checked and
        its root recomputed; ContentError names the first thing wrong."""
        if not isinstance(data, dict) or not isinstance(data.get("files"), list):
            msg = f"{field} must be an object with algorithm, root, bytes, count and files"
            raise ContentError(msg, field)
        if data.get("algorithm") != ALGORITHM:
            msg = f"{field}.algorithm must be {ALGORITHM!r}; got {data.get('algorithm')!r:.80}"
            raise ContentError(msg, f"{field}.algorithm")
        entries = [_entry(item, f"{field}.files[{i}]") for i, item in enumerate(data["files"])]
        _check_layout([e.path for e in entries], f"{field}.files")
        claimed = data.get("root")
        if not isinstance(claimed, str) or not _HEX.fullmatch(claimed):
            msg = f"{field}.root must be 64 lowercase hex digits; got {claimed!r:.80}"
            raise ContentError(msg, f"{field}.root")
        actual = root_hash(entries)
        if claimed != actual:
            msg = (
                f"{field}.root does not match its files (it says {claimed[:16]}..., the files "
                f"give {actual[:16]}...): the manifest was altered or damaged"
            )
            raise ContentError(msg, f"{field}.root")
        manifest = cls(tuple(entries), actual)
        for key, value in (("bytes", manifest.bytes), ("count", manifest.count)):
            if type(data.get(key)) is not int or data[key] != value:
                msg = f"{field}.{key} must be {value} (from its files); got {data.get(key)!r:.80}"
                raise ContentError(msg, f"{field}.{key}")
        return manifest


def _entry(item: object, where: str) -> FileEntry:
    """A manifest's ``[path, size, hash]`` item, checked."""
    if not isinstance(item, list | tuple) or len(item) != 3:
        msg = f"{where} must be [path, size, hash]"
        raise ContentError(msg, where)
    path, size, digest = item
    check_relpath(path, where)
    if type(size) is not int or size < 0:  # type(): True is an int, and no size
        msg = f"{where}: size must be an integer >= 0; got {size!r:.80}"
        raise ContentError(msg, where)
    if not isinstance(digest, str) or not _HEX.fullmatch(digest):
        msg = f"{where}: hash must be 64 lowercase hex digits; got {digest!r:.80}"
        raise ContentError(msg, where)
    return FileEntry(path, size, digest)


def _check_layout(paths: list[str], where: str) -> None:
    """Paths in order, each once, and none a folder of another (no tree holds both)."""
    for a, b in itertools.pairwise(paths):
        if a >= b:
            msg = f"{where} must be sorted by path, each path once: {quoted(b)} follows {quoted(a)}"
            raise ContentError(msg, where)
    files = set(paths)
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if (folder := "/".join(parts[:i])) in files:
                msg = f"{where} has {quoted(folder)} as a file and as the folder of {quoted(path)}"
                raise ContentError(msg, where)


def root_hash(files: Iterable[FileEntry]) -> str:
    """blake3 (hex) of ``f"{hash} {size} {path}\\n"`` for each file, sorted by path."""
    hasher = blake3.blake3()
    for f in sorted(files, key=lambda f: f.path):
        hasher.update(f"{f.hash} {f.size} {f.path}\n".encode())
    return hasher.hexdigest()
