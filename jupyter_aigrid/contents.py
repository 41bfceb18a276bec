"""The identity of a dataset's content: names, safe relative paths, blake3 manifests, and
verified copies.

A dataset is a folder of regular files (no links, FIFOs or devices; empty folders do not
count). Its manifest lists every file as ``(path, size, blake3)``, sorted by path, and its
root hash is the blake3 of one line per file, ``f"{hash} {size} {path}\\n"``: two trees have
the same root exactly when they hold the same bytes under the same paths. The JSON form is::

    {"algorithm": "blake3", "root": "<64 hex>", "bytes": 3, "count": 1,
     "files": [["train/a.bin", 3, "<64 hex>"]]}

Paths are relative POSIX paths that can only lead down (see :func:`check_relpath`), checked
on the way in (requests, manifests) and on the way out (files found on disk). Files are read
without following links, and a copy is hashed against the manifest before it is renamed into
place, read-only. Only the standard library and ``blake3`` are used: the notebook client
imports this module as well as the server.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import blake3

from .durable import fsync_dir

ALGORITHM = "blake3"
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
MAX_PATH = 4096
MAX_COMPONENT = 255  # bytes of UTF-8, as most filesystems allow
CHUNK = 4 * 1024 * 1024  # two of these buffers per large file being hashed: the memory bound
PIPELINE_FROM = 4 * CHUNK  # below this, a thread's start costs more than the overlap saves
COPY_CHUNK = 64 * 1024 * 1024  # per copy_file_range call: how often progress is reported
_NAME = re.compile(NAME_PATTERN)
_HEX = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FALLBACK = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)

Progress = Callable[[int], None]


class ContentError(ValueError):
    """A bad name or path, or content that does not match its manifest; ``field`` names the
    request field it is about (None when it is about no single field)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


def _shown(value: str, most: int = 80) -> str:
    """``value`` quoted, escapes visible, shortened to about ``most`` characters."""
    return repr(value if len(value) <= most else value[: most - 3] + "...")


def _label(path: str) -> str:
    """A relative path as messages show it: bare, or quoted when it holds odd characters."""
    return _shown(path) if _CONTROL.search(path) or len(path) > 200 else path


