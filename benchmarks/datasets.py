"""Dataset hashing: how fast ``contents.hash_file`` (blake3) reads a file, next to sha256sum.

    python benchmarks/datasets.py [--size 1073741824] [--dir DIR] [--repeat 3]

A file of ``--size`` random bytes is written in a temporary folder under ``--dir`` (default:
the system's temporary folder on disk; not /dev/shm, so the file is a real one in the page
cache), read once to warm the page cache, then hashed ``--repeat`` times by each of: our
``hash_file``, ``sha256sum FILE`` (a subprocess, as a user would run it), ``b3sum FILE`` when
it is installed, and Python's ``hashlib.sha256`` (a reference for the same language). Each
figure is the best of the repeats. The digests are checked: ours (and b3sum's) against
blake3's ``update_mmap``, hashlib's against sha256sum's.

Target: ``hash_file`` at least as fast as ``sha256sum`` (printed as met or NOT met; the exit
status is non-zero only when a digest is wrong).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3
from _files import MiB, write_file

from jupyter_aigrid.contents import CHUNK, hash_file


def warm(path: Path) -> None:
    """Read the whole file once, so every hasher reads it from the page cache."""
    buffer = memoryview(bytearray(CHUNK))
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


def reference_blake3(path: Path) -> str:
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(str(path))
    return hasher.hexdigest()


def hashlib_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    buffer = memoryview(bytearray(CHUNK))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            sha.update(buffer[:n])
    return sha.hexdigest()


def command_digest(tool: str) -> Callable[[Path], str]:
    def run(path: Path) -> str:
        out = subprocess.run([tool, str(path)], check=True, capture_output=True, text=True)
        return out.stdout.split()[0]

    return run


def best_of(
    label: str, repeat: int, hasher: Callable[[Path], str], path: Path
) -> tuple[float, str]:
    """The fastest of ``repeat`` runs, in seconds, and the digest (the same every run)."""
    times, digests = [], set()
    for _ in range(repeat):
        t0 = time.perf_counter()
        digests.add(hasher(path))
        times.append(time.perf_counter() - t0)
    if len(digests) != 1:
        msg = f"{label} gave different digests on the same file: {sorted(digests)}"
        raise RuntimeError(msg)
    return min(times), digests.pop()


def fmt_size(size: int) -> str:
    return f"{size / 2**30:g} GiB" if size >= 2**30 else f"{size / MiB:g} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2**30, help="bytes in the file (default 1 GiB)")
    ap.add_argument(
        "--dir", default=None, help="folder for the temporary file (default: the system's)"
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs per hasher, best kept")
    args = ap.parse_args()

    hashers: list[tuple[str, Callable[[Path], str], str]] = [
        ("contents.hash_file (blake3)", hash_file, "blake3"),
        ("sha256sum FILE", command_digest("sha256sum"), "sha256"),
    ]
    if shutil.which("b3sum"):
        hashers.append(("b3sum FILE", command_digest("b3sum"), "blake3"))
    hashers.append(("hashlib.sha256 (Python)", hashlib_sha256, "sha256"))

    load = os.getloadavg()[0]  # printed: other work on a 2-core machine slows the figures
    with tempfile.TemporaryDirectory(prefix="aigrid-bench-datasets-", dir=args.dir) as tmp:
        path = Path(tmp) / "data.bin"
        print(f"writing {fmt_size(args.size)} to {path} ...", flush=True)
        write_file(path, args.size, sync=True)
        warm(path)
        expected = {"blake3": reference_blake3(path), "sha256": None}
        results = []
        for label, hasher, algorithm in hashers:
            print(f"{label}: best of {args.repeat} ...", flush=True)
            seconds, digest = best_of(label, args.repeat, hasher, path)
            if expected[algorithm] is None:
                expected[algorithm] = digest
            results.append((label, seconds, digest == expected[algorithm]))

    wrong = [label for label, _, ok in results if not ok]
    baseline = next(s for label, s, _ in results if label.startswith("sha256sum"))
    ours = results[0][1]
    print(
        f"\n{fmt_size(args.size)} in the page cache, best of {args.repeat}; "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, blake3 {blake3.__version__}; "
        f"load average {load:.2f} at the start\n"
    )
    print("| hasher | seconds | GB/s | vs sha256sum | digest |")
    print("|---|---:|---:|---:|---|")
    for label, seconds, ok in results:
        print(
            f"| {label} | {seconds:.3f} | {args.size / seconds / 1e9:.2f} | "
            f"{baseline / seconds:.1f}x | {'ok' if ok else 'WRONG'} |"
        )
    b3sum = "" if shutil.which("b3sum") else " (b3sum is not installed: no row for it)"
    print(
        f"\ntarget: at least as fast as sha256sum: {'met' if ours <= baseline else 'NOT met'} "
        f"({baseline / ours:.1f}x){b3sum}"
    )
    if wrong:
        print(f"wrong digests from: {', '.join(wrong)}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
