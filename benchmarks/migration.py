"""Checkpoint-based migration: how long moving a running job to another node takes.

    python benchmarks/migration.py [--sizes 10,100,1024] [--repeat 1]

AI Grid: a real server (local executor, 2 logical nodes, 1 simulated GPU each) runs
``examples/train_resume.py`` on 1 GPU with ``--state-mb M`` (M MiB of extra state in every
checkpoint), many steps and a small sleep per step. Once the job listens for checkpoint
requests (``checkpoint.listening``), ``POST /jobs/{id}/migrate`` moves it to the other node;
the job view is polled until ``migration.state`` is ``done`` (or ``failed``), and each
phase's duration and bytes are read from it (``checkpointing -> stopping -> transferring ->
restoring``). Total: the first phase's start to the last phase's end. The job is then
cancelled. The master starts the destination's replica when the migration begins
(``migration_prestart``, on by default): its start-up runs while the checkpoint is written
and copied, and ``restoring`` lasts until it has restored (once it is up). Pass
``--cold`` to start it only once the checkpoint is there, as before.

Baseline, in the same run and on the same filesystem, for every size: a file of the same
size (the checkpoint's bytes) written in node-0's scratch area and left in the page cache,
copied to node-1's scratch area by ``cp`` (a subprocess) and by ``shutil.copyfile``; and two
process starts: the job's own (the same script, run the same way, ``--steps 0``: Python,
torch, ``torch.use_deterministic_algorithms``, the model, to its exit) and a bare
``python -c "import torch"``; each the median of 3.

Target: the whole migration under 1.5 x (cp + process start), where the process start is
the job's own: any restart of this job pays for its set-up, which ``import torch`` alone
leaves out (``use_deterministic_algorithms`` imports torch's compiler stack, a second on
this machine). The ratio against ``import torch`` is printed too. Figures are printed,
never asserted; the exit status is non-zero only when a migration fails or hangs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
from _files import MiB, write_file
from _server import BenchServer

ROOT = Path(__file__).resolve().parent.parent
TRAIN = (ROOT / "examples" / "train_resume.py").read_text()
SERVER_ARGS = [
    "--AIGridApp.local_nodes=2",
    "--AIGridApp.simulated_gpus=1",
    "--AIGridApp.local_cpus_per_node=2",
]
PHASES = ("checkpointing", "stopping", "transferring", "restoring")
TARGET_FACTOR = 1.5
STEPS = 10_000_000  # never reached: the job is cancelled after its migration
SLEEP_S = 0.02  # per step: the job answers a checkpoint request within a step or so
HTTP_TIMEOUT_S = 60.0


class BenchError(RuntimeError):
    """A migration that failed, hung or could not start; the message says what was seen."""


# -- baseline --------------------------------------------------------------------------------


def time_cp(src: Path, dst: Path) -> float:
    dst.unlink(missing_ok=True)
    t0 = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    dt_s = time.perf_counter() - t0
    if dst.stat().st_size != src.stat().st_size:
        msg = f"cp wrote {dst.stat().st_size} bytes, not {src.stat().st_size}"
        raise RuntimeError(msg)
    return dt_s


def time_copyfile(src: Path, dst: Path) -> float:
    dst.unlink(missing_ok=True)
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    return time.perf_counter() - t0


def time_process_start(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *argv], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def time_job_start(out: Path) -> float:
    """The job's own start: its script under the replica runner, 0 steps, in a new process."""
    script = ROOT / "examples" / "train_resume.py"
    return time_process_start(
        ["-u", "-m", "jupyter_aigrid.runner", str(script), "--steps", "0", "--out", str(out)]
    )


def baseline(srv: BenchServer, size: int) -> dict[str, float]:
    """Median seconds of 3 of: cp, shutil.copyfile, and a ``python -c 'import torch'``."""
    nodes = srv.state_dir / "nodes"
    src_dir, dst_dir = nodes / "node-0" / "bench-baseline", nodes / "node-1" / "bench-baseline"
    src_dir.mkdir(parents=True, exist_ok=True)
    dst_dir.mkdir(parents=True, exist_ok=True)
    src, dst = src_dir / "state.bin", dst_dir / "state.bin"
    try:
        write_file(src, size)
        cp = [time_cp(src, dst) for _ in range(3)]
        copyfile = [time_copyfile(src, dst) for _ in range(3)]
    finally:  # the big files go at once, not only with the server's folder at the end
        shutil.rmtree(src_dir, ignore_errors=True)
        shutil.rmtree(dst_dir, ignore_errors=True)
    torch_start = [time_process_start(["-c", "import torch"]) for _ in range(3)]
    job_start = [time_job_start(src_dir) for _ in range(3)]
    shutil.rmtree(src_dir, ignore_errors=True)
    return {
        "cp": statistics.median(cp),
        "copyfile": statistics.median(copyfile),
        "start": statistics.median(job_start),
        "torch_start": statistics.median(torch_start),
    }