def check_name(name: object, field: str = "name") -> str:
    """``name`` if it is a valid dataset name (:data:`NAME_PATTERN`), else ContentError."""
    if not isinstance(name, str):
        msg = f"{field} must be a string; got {type(name).__name__}"
        raise ContentError(msg, field)
    if not _NAME.fullmatch(name):  # fullmatch: '$' alone would let a trailing newline through
        msg = (
            f"{field} must be 1 to 64 characters from a-z, 0-9, '.', '_' and '-', "
            f"starting with a letter or digit; got {_shown(name)}"
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
        msg = f"{field} {problem}; got {_shown(path)}"
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
        msg = f"{field} leads outside the dataset (through a link); got {_shown(rel)}"
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
            msg = f"{where} must be sorted by path, each path once: {_shown(b)} follows {_shown(a)}"
            raise ContentError(msg, where)
    files = set(paths)
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if (folder := "/".join(parts[:i])) in files:
                msg = f"{where} has {_shown(folder)} as a file and as the folder of {_shown(path)}"
                raise ContentError(msg, where)


def root_hash(files: Iterable[FileEntry]) -> str:
    """blake3 (hex) of ``f"{hash} {size} {path}\\n"`` for each file, sorted by path."""
    hasher = blake3.blake3()
    for f in sorted(files, key=lambda f: f.path):
        hasher.update(f"{f.hash} {f.size} {f.path}\n".encode())
    return hasher.hexdigest()


# -- reading files -------------------------------------------------------------------------


def _refusal(shown: str, mode: int) -> ContentError:
    if stat.S_ISLNK(mode):
        return ContentError(f"symlinks are not allowed in a dataset: {shown}", "path")
    if stat.S_ISDIR(mode):
        return ContentError(f"{shown} is a folder, not a file", "path")
    kinds = [
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ]
    kind = next((name for test, name in kinds if test(mode)), "special file")
    msg = f"only regular files and folders are allowed in a dataset: {shown} is a {kind}"
    return ContentError(msg, "path")


def _open_leaf(name: str | os.PathLike, shown: str, dir_fd: int | None = None) -> int:
    """A read descriptor of the regular file ``name``, never through a link, nor blocking on
    a FIFO (a device is refused before it is opened). ContentError for anything else."""
    mode = os.lstat(name, dir_fd=dir_fd).st_mode
    if not stat.S_ISREG(mode):
        raise _refusal(shown, mode)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:  # swapped for a link since the lstat
            raise _refusal(shown, stat.S_IFLNK) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _refusal(shown, mode)
    os.set_blocking(fd, True)
    return fd


def _open_below(root: str | os.PathLike, rel: str) -> int:
    """A read descriptor of the regular file ``rel`` below ``root``, every folder on the way
    opened without following a link. ``root`` itself is the caller's and may be a link."""
    parts = rel.split("/")
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, part in enumerate(parts[:-1]):
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                mode = os.lstat(part, dir_fd=dir_fd).st_mode
                if stat.S_ISLNK(mode):
                    raise _refusal(_label("/".join(parts[: i + 1])), mode) from None
                raise FileNotFoundError(errno.ENOENT, "not a folder", part) from None
            os.close(dir_fd)
            dir_fd = inner
        return _open_leaf(parts[-1], _label(rel), dir_fd)
    finally:
        os.close(dir_fd)


def _digest(fd: int, progress: Progress | None = None, most: int | None = None) -> tuple[str, int]:
    """blake3 (hex) and length of what ``fd`` holds from its position, at most ``most``
    bytes: see :func:`hash_file`."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    left = os.fstat(fd).st_size if most is None else most
    total = 0
    if left < PIPELINE_FROM:  # only a hint: a file that grows is still read to its end
        view = memoryview(bytearray(max(64 * 1024, min(left + 1, CHUNK))))
        while (most is None or total < most) and (n := _read(fd, view, most, total)):
            hasher.update(view[:n])
            total += n
            if progress is not None:
                progress(n)
        return hasher.hexdigest(), total
    views = [memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK))]
    with ThreadPoolExecutor(1, thread_name_prefix="blake3") as helper:
        pending: Future | None = None
        turn = 0
        while True:
            n = _read(fd, views[turn], most, total) if most is None or total < most else 0
            if pending is not None:
                pending.result()
            if not n:
                break
            pending = helper.submit(hasher.update, views[turn][:n])
            total += n
            if progress is not None:
                progress(n)
            turn ^= 1
    return hasher.hexdigest(), total


def _read(fd: int, view: memoryview, most: int | None, done: int) -> int:
    return os.readv(fd, [view if most is None else view[: most - done]])


def hash_file(path: str | os.PathLike, progress: Progress | None = None) -> str:
    """blake3 (hex) of the regular file ``path``; ``progress(n)`` after each ``n`` bytes.

    The file is opened with ``O_NOFOLLOW`` (a link, FIFO or device is a ContentError; a
    missing file is FileNotFoundError) and read in 4 MiB chunks into two reused buffers:
    one is filled while the other is hashed on a helper thread (both release the GIL), and
    blake3 hashes each chunk on every core. Measured on the 2-core development machine, 1 GiB
    in the page cache: this pipeline 8.7 GB/s; a ``readinto`` loop 5.0 GB/s (blake3 on one
    core) to 5.7 GB/s (on both, but never overlapping the read); ``update_mmap`` 8.1 GB/s and
    hashing slices of an mmap 8.4 GB/s; ``sha256sum`` 0.36 GB/s. Bigger buffers fall out of
    the cache and are slower (16 MiB: 5.6 GB/s). mmap would be no faster, and a file
    truncated while mapped kills the process with SIGBUS, which the server must survive: the
    file may be a user's, or a job's. Memory: 8 MiB per call, whatever the file's size.
    """
    fd = _open_leaf(path, _shown(os.fspath(path)))
    try:
        return _digest(fd, progress)[0]
    finally:
        os.close(fd)


def _hash_below(
    root: str | os.PathLike, rel: str, progress: Progress | None, most: int | None = None
) -> tuple[str, int]:
    fd = _open_below(root, rel)
    try:
        return _digest(fd, progress, most)
    finally:
        os.close(fd)


# -- trees ---------------------------------------------------------------------------------


def _scan(root: str | os.PathLike) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(path, size) of every regular file below ``root`` and (path, mode) of everything else
    that is not a folder, both sorted; no link is followed (``root`` itself may be one)."""
    files, others = [], []
    folders = [""]
    while folders:  # a stack, not recursion: a deep tree must not exhaust Python's stack
        prefix = folders.pop()
        with os.scandir(os.path.join(root, prefix)) as entries:
            for entry in entries:
                rel = prefix + entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    folders.append(rel + "/")
                elif stat.S_ISREG(st.st_mode):
                    files.append((rel, st.st_size))
                else:
                    others.append((rel, st.st_mode))
    return sorted(files), sorted(others)


def walk(root: str | os.PathLike) -> list[tuple[str, int]]:
    """(relative POSIX path, size) of every regular file below ``root``, sorted by path.

    ContentError (field ``path``) for a link anywhere below, a FIFO, socket or device, or
    a file whose path :func:`check_relpath` refuses. Empty folders are ignored.
    """
    files, others = _scan(root)
    if others:
        rel, mode = others[0]
        raise _refusal(_label(rel), mode)
    for rel, _ in files:
        check_relpath(rel)
    return files


def build_manifest(root: str | os.PathLike, progress: Progress | None = None) -> Manifest:
    """The manifest of the tree at ``root`` (see :func:`walk`); ``progress`` counts bytes
    hashed. ContentError if a file changes while it is hashed."""
    entries = []
    for rel, listed in walk(root):
        try:
            digest, size = _hash_below(root, rel, progress)
        except FileNotFoundError:
            size = -1
        if size != listed:
            msg = f"{_label(rel)} changed while the dataset was being hashed"
            raise ContentError(msg, "path")
        entries.append(FileEntry(rel, size, digest))
    return Manifest.of(entries)


def _verify(
    root: str | os.PathLike, manifest: Manifest, progress: Progress | None
) -> list[tuple[str, str]]:
    """(path, problem) for every way the tree at ``root`` differs from ``manifest``."""
    try:
        if not stat.S_ISDIR(os.stat(root).st_mode):
            return [("", f"the dataset folder {root} is not a folder")]
        files, others = _scan(root)
    except FileNotFoundError:
        return [("", f"the dataset folder {root} is missing")]
    except OSError as e:
        return [("", f"the dataset folder {root} cannot be listed: {e}")]
    found = dict(files)
    problems = [(rel, _refusal(_label(rel), mode).message) for rel, mode in others]
    odd = {rel for rel, _ in others}
    listed = {f.path for f in manifest.files}
    problems += [
        (rel, f"{_label(rel)}: unexpected file, not in the manifest")
        for rel in found
        if rel not in listed
    ]
    for f in manifest.files:
        if f.path in odd:
            continue
        size, digest = found.get(f.path), None
        if size == f.size:
            try:
                digest, size = _hash_below(root, f.path, progress, f.size + 1)
            except ContentError as e:
                problems.append((f.path, e.message))
                continue
            except OSError as e:
                problems.append((f.path, f"{f.path}: cannot be read ({e.strerror})"))
                continue
        if size is None:
            problems.append((f.path, f"{f.path}: missing"))
        elif size != f.size:
            problems.append((f.path, f"{f.path}: size differs: expected {f.size}, got {size}"))
        elif digest != f.hash:
            what = f"blake3 {digest[:16]}..., the manifest says {f.hash[:16]}..."
            problems.append((f.path, f"{f.path}: content differs ({what})"))
    return sorted(problems)


def verify_tree(
    root: str | os.PathLike, manifest: Manifest, progress: Progress | None = None
) -> list[str]:
    """Every way the tree at ``root`` differs from ``manifest``, each naming the path: a file
    missing, unexpected, of another size or content, or a link; [] when they match.
    ``progress`` counts bytes hashed. Content problems are returned, never raised."""
    return [problem for _, problem in _verify(root, manifest, progress)]


def copy_tree(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    manifest: Manifest,
    progress: Progress | None = None,
) -> None:
    """Copy the files of ``manifest`` from ``src`` to the new folder ``dst``, verified.

    The files go into a temp folder beside ``dst`` (in the kernel where it can:
    ``copy_file_range``, a reflink on filesystems that have them), each fsynced, and each
    copy is hashed against the manifest: this is where a damaged or changed source shows.
    Only a copy that matches is made read-only and renamed to ``dst``; otherwise the temp
    folder goes and ContentError lists the problems. Sources are read without following
    links (a link on a manifest file's path is a problem; other files of ``src`` are not
    read). ``progress`` counts bytes copied. FileExistsError if ``dst`` exists; two copies
    to the same ``dst`` at once are the caller's to prevent.
    """
    tmp = begin_copy(dst, manifest)
    try:
        problems: list[tuple[str, str]] = []
        for f in manifest.files:
            try:
                source = _open_below(src, f.path)
            except FileNotFoundError:
                problems.append((f.path, f"{f.path}: missing in the source"))
                continue
            except ContentError as e:
                problems.append((f.path, f"{f.path}: in the source, {e.message}"))
                continue
            try:
                if not problems:  # once the copy has failed, only look for more such files
                    _copy_file(source, tmp / f.path, f.size, progress)
            finally:
                os.close(source)
        finish_copy(tmp, dst, manifest, problems)
    except BaseException:
        remove_tree(tmp)
        raise


def _folders(manifest: Manifest) -> list[str]:
    """The folders of a tree holding ``manifest``'s files, parents first ('' the top)."""
    folders = {""}
    for f in manifest.files:
        parts = f.path.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return sorted(folders)


def begin_copy(dst: str | os.PathLike, manifest: Manifest) -> Path:
    """A new temp folder beside ``dst`` with the folders of ``manifest``'s files, to copy
    them into (then :func:`finish_copy`). FileExistsError if ``dst`` exists."""
    dst = Path(dst)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "a dataset is only copied to a new folder", str(dst))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{secrets.token_hex(8)}"
    os.mkdir(tmp)
    for folder in _folders(manifest)[1:]:
        os.mkdir(tmp / folder)
    return tmp


