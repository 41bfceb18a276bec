"""The ``%aigrid`` command line: one parser per command, and the help text.

Every command is parsed by an IPython ``MagicArgumentParser`` (:class:`.parsing.MagicParser`),
so misuse is a UsageError that says what to write instead.
"""

from __future__ import annotations

from ..options import add_job_options, policy_option
from ..vocabulary import JOB_STATES
from .datasets import dataset_parsers
from .jobs import OUTPUT_MODES
from .parsing import MagicParser, add_inference_options, latency_ms

CELL_FILE = "<aigrid cell>"
#: The commands whose code can be the cell, and options to show in their examples.
CELL_COMMANDS = ("run", "infer")
EXAMPLE_OPTIONS = {"run": "--gpus 2", "infer": "--model resnet50 --slo 50ms"}


def _run_parser(prog: str = "run") -> MagicParser:
    """``run``'s options; ``infer`` has the same ones and its own group in front of them."""
    if prog == "infer":
        p = MagicParser(
            prog="infer",
            # argparse %-formats usage (%% is one %), and IPython puts a % in front of it.
            usage="%%aigrid infer --model MODEL (--slo LATENCY | --deadline D) [options]  "
            "(cell)\n       %%aigrid infer --model MODEL (--slo LATENCY | --deadline D) "
            "[options] serve.py [args]",
            description="Run a cell (or a script) as an inference job with a QoS requirement: "
            "the master picks the resource type whose latency profile meets the SLO at least "
            "cost, and learns from the latencies the job reports (runtime.report(latency_ms=)).",
        )
        add_inference_options(p)
    else:
        p = MagicParser(
            prog="run",
            usage="%%aigrid run [options]   (cell)\n       %%aigrid run [options] script.py [args]",
            description="Run a cell (or a script) as one gang-scheduled job on the cluster.",
        )
    add_job_options(p)
    data = p.add_argument_group("data exchange")
    data.add_argument(
        "--push",
        action="append",
        default=[],
        metavar="a,b",
        help="notebook variables sent (cloudpickled) to every rank's globals",
    )
    data.add_argument(
        "--pull",
        action="append",
        default=[],
        metavar="x,y",
        help="rank 0's variables brought back into the notebook when the job succeeds",
    )
    how = p.add_argument_group("behaviour")
    how.add_argument(
        "--detach",
        action="store_true",
        help="return a handle at once instead of waiting (then: %%aigrid wait ID)",
    )
    how.add_argument(
        "--output",
        choices=OUTPUT_MODES,
        default="all",
        help="whose output streams into the cell (default: all ranks, prefixed [rank])",
    )
    p.add_argument("program", nargs="...", help="line form only: script.py and its arguments")
    return p


def _command_parsers() -> dict[str, MagicParser]:
    parsers = {"run": _run_parser(), "infer": _run_parser("infer")}
    p = parsers["jobs"] = MagicParser(prog="jobs", description="List your jobs.")
    p.add_argument("--state", choices=JOB_STATES)
    for name, what in (
        ("status", "A live widget of one job."),
        ("cancel", "Cancel a job (a running gang is stopped)."),
    ):
        parsers[name] = MagicParser(prog=name, description=what)
        parsers[name].add_argument("job_id", metavar="ID")
    p = parsers["logs"] = MagicParser(prog="logs", description="Print a job's output, [rank] line.")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until it ends")
    p.add_argument("--rank", type=int)
    p.add_argument("--tail", type=int, metavar="N", help="start with the last N lines of each")
    p = parsers["wait"] = MagicParser(
        prog="wait",
        description="Wait for a job to end and pull its values into the notebook.",
    )
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--timeout", type=float, metavar="SECONDS")
    p = parsers["checkpoint"] = MagicParser(
        prog="checkpoint",
        description="Ask a running job for a checkpoint now (its ranks must call "
        "runtime.should_checkpoint()); shows the job, the request's state live.",
    )
    p.add_argument("job_id", metavar="ID")
    p = parsers["migrate"] = MagicParser(
        prog="migrate",
        description="Move a running job to other nodes (checkpoint, stop, transfer, restore); "
        "shows the job, the migration's phases live.",
    )
    p.add_argument("job_id", metavar="ID")
    p.add_argument(
        "--node", metavar="NODE", help="where to move it (default: wherever there is room)"
    )
    parsers["cluster"] = MagicParser(prog="cluster", description="A live grid of nodes and GPUs.")
    parsers["templates"] = MagicParser(
        prog="templates", description="The job templates (--template)."
    )
    parsers["images"] = MagicParser(prog="images", description="The base-image catalog (--image).")
    p = parsers["profiles"] = MagicParser(
        prog="profiles",
        description="The latency profiles the master learnt from inference jobs: per model and "
        "resource type, p50/p95/EWMA latency, throughput and cost, plotted against an SLO.",
    )
    p.add_argument("--model", metavar="MODEL", help="only this model (default: every model)")
    p.add_argument(
        "--slo", type=latency_ms, metavar="LATENCY", help="draw this p95 target: 50ms, 0.05s, 50"
    )
    p = parsers["simulate"] = MagicParser(
        prog="simulate",
        description="Replay the jobs that ran here under another policy (admins).",
    )
    p.add_argument("--policy", required=True, help="fifo, priority, fairshare, las, ...")
    p.add_argument(
        "--option",
        type=policy_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a policy option, VALUE as JSON",
    )
    p.add_argument("--preempt-overhead-s", type=float, default=40.0, metavar="SECONDS")
    p = parsers["connect"] = MagicParser(
        prog="connect",
        description="Use this master instead of the Jupyter server that started the kernel.",
    )
    p.add_argument("url", metavar="URL")
    p.add_argument("--token", default="")
    parsers.update(dataset_parsers())
    return parsers


