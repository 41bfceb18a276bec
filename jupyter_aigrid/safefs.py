"""The one file layer for what jobs and users can tamper with: no-follow opens below a trusted
folder, listings that never follow links, atomic durable writes, and hash-while-copy.

Jobs write where the master reads (results, outputs, logs, checkpoints) and users upload
datasets: either may plant a link to what they must not see, a FIFO that would block a reader
for ever, or a device. Every opener here walks from a trusted folder one component at a time
with ``O_NOFOLLOW`` and refuses anything but folders on the way and a regular file at the end,
with :class:`Refused` (a FileNotFoundError, so callers that treat "not there" and "not
allowed" alike keep working) naming the component and its mode.

Checkpoints (sha256) and datasets (blake3) share :func:`hash_fd` and :func:`copy_hashed`: the
hash is the caller's. Only the standard library is used: job containers carry this module,
and ``runner.py`` may import it as a lone file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import queue
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Protocol

#: Bytes per read when hashing: two such buffers per large file hashed, the memory bound.
#: Bigger ones fall out of the CPU caches and are slower (see ``contents.hash_file``).
CHUNK = 4 * 1024 * 1024
#: Below this, a helper thread's start costs more than overlapping reads and hashing saves.
PIPELINE_FROM = 4 * CHUNK
#: Bytes per kernel copy call in :func:`copy_hashed`, each then hashed back and written back.
SLICE = 64 * 1024 * 1024
#: copy_file_range cannot copy between these files: plain reads and writes instead.
_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW

Progress = Callable[[int], None]


class Hasher(Protocol):
    """What :func:`hash_fd` and :func:`copy_hashed` hash with (hashlib's, blake3's)."""

    def update(self, data: memoryview, /) -> object: ...
    def hexdigest(self) -> str: ...


_KINDS = {
    stat.S_IFLNK: "symlink",
    stat.S_IFDIR: "folder",
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFREG: "regular file",
}


def kind_of(mode: int) -> str:
    """A file's kind in words ("symlink", "FIFO"...) from its ``st_mode``."""
    return _KINDS.get(stat.S_IFMT(mode), "special file")


class Refused(FileNotFoundError):
    """A component below a trusted folder that an opener would not go through or open: a
    link anywhere, or anything but a regular file at the end. ``path`` is the component
    (relative to the folder, '/'-separated), ``mode`` its ``st_mode``."""

    def __init__(self, path: str, mode: int) -> None:
        what = f"a {kind_of(mode)}: links are never followed, and only regular files are read"
        super().__init__(f"{path} is refused, {what}")
        self.path = path
        self.mode = mode


# -- opening below a trusted folder --------------------------------------------------------


def _open_folder(name: str, dir_fd: int, shown: str) -> int:
    """The folder ``name`` in ``dir_fd``, opened without following a link."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
        if stat.S_ISLNK(mode):
            raise Refused(shown, mode) from None
        raise FileNotFoundError(errno.ENOENT, "not a folder", shown) from None


def _open_leaf(name: str, dir_fd: int, shown: str) -> int:
    """A read descriptor of the regular file ``name`` in ``dir_fd``: never through a link,
    never blocking on a FIFO, and a device is refused before it is opened."""
    mode = os.lstat(name, dir_fd=dir_fd).st_mode
    if not stat.S_ISREG(mode):
        raise Refused(shown, mode)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:  # swapped for a link since the lstat
            raise Refused(shown, stat.S_IFLNK) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # swapped since the lstat
        os.close(fd)
        raise Refused(shown, mode)
    os.set_blocking(fd, True)
    return fd


def _walk(root: str | os.PathLike, parts: list[str], follow_root: bool) -> int:
    """A descriptor of the folder ``root/parts[0]/.../parts[-1]``, every component opened
    without following a link (``root`` itself too, unless ``follow_root``)."""
    try:
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY if follow_root else _DIR_FLAGS)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise FileNotFoundError(errno.ENOENT, "not a real folder", str(root)) from None
    try:
        for i, part in enumerate(parts):
            inner = _open_folder(part, dir_fd, "/".join(parts[: i + 1]))
            os.close(dir_fd)
            dir_fd = inner
    except BaseException:
        os.close(dir_fd)
        raise
    return dir_fd


def open_below(root: str | os.PathLike, rel: str, follow_root: bool = True) -> int:
    """A read descriptor of the regular file ``rel`` ('/'-separated, already checked to lead
    down) below ``root``. Refused for a link on the way or anything but a regular file at
    the end; FileNotFoundError if it is missing. ``root`` is the caller's, and may be a link
    unless ``follow_root`` is False."""
    parts = rel.split("/")
    dir_fd = _walk(root, parts[:-1], follow_root)
    try:
        return _open_leaf(parts[-1], dir_fd, rel)
    finally:
        os.close(dir_fd)


def _relative(path: str | os.PathLike, folder: str | os.PathLike) -> list[str]:
    """``path``'s components below ``folder``; FileNotFoundError if it is not below it."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(folder))
    except ValueError:
        raise FileNotFoundError(errno.ENOENT, "not inside its folder", str(path)) from None
    if not rel.parts or ".." in rel.parts:
        raise FileNotFoundError(errno.ENOENT, "not inside its folder", str(path))
    return list(rel.parts)