def finish_copy(
    tmp: str | os.PathLike,
    dst: str | os.PathLike,
    manifest: Manifest,
    problems: list[tuple[str, str]] | None = None,
) -> None:
    """Verify the copy in ``tmp`` against ``manifest``, make it read-only and durable, and
    rename it to ``dst``. ContentError (the source is damaged) if it does not match, or if
    the copier found ``problems``; FileExistsError if ``dst`` appeared meanwhile."""
    tmp, dst = Path(tmp), Path(dst)
    if problems is None:  # copied by someone else: each file made read-only and durable here
        for f in manifest.files:
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(tmp / f.path, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    os.fchmod(fd, 0o444)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        problems = []
    if not problems:
        problems = _verify(tmp, manifest, None)
    if problems:
        shown = "; ".join(p for _, p in problems[:10])
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        msg = f"the copy does not match the manifest, so the source is damaged: {shown}{more}"
        raise ContentError(msg)
    for folder in reversed(_folders(manifest)):
        fsync_dir(tmp / folder)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "created while the copy was made", str(dst))
    try:
        os.rename(tmp, dst)
    except OSError as e:  # an empty folder would be replaced; a full one or a file not
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(e.errno, "created while the copy was made", str(dst)) from e
        raise
    fsync_dir(dst.parent)


