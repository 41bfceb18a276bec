"""Dataset trees on disk: walked, hashed, verified and copied against their manifest.

What a dataset *is* (names, relative paths, the blake3 manifest and its root hash) is
:mod:`jupyter_aigrid.dataset_manifest`, re-exported here. Files are read through
:mod:`jupyter_aigrid.safefs`, never following a link; a link, FIFO or device in a dataset is a
:class:`ContentError` that names it. A copy is hashed against the manifest file by file as it
lands (:func:`~jupyter_aigrid.safefs.copy_hashed`), and only a copy that matches is made
read-only and renamed into place. Only the standard library and ``blake3`` are used: the
notebook client imports this module as well as the server.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import blake3

from . import safefs
from .dataset_manifest import (
    ALGORITHM,
    MAX_COMPONENT,
    MAX_PATH,
    NAME_PATTERN,
    ContentError,
    FileEntry,
    Manifest,
    check_name,
    check_relpath,
    contained,
    quoted,
    root_hash,
    shown_path,
)
from .safefs import CHUNK, fsync_dir

__all__ = [
    "ALGORITHM",
    "CHUNK",
    "MAX_COMPONENT",
    "MAX_PATH",
    "NAME_PATTERN",
    "ContentError",
    "FileEntry",
    "Manifest",
    "begin_copy",
    "build_manifest",
    "check_name",
    "check_relpath",
    "contained",
    "copy_tree",
    "finish_copy",
    "hash_file",
    "open_below",
    "remove_tree",
    "root_hash",
    "verify_tree",
    "walk",
]

Progress = Callable[[int], None]


def _refusal(shown: str, mode: int) -> ContentError:
    if stat.S_ISLNK(mode):
        return ContentError(f"symlinks are not allowed in a dataset: {shown}", "path")
    if stat.S_ISDIR(mode):
        return ContentError(f"{shown} is a folder, not a file", "path")
    kind = safefs.kind_of(mode)
    msg = f"only regular files and folders are allowed in a dataset: {shown} is a {kind}"
    return ContentError(msg, "path")


def open_below(root: str | os.PathLike, rel: str) -> int:
    """A read descriptor of the regular file ``rel`` below ``root``, every folder on the way
    opened without following a link (``root`` itself is the caller's and may be one).
    ContentError names a link on the way, or anything but a regular file at the end."""
    try:
        return safefs.open_below(root, rel)
    except safefs.Refused as e:
        raise _refusal(shown_path(e.path), e.mode) from None


def _hasher() -> blake3.blake3:
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def hash_file(path: str | os.PathLike, progress: Progress | None = None) -> str:
    """blake3 (hex) of the regular file ``path``; ``progress(n)`` after each ``n`` bytes.

    The file is opened with ``O_NOFOLLOW`` (a link, FIFO or device is a ContentError; a
    missing file is FileNotFoundError) and read in 4 MiB chunks into two reused buffers:
    one is filled while the other is hashed on a helper thread (both release the GIL), and
    blake3 hashes each chunk on every core (:func:`~jupyter_aigrid.safefs.hash_fd`).
    Measured on the 2-core development machine, 1 GiB in the page cache: this pipeline 8.7
    GB/s; a ``readinto`` loop 5.0 GB/s (blake3 on one core) to 5.7 GB/s (on both, but never
    overlapping the read); ``update_mmap`` 8.1 GB/s and hashing slices of an mmap 8.4 GB/s;
    ``sha256sum`` 0.36 GB/s. Bigger buffers fall out of the cache and are slower (16 MiB:
    5.6 GB/s). mmap would be no faster, and a file truncated while mapped kills the process
    with SIGBUS, which the server must survive: the file may be a user's, or a job's.
    Memory: 8 MiB per call, whatever the file's size.
    """
    path = Path(path)
    try:
        fd = safefs.open_below(path.parent, path.name)
    except safefs.Refused as e:
        raise _refusal(quoted(os.fspath(path)), e.mode) from None
    try:
        return safefs.hash_fd(fd, _hasher(), progress=progress)[0]
    finally:
        os.close(fd)


def _hash_below(
    root: str | os.PathLike, rel: str, progress: Progress | None, most: int | None = None
) -> tuple[str, int]:
    fd = open_below(root, rel)
    try:
        return safefs.hash_fd(fd, _hasher(), most, progress)
    finally:
        os.close(fd)


# -- trees ---------------------------------------------------------------------------------


def walk(root: str | os.PathLike) -> list[tuple[str, int]]:
    """(relative POSIX path, size) of every regular file below ``root``, sorted by path.

    ContentError (field ``path``) for a link anywhere below, a FIFO, socket or device, or
    a file whose path :func:`check_relpath` refuses. Empty folders are ignored.
    """
    files, others = safefs.list_tree(root)
    if others:
        rel, mode = others[0]
        raise _refusal(shown_path(rel), mode)
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
            msg = f"{shown_path(rel)} changed while the dataset was being hashed"
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
        files, others = safefs.list_tree(root)
    except FileNotFoundError:
        return [("", f"the dataset folder {root} is missing")]
    except OSError as e:
        return [("", f"the dataset folder {root} cannot be listed: {e}")]
    found = dict(files)
    problems = [(rel, _refusal(shown_path(rel), mode).message) for rel, mode in others]
    odd = {rel for rel, _ in others}
    listed = {f.path for f in manifest.files}
    problems += [
        (rel, f"{shown_path(rel)}: unexpected file, not in the manifest")
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
        elif (problem := _mismatch(f, digest, size)) is not None:
            problems.append((f.path, problem))
    return sorted(problems)


def _mismatch(f: FileEntry, digest: str | None, size: int) -> str | None:
    """How a file hashed to ``digest`` and ``size`` differs from its entry ``f``; None if
    it does not."""
    if size != f.size:
        return f"{f.path}: size differs: expected {f.size}, got {size}"
    if digest != f.hash:
        what = f"blake3 {(digest or '')[:16]}..., the manifest says {f.hash[:16]}..."
        return f"{f.path}: content differs ({what})"
    return None


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
    copy is hashed back as it lands and compared with the manifest: this is where a damaged
    or changed source shows, with no second read of the copy. Only a copy that matches is
    made read-only and renamed to ``dst``; otherwise the temp folder goes and ContentError
    lists the problems. Sources are read without following links (a link on a manifest
    file's path is a problem; other files of ``src`` are not read). ``progress`` counts
    bytes copied. FileExistsError if ``dst`` exists; two copies to the same ``dst`` at once
    are the caller's to prevent.
    """
    tmp = begin_copy(dst, manifest)
    try:
        problems: list[tuple[str, str]] = []
        unreadable = False  # once a source cannot be read, only look for more such files
        for f in manifest.files:
            try:
                source = open_below(src, f.path)
            except FileNotFoundError:
                problems.append((f.path, f"{f.path}: missing in the source"))
                unreadable = True
                continue
            except ContentError as e:
                problems.append((f.path, f"{f.path}: in the source, {e.message}"))
                unreadable = True
                continue
            try:
                if not unreadable and (problem := _copy_file(source, tmp / f.path, f, progress)):
                    problems.append((f.path, problem))
            finally:
                os.close(source)
        finish_copy(tmp, dst, manifest, problems)
    except BaseException:
        remove_tree(tmp)
        raise


def _copy_file(source: int, target: Path, f: FileEntry, progress: Progress | None) -> str | None:
    """Copy ``source`` to the new file ``target``, read-only and durable, hashing it as it
    lands; how it differs from ``f`` (None if it does not)."""
    out = safefs.create_new(target)
    try:
        os.fchmod(out, 0o444)  # made durable with the data by the copy's fsync
        digest, size = safefs.copy_hashed(source, out, _hasher(), f.size + 1, progress)
    finally:
        os.close(out)
    return _mismatch(f, digest, size)  # size + 1 above: a source that grew shows


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
    """Make the copy in ``tmp`` read-only and durable, and rename it to ``dst``, once it
    matches ``manifest``. ``problems`` are what a copier that hashed each file as it landed
    (:func:`copy_tree`) found; None (copied by someone else, file by file) has the copy
    verified here. ContentError (the source is damaged) if there are problems;
    FileExistsError if ``dst`` appeared meanwhile."""
    tmp, dst = Path(tmp), Path(dst)
    if problems is None:
        for f in manifest.files:
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(tmp / f.path, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    os.fchmod(fd, 0o444)
                    os.fsync(fd)
                finally:
                    os.close(fd)
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


def remove_tree(path: str | os.PathLike) -> None:
    """Remove the dataset tree at ``path``, read-only files and folders included (a copy
    is made read-only). A link is removed itself, never followed, here or below; a missing
    path is fine."""
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
