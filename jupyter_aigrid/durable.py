"""Writing files so that a crash leaves either the old content or the new, never a torn file."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably: temp file, fsync, rename, fsync dir."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # A link planted at the temp name (jobs write beside some of our files) is replaced,
        # never written through.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _refused(path: str | Path) -> FileNotFoundError:
    return FileNotFoundError(f"{path}: not a regular file inside its folder")


def _walk(path: str | Path, folder: str | Path) -> tuple[int, str]:
    """An open descriptor of ``path``'s directory, reached from ``folder`` one component at a
    time without following any link, and the last component's name."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(folder))
    except ValueError:
        raise _refused(path) from None
    if not rel.parts or ".." in rel.parts:
        raise _refused(path)
    try:
        dirfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        for part in rel.parts[:-1]:
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
            finally:
                os.close(dirfd)
            dirfd = inner
    except FileNotFoundError:
        raise
    except OSError as e:  # a link (ELOOP) or a file where a directory should be
        raise _refused(path) from e
    return dirfd, rel.parts[-1]


def open_inside(path: str | Path, folder: str | Path):
    """Open the regular file ``path`` below ``folder`` for reading (binary).

    Jobs write where we read (results, outputs, logs) and may plant a link to what they must
    not see, or a FIFO that would block the reader for ever. Every component from ``folder``
    down is opened without following links, and the file without blocking; anything but a
    regular file is refused with FileNotFoundError. ``folder`` itself is trusted (ours).
    """
    dirfd, name = _walk(path, folder)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
    except FileNotFoundError:
        raise
    except OSError as e:  # ELOOP: a link
        raise _refused(path) from e
    finally:
        os.close(dirfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refused(path)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def regular_files_inside(path: str | Path, folder: str | Path) -> list[tuple[str, int]]:
    """(name, size) of the regular files in the directory ``path`` below ``folder``, reached
    as :func:`open_inside` does; [] if it is missing or not a real directory."""
    try:
        parent, name = _walk(path, folder)
    except OSError:
        return []
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    except OSError:
        return []
    finally:
        os.close(parent)
    try:
        found = []
        with os.scandir(fd) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    found.append((entry.name, st.st_size))
        return sorted(found)
    except OSError:
        return []
    finally:
        os.close(fd)
