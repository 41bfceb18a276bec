"""A node's dataset folder: the copies we made (sealed read-only), the views jobs see, and
tidying after a crash. These run on the node (through the executor's node files), so
they are plain module-level functions.

Under a node's dataset root:

- ``.aigrid/<name>/<root hash>/``: copies the master made (uploads, staging), read-only;
- ``.aigrid-jobs/<job>/<name>``: links a job sees as ``$AIGRID_DATA/<name>``;
- anything else: data an admin put there and registered in place (never deleted by us).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from .. import contents

MANAGED = ".aigrid"
VIEWS = ".aigrid-jobs"
_READ_ONLY_FILE = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
_READ_ONLY_DIR = _READ_ONLY_FILE | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


def seal(tree: Path) -> None:
    """Make a dataset copy read-only: files 0444, folders 0555 (never following links).
    Readable by all: containers run as ``docker_user``, which is not the server's own user
    when the server runs as root, and every user of the cluster may read every dataset."""
    for folder, dirs, files in os.walk(tree, topdown=False):
        for name in files:
            os.chmod(os.path.join(folder, name), _READ_ONLY_FILE, follow_symlinks=False)
        for name in dirs:
            os.chmod(os.path.join(folder, name), _READ_ONLY_DIR, follow_symlinks=False)
    os.chmod(tree, _READ_ONLY_DIR)


def remove(tree: Path) -> None:
    """Delete a sealed copy (its folders made writable first)."""
    if not tree.exists() and not tree.is_symlink():
        return
    if tree.is_dir() and not tree.is_symlink():
        os.chmod(tree, stat.S_IRWXU)
        for folder, dirs, _ in os.walk(tree):
            for name in dirs:
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    os.chmod(path, stat.S_IRWXU)
    contents.remove_tree(tree)


def make_view(folder: Path, links: dict[str, str]) -> str:
    """On a node: the folder of links a job sees as ``$AIGRID_DATA`` (``<name>`` -> the
    verified copy), made afresh."""
    folder.mkdir(parents=True, exist_ok=True)
    for entry in os.listdir(folder):
        os.unlink(folder / entry)
    for name, target in links.items():
        os.symlink(target, folder / name)
    return str(folder)


def sweep_node(root: Path, known: set[str], unfinished: set[str]) -> list[str]:
    """On a node: delete the copies of ours under ``root`` that no location names (``known``:
    their paths below ``root``) and the views of jobs that ended; the paths deleted."""
    views, removed = root / VIEWS, []
    for view in views.iterdir() if views.is_dir() else ():
        if view.name not in unfinished and not view.is_symlink():
            shutil.rmtree(view, ignore_errors=True)  # links only: never followed
    managed = root / MANAGED
    for name_dir in managed.iterdir() if managed.is_dir() else ():
        for tree in name_dir.iterdir() if name_dir.is_dir() else ():
            rel = f"{MANAGED}/{name_dir.name}/{tree.name}"
            if rel not in known and not stat.S_ISLNK(tree.lstat().st_mode):
                with contextlib.suppress(OSError):
                    remove(tree)
                    removed.append(rel)
    return removed