#: Every command, as typed: ``run``, ..., ``dataset upload``, ``dataset list``, ...
PARSERS = _command_parsers()
#: The first words of the commands.
COMMANDS = list(dict.fromkeys(name.split()[0] for name in PARSERS))

_DOC = """Run notebook cells as gang-scheduled jobs on the AI Grid cluster, and manage them.

Cell magic::

    %%aigrid run [options]
    %%aigrid infer --model MODEL [--slo LATENCY] [--deadline D] [--qos CLASS] [options]

Line magics::

    %aigrid run [options] script.py [args...]
    %aigrid infer --model MODEL [--slo LATENCY] [--deadline D] [options] serve.py [args...]
    %aigrid profiles [--model MODEL] [--slo LATENCY]
    %aigrid jobs [--state STATE]
    %aigrid status ID
    %aigrid logs ID [-f] [--rank R] [--tail N]
    %aigrid cancel ID
    %aigrid cluster
    %aigrid simulate --policy NAME [--option KEY=VALUE] [--preempt-overhead-s S]
    %aigrid connect URL [--token TOKEN]
    %aigrid wait ID [--timeout SECONDS]
    %aigrid checkpoint ID
    %aigrid migrate ID [--node NODE]
    %aigrid dataset upload PATH [--name NAME] [--node NODE]
    %aigrid dataset list
    %aigrid dataset verify NAME
    %aigrid dataset rm NAME [--version V]

Examples
--------
In [1]: %load_ext jupyter_aigrid

In [2]: %%aigrid run --gpus 2 --name mnist --pull losses
   ...: from jupyter_aigrid import runtime
   ...: dist = runtime.init_distributed()
   ...: losses = [1.0 / (runtime.rank() + 1)]

In [3]: losses                       # rank 0's value, now in the notebook
Out[3]: [1.0]

In [4]: lr = 0.1
In [5]: %%aigrid run --gpus 4 --push lr --detach
   ...: print(lr)                    # pushed to every rank
Out[5]: <JobHandle 7 (cell)>         # shows the live job widget

In [6]: %aigrid wait 7
In [7]: %aigrid run --gpus 2 train.py --epochs 3
In [8]: %aigrid cluster              # who holds which GPU, live
In [9]: %aigrid migrate 7 --node node-1   # checkpoint, stop, move, restore; phases live

In [10]: %aigrid dataset upload ./mnist --name mnist   # resumes if interrupted
In [11]: %%aigrid run --gpus 2 --dataset mnist        # or mnist@2: a pinned version
    ...: import os
    ...: print(os.listdir(os.path.join(os.environ["AIGRID_DATA"], "mnist")))

In [12]: %%aigrid infer --model resnet50 --slo 50ms --qos realtime --gpus 1
    ...: import time
    ...: from jupyter_aigrid import runtime
    ...: for batch in range(100):
    ...:     t = time.perf_counter()
    ...:     ...                                    # serve one batch of 32
    ...:     runtime.report(latency_ms=(time.perf_counter() - t) * 1e3, items=32)

In [13]: %%aigrid infer --model resnet50 --deadline 10m --qos batch   # whole job in 10 min
In [14]: %aigrid profiles --model resnet50 --slo 50ms   # p50/p95 per GPU type vs the SLO

An inference job runs like ``run`` (same options, output, widget), and the master places it
on the resource type that meets its SLO at least cost; the widget shows that choice, the
predicted and the observed p95, and whether the SLO was met. ``--slo`` takes 50ms, 0.05s or 50
(milliseconds); ``--deadline`` takes 90s, 10m or 1h; ``--qos`` is realtime, interactive
(the default) or batch.

The cell blocks while the job runs; Ctrl-C (or the stop button) cancels it. An exception on
any rank becomes the cell's error, with the remote traceback. The kernel finds the Jupyter
server that started it, and its token, by itself; ``%aigrid connect`` points elsewhere.

"""


def help_text() -> str:
    sections = [PARSERS[name].format_help() for name in PARSERS]
    return _DOC + "\n".join(sections)