def open_below(root: str | os.PathLike, rel: str) -> int:
    """A read descriptor of the regular file ``rel`` below ``root`` (see :func:`_open_below`)."""
    return _open_below(root, rel)


def _copy_file(source: int, target: Path, size: int, progress: Progress | None) -> None:
    """Copy ``source`` to the new file ``target``, read-only and durable."""
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        _copy_bytes(source, out, size + 1, progress)  # + 1: a source that grew shows
        os.fchmod(out, 0o444)
        os.fsync(out)
    finally:
        os.close(out)


def _copy_bytes(source: int, target: int, most: int, progress: Progress | None) -> None:
    """Copy up to ``most`` bytes between descriptors, in the kernel when it can."""
    left = most
    while left > 0:
        try:
            n = os.copy_file_range(source, target, min(left, COPY_CHUNK))
        except OSError as e:
            if e.errno not in _FALLBACK:
                raise
            break  # not across these filesystems: plain reads and writes from here on
        if n == 0:
            return
        left -= n
        if progress is not None:
            progress(n)
    view = memoryview(bytearray(min(left, CHUNK)))
    while left > 0 and (n := os.readv(source, [view[: min(left, CHUNK)]])):
        written = 0
        while written < n:
            written += os.write(target, view[written:n])
        left -= n
        if progress is not None:
            progress(n)


def remove_tree(path: str | os.PathLike) -> None:
    """Remove the dataset tree at ``path``, read-only files and folders included. A link is
    removed itself, never followed, here or below; a missing path is fine."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    try:
        shutil.rmtree(path)  # fd-based on Linux: removes links, never enters them
    except PermissionError:  # a folder made read-only: let its owner write it, then again
        _writable_folders(path)
        shutil.rmtree(path)


def _writable_folders(root: str | os.PathLike) -> None:
    folders = [os.fspath(root)]
    while folders:
        folder = folders.pop()
        mode = os.lstat(folder).st_mode
        if not stat.S_ISDIR(mode):
            continue
        if mode & 0o700 != 0o700:
            os.chmod(folder, stat.S_IMODE(mode) | 0o700)
        with os.scandir(folder) as entries:
            folders += [e.path for e in entries if e.is_dir(follow_symlinks=False)]
