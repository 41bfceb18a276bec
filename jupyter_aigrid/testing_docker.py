"""A real Docker engine and a local job image, for the Docker executor's tests and benchmark.

No image registry is reachable from CI, so nothing is pulled. :func:`start_dockerd` starts an
engine of our own (vfs storage, no iptables, no default bridge, its socket and data under one
directory); :func:`build_job_image` imports an image assembled from *this* Python: the
interpreter, its standard library, torch and numpy with everything they require, the
jupyter_aigrid runtime, the shared libraries all of these link to, ``/bin/sh`` and a non-root
user. The result runs ``python -m jupyter_aigrid.runner`` and ``torch.distributed`` (gloo)
like a real base image does (``aigrid-job:torch``; ``aigrid-job:python`` is the same without
torch, quick to start on vfs). Building takes a minute; it is skipped when an image of the same
content (a hash of every file's path, size and mtime) is already there.

    python -m jupyter_aigrid.testing_docker /tmp/aigrid-dockerd   # start, build, print the URL
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

#: Image tag -> what its Python can import (with everything those require).
JOB_IMAGES = {
    "aigrid-job:torch": ("torch", "numpy", "cloudpickle"),
    "aigrid-job:python": ("cloudpickle",),
}
#: Parts of the standard library no job needs.
_STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages"}
_USER = "aigrid"
_UID = 1000


class DockerUnavailable(RuntimeError):
    """No Docker engine could be found or started here (the tests that need one skip)."""


def start_dockerd(root: str | Path, timeout_s: float = 60.0) -> tuple[str, subprocess.Popen | None]:
    """A Docker engine's URL: one already answering at ``root``/docker.sock, or one started
    there now (needs root and ``dockerd``). Returns the URL and the process, if we started it."""
    root = Path(root)
    sock = root / "docker.sock"
    url = f"unix://{sock}"
    if _answers(url):
        return url, None
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        msg = "dockerd is not installed (apt-get install docker.io)"
        raise DockerUnavailable(msg)
    if os.geteuid() != 0:
        msg = "starting dockerd needs root"
        raise DockerUnavailable(msg)
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / "dockerd.log", "ab")  # noqa: SIM115 - lives as long as the engine
    proc = subprocess.Popen(
        [
            dockerd,
            "--storage-driver=vfs",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'dockerd.pid'}",
            f"--host={url}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (root / "dockerd.log").read_text(errors="replace")[-2000:]
            msg = f"dockerd exited with {proc.returncode}:\n{tail}"
            raise DockerUnavailable(msg)
        if _answers(url):
            return url, proc
        time.sleep(0.3)
    proc.kill()
    msg = f"dockerd did not answer on {sock} within {timeout_s} s"
    raise DockerUnavailable(msg)


def stop_dockerd(proc: subprocess.Popen | None, root: str | Path) -> None:
    """Stop an engine :func:`start_dockerd` started, and unmount what it leaves mounted."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    netns = Path(root) / "exec" / "netns"
    for mount in netns.glob("*") if netns.is_dir() else ():
        subprocess.run(["umount", str(mount)], capture_output=True, check=False)