# -- AI Grid ---------------------------------------------------------------------------------


def parse_iso(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def server_log_tail(srv: BenchServer, lines: int = 40) -> str:
    return "\n".join(srv.log().splitlines()[-lines:])


def get_job(srv: BenchServer, s, job_id: str) -> dict:
    r = s.get(srv.api("jobs", job_id), timeout=HTTP_TIMEOUT_S)
    r.raise_for_status()
    return r.json()


def wait_job(srv, s, job_id: str, done, what: str, timeout_s: float, interval_s=0.05) -> dict:
    """Poll the job view until ``done(job)``; BenchError (with the view) after ``timeout_s``
    or when the job ends first."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = get_job(srv, s, job_id)
        if done(job):
            return job
        if job["state"] in ("succeeded", "failed", "cancelled", "lost"):
            msg = f"job {job_id} ended ({job['state']}: {job.get('reason')}) before {what}"
            raise BenchError(msg, job)
        if time.monotonic() > deadline:
            msg = f"job {job_id} did not reach {what} within {timeout_s:g} s"
            raise BenchError(msg, job)
        time.sleep(interval_s)


def cancel(srv: BenchServer, s, job_id: str, timeout_s: float = 60.0) -> str:
    """DELETE the job and wait for it to end; its final state."""
    r = s.delete(srv.api("jobs", job_id), timeout=HTTP_TIMEOUT_S)
    if r.status_code not in (200, 202, 409):  # 409: it had already ended
        print(f"  ! DELETE /jobs/{job_id} answered {r.status_code}: {r.text[:300]}")
    final = ("succeeded", "failed", "cancelled", "lost")
    try:
        job = wait_job(
            srv, s, job_id, lambda j: j["state"] in final, "its end", timeout_s, interval_s=0.1
        )
    except BenchError as e:
        job = e.args[1]
    return job["state"]


def migrate_once(srv: BenchServer, s, state_mb: float, out: Path, timeout_s: float) -> dict:
    """Submit, wait for it to listen, migrate to the other node, time it; cancel the job."""
    body = {
        "name": f"bench-migrate-{state_mb:g}mb",
        "code": TRAIN,
        "args": [
            *("--steps", str(STEPS), "--sleep", str(SLEEP_S), "--out", str(out)),
            *("--state-mb", f"{state_mb:g}"),
        ],
        "gpus": 1,
    }
    r = s.post(srv.api("jobs"), data=json.dumps(body), timeout=HTTP_TIMEOUT_S)
    if r.status_code != 201:
        msg = f"submit answered {r.status_code}: {r.text[:500]}"
        raise BenchError(msg, None)
    job_id = r.json()["id"]
    try:
        job = wait_job(
            srv, s, job_id, lambda j: j["checkpoint"]["listening"], "checkpoint.listening", 300
        )
        source = sorted({p["node"] for p in job["placement"]})
        others = sorted(n for n in ("node-0", "node-1") if n not in source)
        if not others:
            msg = f"job {job_id} runs on {source}: no other node to move it to"
            raise BenchError(msg, job)
        t0 = time.perf_counter()
        r = s.post(
            srv.api("jobs", job_id, "migrate"),
            data=json.dumps({"node": others[0]}),
            timeout=HTTP_TIMEOUT_S,
        )
        if r.status_code != 202:
            msg = f"POST /jobs/{job_id}/migrate answered {r.status_code}: {r.text[:500]}"
            raise BenchError(msg, get_job(srv, s, job_id))
        job = wait_job(
            srv,
            s,
            job_id,
            lambda j: (j.get("migration") or {}).get("state") in ("done", "failed"),
            "the end of its migration",
            timeout_s,
        )
        observed = time.perf_counter() - t0
        migration = job["migration"]
        if migration["state"] != "done":
            msg = f"migration of job {job_id} failed: {migration.get('error')}"
            raise BenchError(msg, job)
        phases = {p["phase"]: p for p in migration["phases"]}
        missing = [p for p in PHASES if p not in phases]
        if missing:
            msg = f"migration of job {job_id} is done without phase(s) {missing}"
            raise BenchError(msg, job)
        first, last = migration["phases"][0], migration["phases"][-1]
        to = sorted({p["node"] for p in job["placement"]})
        return {
            "job_id": job_id,
            "from": source,
            "to": to,
            "state": job["state"],
            "durations": {p: phases[p]["duration_s"] for p in PHASES},
            "bytes": {p: phases[p]["bytes"] for p in PHASES},
            "total": parse_iso(last["finished_at"]) - parse_iso(first["started_at"]),
            "observed": observed,
            "checkpoint_bytes": migration.get("bytes"),
            "write_s": ((job.get("checkpoint") or {}).get("latest") or {}).get("seconds"),
            "restored": restored(srv, job_id, to[0], job["attempt"]),
            "prestart": migration.get("prestart"),
        }
    finally:
        state = cancel(srv, s, job_id)
        if state != "cancelled":
            print(f"  ! job {job_id} ended {state} after its DELETE")


def restored(srv: BenchServer, job_id: str, node: str, attempt: int) -> dict:
    """What rank 0 says of its ``runtime.restore()``: the seconds it took (read, verify,
    torch.load) and, for a replica started ahead of time, the seconds it waited for the go;
    from the answer it leaves the master in the node's checkpoint folder ({} if not found)."""
    pattern = f"*-{job_id}/.control/restored-{attempt}-0.json"
    for path in (srv.state_dir / "nodes" / node / "checkpoints").glob(pattern):
        with contextlib.suppress(OSError, ValueError, TypeError):
            return json.loads(path.read_text())
    return {}


def kill_leftover_replicas(srv: BenchServer) -> None:
    """SIGKILL the process group of any replica of ours still running (the master leaves
    running replicas alone when it stops): only wrappers whose command line names their
    exit file under our temporary folder, and whose exit file is not written yet."""
    # os.walk, not rglob: the master deletes a cancelled job's checkpoint folders meanwhile.
    pidfiles = [
        os.path.join(folder, name)
        for folder, _, names in os.walk(srv.tmp)
        for name in names
        if name.endswith(".exit.pid")
    ]
    for pidfile in pidfiles:
        exit_path = pidfile[: -len(".pid")]
        if os.path.exists(exit_path):
            continue
        with contextlib.suppress(ValueError, OSError, psutil.Error):
            pid = int(Path(pidfile).read_text().strip())
            if exit_path in psutil.Process(pid).cmdline():
                print(f"  ! killing a leftover replica (process group {pid})")
                os.killpg(pid, signal.SIGKILL)


# -- report ----------------------------------------------------------------------------------


def fmt_size(mb: float) -> str:
    return f"{mb / 1024:g} GiB" if mb >= 1024 else f"{mb:g} MiB"


def fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / MiB:,.1f} MiB"