def open_inside(path: str | os.PathLike, folder: str | os.PathLike) -> BinaryIO:
    """The regular file ``path`` below ``folder``, open for reading (binary).

    Every component from ``folder`` down, ``folder`` included, is opened without following
    links, and the file without blocking: anything but a regular file is :class:`Refused`,
    a FileNotFoundError like a missing one.
    """
    fd = open_below(folder, "/".join(_relative(path, folder)), follow_root=False)
    return os.fdopen(fd, "rb")


def regular_files_inside(
    path: str | os.PathLike, folder: str | os.PathLike
) -> list[tuple[str, int]]:
    """(name, size) of the regular files in the folder ``path`` below ``folder``, reached as
    :func:`open_inside` does; [] if it is missing or not a real folder."""
    try:
        fd = _walk(folder, _relative(path, folder), follow_root=False)
    except OSError:
        return []
    try:
        with os.scandir(fd) as entries:
            found = [
                (entry.name, st.st_size)
                for entry in entries
                if stat.S_ISREG((st := entry.stat(follow_symlinks=False)).st_mode)
            ]
        return sorted(found)
    except OSError:
        return []
    finally:
        os.close(fd)


def list_tree(root: str | os.PathLike) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(path, size) of every regular file below ``root`` and (path, mode) of everything else
    that is not a folder, both sorted by '/'-separated path; no link is followed (``root``
    itself may be one)."""
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


# -- writing -------------------------------------------------------------------------------


def create_new(path: str | os.PathLike, mode: int = 0o600) -> int:
    """A descriptor (read and write) of a new file at ``path``: whatever is there (an old
    file, or a link planted there) is removed first, and never written through."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on folders
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably: temp file, fsync, rename, fsync
    of the folder. A crash leaves the old content or the new, never a torn file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(create_new(tmp, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


@functools.cache
def writeback() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range(2)``: start writing a range of a file to disk without
    waiting for it (flags 2, ``SYNC_FILE_RANGE_WRITE``). None where libc has no such call."""
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


# -- hashing and copying -------------------------------------------------------------------


def hash_fd(
    fd: int,
    hasher: Hasher,
    most: int | None = None,
    progress: Progress | None = None,
    sink: Callable[[bytes], None] | None = None,
) -> tuple[str, int]:
    """The digest (hex) and length of what ``fd`` holds from its position, at most ``most``
    bytes (None: to its end, however far it grew); each chunk read also goes to ``sink``.

    Large files are read into two reused :data:`CHUNK` buffers: one is filled while the
    other is hashed on a helper thread (file reads, hashlib and blake3 all release the GIL).
    No mmap: a file truncated while mapped kills the process with SIGBUS.
    """
    left = os.fstat(fd).st_size if most is None else most
    piped = left >= PIPELINE_FROM  # only a hint: a file that grows is still read to its end
    size = CHUNK if piped else max(64 * 1024, min(left + 1, CHUNK))
    views = [memoryview(bytearray(size)) for _ in range(2 if piped else 1)]
    total, turn, pending = 0, 0, None
    helper = ThreadPoolExecutor(1, thread_name_prefix="aigrid-hash") if piped else None
    with helper or contextlib.nullcontext():
        while True:
            n = _read(fd, views[turn], most, total) if most is None or total < most else 0
            if pending is not None:
                pending.result()
            if not n:
                break
            chunk = views[turn][:n]
            if helper is None:
                hasher.update(chunk)
            else:  # hashed while the other buffer is filled
                pending = helper.submit(hasher.update, chunk)
            total += n
            if sink is not None:
                sink(bytes(chunk))
            if progress is not None:
                progress(n)
            turn = (turn + 1) % len(views)
    return hasher.hexdigest(), total


def _read(fd: int, view: memoryview, most: int | None, done: int) -> int:
    return os.readv(fd, [view if most is None else view[: most - done]])


def copy_hashed(
    source: int, target: int, hasher: Hasher, most: int, progress: Progress | None = None
) -> tuple[str, int]:
    """Copy up to ``most`` bytes from fd ``source`` to fd ``target`` (open for reading and
    writing: :func:`create_new`), make them durable, and return the digest and size of what
    the *copy* holds. ``progress(n)`` after each ``n`` bytes copied.

    The bytes move in the kernel (``copy_file_range``: a reflink where the filesystem can) a
    :data:`SLICE` at a time, or by reads and writes where it cannot copy across. A second
    thread hashes each slice back from the copy (the page cache) as soon as it is there, and
    the disk starts writing it back at once, so copying, hashing and writing overlap and the
    fsync at the end has little left to wait for. Pass ``most`` one byte over the expected
    size: a source that grew then shows.
    """
    copied: queue.Queue[int | None] = queue.Queue()  # how far the copy has come
    failed: list[OSError] = []

    def hash_back() -> None:
        view, offset = memoryview(bytearray(CHUNK)), 0
        try:
            while (end := copied.get()) is not None:
                while offset < end:
                    n = os.preadv(target, [view[: min(end - offset, CHUNK)]], offset)
                    if not n:
                        raise OSError(errno.EIO, "the copy is shorter than what was copied")
                    hasher.update(view[:n])
                    offset += n
        except OSError as e:
            failed.append(e)
            while copied.get() is not None:  # let the copier finish its puts
                pass

    hashing = threading.Thread(target=hash_back, name="aigrid-hash-back")
    hashing.start()
    size, start_writeback = 0, writeback()
    buffer: memoryview | None = None  # for reads and writes, once the kernel cannot copy
    try:
        while size < most:
            want = min(SLICE, most - size)
            if buffer is None:
                try:
                    n = os.copy_file_range(source, target, want)
                except OSError as e:
                    if e.errno not in _NO_KERNEL_COPY:
                        raise
                    buffer = memoryview(bytearray(CHUNK))
                    continue
            else:
                n = _plain_copy(source, target, want, buffer)
            if n == 0:
                break
            size += n
            copied.put(size)
            if start_writeback is not None:
                start_writeback(target, size - n, n, 2)  # SYNC_FILE_RANGE_WRITE: no wait
            if progress is not None:
                progress(n)
    finally:
        copied.put(None)
        hashing.join()
    if failed:
        raise failed[0]
    os.fsync(target)
    return hasher.hexdigest(), size


def _plain_copy(source: int, target: int, most: int, buffer: memoryview) -> int:
    """Up to ``most`` bytes read from ``source`` and written to ``target``; 0 at the end."""
    total = 0
    while total < most and (n := os.readv(source, [buffer[: min(most - total, len(buffer))]])):
        written = 0
        while written < n:
            written += os.write(target, buffer[written:n])
        total += n
    return total