def _answers(url: str) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=url, timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _requirements(names: tuple[str, ...]) -> list[metadata.Distribution]:
    """The installed distributions ``names`` need, their requirements included."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = re.split(r"[\s;<>=!~\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if not name or name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = dist
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            marker = req.split(";", 1)[1] if ";" in req else ""
            if marker and not _marker_holds(marker):
                continue
            todo.append(req)
    return list(seen.values())


def _marker_holds(marker: str) -> bool:
    try:
        from packaging.markers import Marker
    except ImportError:  # without packaging, take the requirement: more files, never fewer
        return True
    return Marker(marker).evaluate()


def _shared_libraries(files: list[Path]) -> set[Path]:
    """Every library outside ``files`` that the ELF files among them load (per ``ldd``)."""
    found: set[Path] = set()
    elves = [f for f in files if f.suffix == ".so" or ".so." in f.name or os.access(f, os.X_OK)]
    for i in range(0, len(elves), 200):
        out = subprocess.run(
            ["ldd", *map(str, elves[i : i + 200])], capture_output=True, text=True, check=False
        ).stdout
        for line in out.splitlines():
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if m:
                found.add(Path(m.group(1)))
    inside = {f.resolve() for f in files}
    return {p for p in found if p.resolve() not in inside and p.exists()}


def image_files(distributions: tuple[str, ...]) -> dict[str, Path]:
    """Path in the image -> file on this machine, for everything a job image holds."""
    prefix = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_paths(vars={"base": sys.base_prefix})["stdlib"])
    purelib = Path(sysconfig.get_paths()["purelib"])
    target_lib = Path("/opt/python") / stdlib.relative_to(prefix)
    out: dict[str, Path] = {}
    exe = Path(sys.executable).resolve()
    out["/opt/python/bin/python3"] = exe
    for lib in (prefix / "lib").glob("libpython*.so*"):
        out[f"/usr/lib/{lib.name}"] = lib  # a directory the loader searches by default
    for path in stdlib.rglob("*"):
        rel = path.relative_to(stdlib)
        if rel.parts[0] in _STDLIB_SKIP or rel.parts[0].startswith("config-") or path.is_dir():
            continue
        out[str(target_lib / rel)] = path
    site = target_lib / "site-packages"
    for dist in _requirements(distributions):
        for f in dist.files or []:
            src = Path(dist.locate_file(f)).resolve()
            with contextlib.suppress(ValueError):
                out[str(site / src.relative_to(purelib))] = src
    package = Path(__file__).resolve().parent
    for path in package.rglob("*.py"):
        rel = path.relative_to(package)
        if rel.parts[0] not in ("labextension", "server", "magics", "sim"):
            out[str(site / "jupyter_aigrid" / rel)] = path
    shell = Path(shutil.which("dash") or "/bin/sh").resolve()
    out["/bin/sh"] = shell
    for lib in _shared_libraries([p for p in out.values() if p.is_file()]):
        out.setdefault(str(lib), lib.resolve())
    loader = Path("/lib64/ld-linux-x86-64.so.2")
    if loader.exists():
        out.setdefault(str(loader), loader.resolve())
    return {k: v for k, v in out.items() if v.is_file()}


def _fingerprint(files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    for dest in sorted(files):
        st = files[dest].stat()
        h.update(f"{dest}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


def build_job_image(client, tag: str, progress=print) -> str:
    """Import the job image ``tag`` (one of :data:`JOB_IMAGES`) into the engine ``client``
    talks to, unless an image of the same content is there already."""
    files = image_files(JOB_IMAGES[tag])
    digest = _fingerprint(files)
    with contextlib.suppress(Exception):
        if client.images.get(tag).labels.get("aigrid.content") == digest:
            return tag
    size = sum(p.stat().st_size for p in files.values())
    progress(f"building the job image {tag}: {len(files)} files, {size / 2**20:.0f} MiB")
    with tempfile.TemporaryDirectory(prefix="aigrid-image-") as tmp:
        tar_path = Path(tmp) / "rootfs.tar"
        with tarfile.open(tar_path, "w") as tar:
            for name, data, mode in _extras():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), mode, int(time.time())
                tar.addfile(info, io.BytesIO(data))
            for name in ("tmp", "home", "home/aigrid", "work"):
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
                if name == "home/aigrid":
                    info.uid = info.gid = _UID
                tar.addfile(info)
            # Every parent directory explicitly, world-readable (implicit ones are not).
            parents = {str(p) for d in files for p in Path(d.lstrip("/")).parents} - {"."}
            for name in sorted(parents - {"tmp", "home", "home/aigrid", "work"}):
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            for dest, src in sorted(files.items()):
                info = tar.gettarinfo(str(src), arcname=dest.lstrip("/"))
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                with open(src, "rb") as f:
                    tar.addfile(info, f)
            link = tarfile.TarInfo("opt/python/bin/python")
            link.type, link.linkname = tarfile.SYMTYPE, "python3"
            tar.addfile(link)
        client.api.import_image_from_file(
            str(tar_path),
            repository=tag.split(":", maxsplit=1)[0],
            tag=tag.split(":")[1] if ":" in tag else "latest",
            changes=[
                "ENV PATH=/opt/python/bin:/usr/local/bin:/usr/bin:/bin",
                "ENV HOME=/home/aigrid",
                f"USER {_UID}:{_UID}",
                "WORKDIR /work",
                f"LABEL aigrid.content={digest}",
                'CMD ["python3"]',
            ],
        )
    progress(f"built {tag}")
    return tag


def _extras() -> list[tuple[str, bytes, int]]:
    passwd = f"root:x:0:0:root:/root:/bin/sh\n{_USER}:x:{_UID}:{_UID}::/home/aigrid:/bin/sh\n"
    group = f"root:x:0:\n{_USER}:x:{_UID}:\n"
    return [
        ("etc/passwd", passwd.encode(), 0o644),
        ("etc/group", group.encode(), 0o644),
        ("etc/hosts", b"127.0.0.1 localhost\n", 0o644),
    ]


def main(argv: list[str] | None = None) -> int:
    import docker

    args = argv if argv is not None else sys.argv[1:]
    root = args[0] if args else os.path.join(tempfile.gettempdir(), "aigrid-dockerd")
    url, _ = start_dockerd(root)
    client = docker.DockerClient(base_url=url)
    for tag in JOB_IMAGES:
        build_job_image(client, tag)
    print(url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