def print_table(rows: list[tuple[float, dict, dict | None, str | None]]) -> None:
    cols = [
        ("size", 9),
        ("checkpointing", 14),
        ("stopping", 9),
        ("transferring", 13),
        ("restoring", 10),
        ("total migr.", 12),
        ("cp", 7),
        ("job start", 10),
        ("target", 8),
        ("ratio", 6),
        ("met?", 5),
    ]
    print("\nseconds (migration phases from the job view; baseline: median of 3)\n")
    print("  ".join(f"{name:>{w}}" for name, w in cols))
    for mb, base, mig, _ in rows:
        floor = base["cp"] + base["start"]
        target = TARGET_FACTOR * floor
        if mig is None:
            cells = [fmt_size(mb)] + ["-"] * 5
            tail = [f"{base['cp']:.3f}", f"{base['start']:.3f}", f"{target:.3f}", "-", "FAIL"]
        else:
            d = mig["durations"]
            cells = [fmt_size(mb)] + [f"{d[p]:.3f}" for p in PHASES] + [f"{mig['total']:.3f}"]
            ratio = mig["total"] / floor
            tail = [
                f"{base['cp']:.3f}",
                f"{base['start']:.3f}",
                f"{target:.3f}",
                f"{ratio:.2f}",
                "yes" if mig["total"] < target else "NO",
            ]
        print("  ".join(f"{c:>{w}}" for c, (_, w) in zip(cells + tail, cols, strict=True)))
    print(
        f"\ntarget: total migration < {TARGET_FACTOR:g} x (cp + job start); "
        "ratio = total / (cp + job start), so met means ratio < 1.5"
    )

    print("\nbytes and details")
    for mb, base, mig, error in rows:
        if mig is None:
            print(f"  {fmt_size(mb)}: FAILED: {error}")
            continue
        b = mig["bytes"]
        write = f"{mig['write_s']:.3f} s" if mig["write_s"] is not None else "?"
        seconds, waited = mig["restored"].get("seconds"), mig["restored"].get("waited_s")
        restore = f"{seconds:.3f} s" if seconds is not None else "?"
        if (mig["prestart"] or {}).get("state") == "go":
            restore += (
                f" (started at the migration's start, it waited {waited:.3f} s there for the go)"
                if waited is not None
                else " (started at the migration's start)"
            )
        else:
            restore += " (started once the checkpoint was there)"
        print(
            f"  {fmt_size(mb)}: checkpoint {fmt_bytes(mig['checkpoint_bytes'])}; "
            f"written {fmt_bytes(b['checkpointing'])} (the job's own write took {write}); "
            f"transferred {fmt_bytes(b['transferring'])} "
            f"{'/'.join(mig['from'])} -> {'/'.join(mig['to'])}\n"
            f"  {'':{len(fmt_size(mb))}}  runtime.restore() in the new process took {restore}; "
            f"POST -> done seen by the client: {mig['observed']:.3f} s; "
            f"baseline shutil.copyfile: {base['copyfile']:.3f} s\n"
            f"  {'':{len(fmt_size(mb))}}  python -c 'import torch': {base['torch_start']:.3f} s; "
            f"total / (cp + import torch) = "
            f"{mig['total'] / (base['cp'] + base['torch_start']):.2f}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes",
        default="10,100,1024",
        help="extra checkpoint state per size, MiB, comma-separated (default 10,100,1024)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="migrations per size")
    ap.add_argument(
        "--timeout", type=float, default=600.0, help="seconds a migration may take (default 600)"
    )
    ap.add_argument(
        "--cold",
        action="store_true",
        help="start the destination's replica once the checkpoint is there (no prestart)",
    )
    args = ap.parse_args()
    sizes = [float(x) for x in args.sizes.split(",") if x.strip()]
    server_args = [*SERVER_ARGS, f"--AIGridApp.migration_prestart={not args.cold}"]

    rows: list[tuple[float, dict, dict | None, str | None]] = []
    failed = False
    print(f"starting the Jupyter server ({' '.join(server_args)}) ...", flush=True)
    srv = BenchServer(server_args)
    try:
        srv.start()
        s = srv.session()
        for mb in sizes:
            for i in range(args.repeat):
                label = f"{fmt_size(mb)} #{i + 1}/{args.repeat}"
                print(f"{label}: baseline (cp, copyfile, job start, import torch) ...", flush=True)
                base = baseline(srv, int(mb * MiB))
                print(f"{label}: migration ...", flush=True)
                out = srv.tmp / "out" / f"{mb:g}mb-{i}"
                try:
                    mig = migrate_once(srv, s, mb, out, args.timeout)
                    rows.append((mb, base, mig, None))
                    phases = ", ".join(f"{p} {mig['durations'][p]:.3f}" for p in PHASES)
                    print(f"{label}: done in {mig['total']:.3f} s ({phases})", flush=True)
                except BenchError as e:
                    failed = True
                    job = e.args[1] if len(e.args) > 1 else None
                    rows.append((mb, base, None, str(e.args[0])))
                    print(f"{label}: FAILED: {e.args[0]}")
                    if job is not None:
                        print("job view:\n" + json.dumps(job, indent=2, default=str)[:6000])
                    print("server log (tail):\n" + server_log_tail(srv))
                finally:
                    shutil.rmtree(out, ignore_errors=True)
        s.close()
        print_table(rows)
    finally:
        kill_leftover_replicas(srv)
        srv.stop()
    print(
        f"\nserver stopped {f'in {srv.stop_s:.2f} s' if srv.stop_s is not None else '(killed)'}"
        " after SIGTERM"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
