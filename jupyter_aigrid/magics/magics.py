"""``%%aigrid run``, ``%%aigrid infer`` and the ``%aigrid`` line magics.

Every command is parsed by an IPython ``MagicArgumentParser``, so misuse is a UsageError that
says what to write instead; the master is reached only through :mod:`jupyter_aigrid.client`.
"""

from __future__ import annotations

import difflib
import os
import shlex
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

from ..cli import (
    cluster_table,
    images_table,
    jobs_table,
    print_logs,
    simulation_table,
    templates_table,
)
from ..client import AIGridError, Client
from ..options import spec_fields
from .cluster_widget import ClusterWidget
from .commands import CELL_COMMANDS, CELL_FILE, COMMANDS, EXAMPLE_OPTIONS, PARSERS, help_text
from .datasets import DatasetCommands
from .jobs import JobHandle, PullError, run_blocking
from .parsing import inference_fields
from .profiles import ProfileWidget
from .transfer import check_pull, encode_push, split_names
from .widgets import JobWidget


@magics_class
class AIGridMagics(DatasetCommands, Magics):
    def __init__(self, shell=None, client: Client | None = None) -> None:
        super().__init__(shell)
        self._client = client
        self.handles: dict[str, JobHandle] = {}
        self._cluster_widget: ClusterWidget | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            try:
                self._client = Client()
            except AIGridError as e:
                msg = f"{e}; or write %aigrid connect URL --token TOKEN"
                raise UsageError(msg) from e
        return self._client

    @line_cell_magic
    def aigrid(self, line: str, cell: str | None = None) -> Any:
        command, _, rest = line.strip().partition(" ")
        if not command:
            msg = "say what to do: %%aigrid run --gpus 2 (cell), or %aigrid jobs (see %aigrid?)"
            raise UsageError(msg)
        if command not in COMMANDS:
            close = difflib.get_close_matches(command, COMMANDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            msg = f"unknown command {command!r}; {hint}commands: {', '.join(COMMANDS)}"
            raise UsageError(msg)
        if command == "dataset":
            command, rest = _subcommand(command, rest)
            if command is None:
                return None
        if cell is not None and command not in CELL_COMMANDS:
            msg = f"only run takes a cell (and infer); write %aigrid {command} {rest}".rstrip()
            raise UsageError(msg)
        argv = shlex.split(rest)
        if argv[:1] in (["-h"], ["--help"]):
            print(PARSERS[command].format_help())
            return None
        args = PARSERS[command].parse_args(argv)
        try:
            return getattr(self, "_" + command.replace(" ", "_"))(args, cell)
        except AIGridError as e:
            raise UsageError(f"%aigrid {command}: {e}") from e

    aigrid.__doc__ = help_text()

    # -- run ----------------------------------------------------------------------------------

    def _run(self, args: Any, cell: str | None) -> JobHandle | None:
        spec, filename = self._spec(args, cell)
        return self._submit(args, spec, filename)

    def _infer(self, args: Any, cell: str | None) -> JobHandle | None:
        """``run`` with the inference fields; named after its model unless ``--name``."""
        fields = inference_fields(args)
        spec, filename = self._spec(args, cell, command="infer")
        if args.name is None:
            spec["name"] = args.model[:128]
        return self._submit(args, {**spec, **fields}, filename)

    def _submit(self, args: Any, spec: dict[str, Any], filename: str) -> JobHandle | None:
        """Submit, then return the handle (``--detach``) or stream the job into the cell."""
        job = self.client.submit(spec)
        handle = JobHandle(self.client, job, pull=spec.get("outputs", []), code_name=filename)
        self.handles[handle.id] = handle
        if args.detach:
            return handle
        # run_blocking shows the widget above the output: once.
        self.shell.user_ns.update(run_blocking(handle, args.output))
        return None

    def _spec(
        self, args: Any, cell: str | None, command: str = "run"
    ) -> tuple[dict[str, Any], str]:
        """The JobSpec of a run (or of ``command``, which takes the same options), checked
        here so that bad input submits nothing, and what tracebacks should call its code."""
        program = list(args.program)
        if cell is not None:
            if program:
                msg = (
                    f"the cell is the code, so {program[0]!r} has no place here; for a "
                    f"script, use the line form: %aigrid {command} {shlex.join(program)}"
                )
                raise UsageError(msg)
            code, filename, name = cell, CELL_FILE, self._default_name()
        else:
            if not program:
                options = EXAMPLE_OPTIONS[command]
                msg = (
                    f"give a script: %aigrid {command} {options} train.py --epochs 3, or put "
                    f"the code in a cell under %%aigrid {command} {options}"
                )
                raise UsageError(msg)
            path = Path(program[0])
            try:
                code = path.read_text(encoding="utf-8")
            except OSError as e:
                msg = f"cannot read {program[0]}: {e.strerror}"
                raise UsageError(msg) from e
            filename, name = str(path), path.name
        push = split_names(args.push, "--push")
        pull = split_names(args.pull, "--pull")
        if not code.strip():
            msg = f"the cell is empty: put the code to run under %%aigrid {command}"
            raise UsageError(msg)
        check_pull(code, pull, push, filename)
        spec: dict[str, Any] = {"code": code, "name": name, **spec_fields(args)}
        if cell is None and program[1:]:
            spec["args"] = program[1:]
        if push:
            spec["inputs"] = encode_push(self.shell.user_ns, push)
        if pull:
            spec["outputs"] = pull
        return spec, filename

    @staticmethod
    def _default_name() -> str:
        session = os.environ.get("JPY_SESSION_NAME")
        return Path(session).stem if session else "cell"

    # -- line commands ------------------------------------------------------------------------

    def _jobs(self, args: Any, cell: None) -> None:
        jobs = self.client.jobs(state=args.state)
        print(jobs_table(jobs) if jobs else "no jobs")

    def _status(self, args: Any, cell: None) -> JobWidget:
        return JobWidget(self.client, self.client.job(args.job_id))

    def _logs(self, args: Any, cell: None) -> None:
        print_logs(self.client, args.job_id, rank=args.rank, follow=args.follow, tail=args.tail)

    def _cancel(self, args: Any, cell: None) -> None:
        job = self.client.cancel(args.job_id)
        print(f"job {job['id']}: cancel requested ({job['state']})")

    def _checkpoint(self, args: Any, cell: None) -> JobWidget:
        job = self.client.checkpoint(args.job_id)
        print(checkpoint_requested(job))
        return JobWidget(self.client, job)

    def _migrate(self, args: Any, cell: None) -> JobWidget:
        try:
            job = self.client.migrate(args.job_id, node=args.node)
        except AIGridError as e:
            if e.field != "node":
                raise
            raise UsageError(f"%aigrid migrate: {e}{self._nodes_hint(args.node)}") from e
        print(migration_started(job))
        return JobWidget(self.client, job)

    def _nodes_hint(self, node: str | None) -> str:
        """``; did you mean node-1? (nodes: node-0, node-1)``; empty if the cluster is unknown."""
        try:
            names = [n["name"] for n in self.client.cluster()["nodes"]]
        except (AIGridError, KeyError, TypeError):
            return ""
        if not names:
            return ""
        close = difflib.get_close_matches(node or "", names, n=1)
        if close and close[0] != node:
            return f"; did you mean {close[0]}? (nodes: {', '.join(names)})"
        return f"; nodes: {', '.join(names)}"

    def _cluster(self, args: Any, cell: None) -> ClusterWidget:
        # One live grid per kernel: the one shown before stops following.
        if self._cluster_widget is not None:
            self._cluster_widget.close()
        self._cluster_widget = ClusterWidget(self.client)
        return self._cluster_widget

    def _profiles(self, args: Any, cell: None) -> ProfileWidget:
        return ProfileWidget(self.client, model=args.model, slo_ms=args.slo)

    def _templates(self, args: Any, cell: None) -> None:
        print(templates_table(self.client.templates()))

    def _images(self, args: Any, cell: None) -> None:
        print(images_table(self.client.images()))

    def _simulate(self, args: Any, cell: None) -> dict[str, Any]:
        found = self.client.simulate(args.policy, dict(args.option), args.preempt_overhead_s)
        print(simulation_table(found))
        return found

    def _connect(self, args: Any, cell: None) -> None:
        client = Client(args.url, args.token)
        cluster = client.cluster()
        self._client = client
        print(f"connected to {client.url}")
        print(cluster_table(cluster))

    def _wait(self, args: Any, cell: None) -> None:
        handle = self.handles.get(args.job_id)
        if handle is None:
            handle = JobHandle(self.client, self.client.job(args.job_id))
            display(handle.widget)
        try:
            values = handle.wait(timeout=args.timeout)
        except PullError as e:
            self.shell.user_ns.update(e.values)
            raise
        except KeyboardInterrupt:
            print(f"stopped waiting; job {handle.id} goes on (%aigrid cancel {handle.id} stops it)")
            return
        except TimeoutError as e:
            raise UsageError(str(e)) from e
        self.shell.user_ns.update(values)
        pulled = f"; pulled {', '.join(values)}" if values else ""
        print(f"job {handle.id} succeeded{pulled}")


def _subcommand(group: str, rest: str) -> tuple[str | None, str]:
    """``dataset``, ``"upload x --name y"`` -> ``dataset upload``, ``"x --name y"``; None
    (after printing them) for ``--help``."""
    word, _, rest = rest.strip().partition(" ")
    subcommands = [name.split()[1] for name in PARSERS if name.split()[0] == group]
    if word in ("-h", "--help"):
        print("\n".join(PARSERS[f"{group} {sub}"].format_help() for sub in subcommands))
        return None, ""
    if word not in subcommands:
        close = difflib.get_close_matches(word, subcommands, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        say = f"unknown {group} command {word!r}; " if word else "say what to do: "
        raise UsageError(f"%aigrid {group}: {say}{hint}commands: {', '.join(subcommands)}")
    return f"{group} {word}", rest


def _nodes(nodes: Any) -> str:
    if not nodes:
        return "?"
    return nodes if isinstance(nodes, str) else ",".join(str(n) for n in nodes)


def migration_started(job: dict[str, Any]) -> str:
    """``job 3: migration 1 started (checkpointing), node-0 -> node-1``."""
    m = job.get("migration")
    if not isinstance(m, dict):
        return f"job {job['id']}: migration requested ({job['state']})"
    what = "resume" if m.get("kind") == "resume" else "migration"
    return (
        f"job {job['id']}: {what} {m.get('id', '?')} started ({m.get('state', '?')}), "
        f"{_nodes(m.get('from'))} -> {_nodes(m.get('to'))}"
    )


def checkpoint_requested(job: dict[str, Any]) -> str:
    """``job 3: checkpoint c3 requested (pending); latest ckpt-00000004.0 (step 120)``."""
    checkpoint = job.get("checkpoint") or {}
    request = checkpoint.get("request") or {}
    text = f"job {job['id']}: checkpoint"
    if request.get("id"):
        text += f" {request['id']}"
    text += f" requested ({request.get('state', job['state'])})"
    latest = checkpoint.get("latest")
    if isinstance(latest, dict) and latest.get("name"):
        step = f" (step {latest['step']})" if latest.get("step") is not None else ""
        text += f"; latest {latest['name']}{step}"
    return text
