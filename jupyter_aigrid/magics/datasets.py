"""``%aigrid dataset upload|list|verify|rm``: datasets from the notebook.

An upload shows a progress bar with the bytes and the rate in a notebook (plain lines in a
terminal), and resumes when it is run again after an interruption; ``list`` is a table of
every dataset and where its copies are. A job reads them with ``%%aigrid run --dataset``.
"""

from __future__ import annotations

import argparse
import html
import sys
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from IPython.core.error import UsageError
from IPython.display import display

from ..client import AIGridError, Client
from ..formatting import format_bytes, format_duration, format_rate
from ..uploading import DatasetUpload, UploadError
from .job_html import badge
from .parsing import MagicParser

COPY_COLOURS = {"verified": "#2e7d32", "corrupt": "#e53935", "unverified": "#9e9e9e"}
#: The hash prefix a table shows (``name@<prefix>`` needs at least 8 digits).
ROOT_DIGITS = 12


def _version(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        msg = f"must be a version number >= 1, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def dataset_parsers() -> dict[str, MagicParser]:
    """The ``dataset ...`` commands, keyed as they are typed."""
    parsers = {}
    p = parsers["dataset upload"] = MagicParser(
        prog="dataset upload",
        description="Upload a file or a folder as the next version of a dataset (hashed here "
        "and again on the master). Interrupted, it resumes when run again: only what the "
        "master has not received is sent.",
    )
    p.add_argument("path", metavar="PATH", help="a file (named by its basename) or a folder")
    p.add_argument("--name", help="the dataset (default: PATH's name), a-z 0-9 . _ -")
    p.add_argument("--node", metavar="NODE", help="where the first copy goes (default: any)")
    parsers["dataset list"] = MagicParser(
        prog="dataset list",
        description="Every dataset: latest version, size, files, root hash, and its copies "
        "on each node with their state.",
    )
    p = parsers["dataset verify"] = MagicParser(
        prog="dataset verify", description="Hash every copy of a dataset again, now."
    )
    p.add_argument("name", metavar="NAME")
    p = parsers["dataset rm"] = MagicParser(
        prog="dataset rm",
        description="Delete a dataset, or one version (refused while an unfinished job uses it).",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--version", type=_version, metavar="V", help="only this version")
    return parsers


def _in_kernel(shell: Any) -> bool:
    """Whether widgets can show: a Jupyter kernel, not a terminal IPython."""
    return getattr(shell, "kernel", None) is not None


class DatasetCommands:
    """The ``dataset`` commands of :class:`~jupyter_aigrid.magics.AIGridMagics`."""

    client: Client
    shell: Any

    def _dataset_upload(self, args: Any, cell: None) -> None:
        path = Path(args.path).expanduser()
        name = args.name or path.resolve().name
        try:
            upload = DatasetUpload(self.client, path, name, args.node)
        except UploadError as e:
            if e.field != "name" or args.name:
                raise
            msg = f"%aigrid dataset upload: {path}'s name is no dataset name; give one with --name"
            raise UsageError(f"{msg} ({e.message})") from e
        progress = UploadProgress(name, len(upload.files), widget=_in_kernel(self.shell))
        progress.show()
        try:
            progress.hashing(0, upload.total)
            upload.hash(progress.hashing)
            if upload.existing() is not None:
                progress.unchanged(self.client.dataset(name), upload.root)
                return
            upload.start()
            upload.send(progress.sending)
            progress.committing(upload.total)
            dataset = upload.commit()
        except KeyboardInterrupt:
            progress.interrupted(upload.received, upload.total)
            raise
        except AIGridError as e:
            progress.bar.bar_style = "danger"
            if isinstance(e, UploadError) or e.status != 0 or upload.upload is None:
                raise
            msg = f"%aigrid dataset upload: {e}; run the same command again to send the rest"
            raise UsageError(msg) from e
        progress.finished(dataset, upload.root, upload.sent)

    def _dataset_list(self, args: Any, cell: None) -> None:
        datasets = self.client.datasets()
        if not datasets:
            print("no datasets yet; upload one: %aigrid dataset upload PATH --name NAME")
            return
        display(DatasetTable(datasets))

    def _dataset_verify(self, args: Any, cell: None) -> None:
        dataset = self.client.verify_dataset(args.name)
        for line in verify_lines(dataset):
            print(line)
        if any(c["state"] == "corrupt" for v in dataset["versions"] for c in v["locations"]):
            msg = f"%aigrid dataset verify: dataset {args.name!r} has corrupt copies (above)"
            raise UsageError(msg)

    def _dataset_rm(self, args: Any, cell: None) -> None:
        found = self.client.delete_dataset(args.name, args.version)
        if args.version:
            print(f"deleted version {args.version} of dataset {found['deleted']}")
            return
        versions = ", ".join(str(v) for v in found["versions"])
        plural = "s" if len(found["versions"]) != 1 else ""
        print(f"deleted dataset {found['deleted']} (version{plural} {versions})")


def verify_lines(dataset: dict[str, Any]) -> list[str]:
    """``mnist@2 on node-0: verified`` for every copy, with the error of a corrupt one."""
    lines = []
    for v in dataset["versions"]:
        for c in v["locations"]:
            line = f"{v['ref']} on {c['node']}: {c['state']}"
            if c.get("error"):
                line += f" ({c['error']})"
            lines.append(line)
    return lines or [f"dataset {dataset['name']} has no copies"]


class UploadProgress:
    """An upload's progress: in a notebook a bar and a label (bytes done of total, MiB/s);
    in a terminal, plain lines (one per tenth of the bytes). The last line is printed in
    both, so that the output keeps a record of what was uploaded."""

    def __init__(self, name: str, files: int, widget: bool, clock=time.monotonic) -> None:
        self.name = name
        self.files = files
        self._clock = clock
        self.bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info")
        self.label = widgets.HTML()
        self.box = widgets.HBox([self.bar, self.label]) if widget else None
        self._hashing_said = False
        self._started: float | None = None
        self._first = 0
        self._tenth = -1
        self.text = ""

    def show(self) -> None:
        if self.box is not None:
            display(self.box)

    def _say(self, done: int, total: int, text: str, line: bool) -> None:
        self.text = text
        self.bar.value = done / total if total else 1.0
        if self.box is not None:
            self.label.value = html.escape(text)
        elif line:
            print(text, flush=True)

    def hashing(self, done: int, total: int) -> None:
        what = f"{self.files} file{'s' if self.files != 1 else ''}"
        if not self._hashing_said:
            self._say(done, total, f"hashing {self.name}: {what}, {format_bytes(total)}", True)
            self._hashing_said = True
            return
        text = f"hashing {what}: {format_bytes(done)} of {format_bytes(total)}"
        self._say(done, total, text, line=False)

    def sending(self, received: int, total: int) -> None:
        now = self._clock()
        if self._started is None:
            self._started, self._first = now, received
            if received:
                already = f"{format_bytes(received)} of {format_bytes(total)}"
                self._say(received, total, f"resuming {self.name}: {already} already sent", True)
        pct = int(100 * received / total) if total else 100
        text = (
            f"uploading {self.name}: {pct}% ({format_bytes(received)} of {format_bytes(total)}, "
            f"{format_rate(received - self._first, now - self._started)})"
        )
        tenth = pct // 10
        self._say(received, total, text, line=tenth != self._tenth)
        self._tenth = tenth

    def committing(self, total: int) -> None:
        text = f"committing {self.name}: the master checks all {format_bytes(total)}"
        self._say(total, total, text, line=True)

    def finished(self, dataset: dict[str, Any], root: str, sent: int) -> None:
        version = _version_of(dataset, root)
        took = self._clock() - (self._started or self._clock())
        resumed = f", resumed after {format_bytes(self._first)}" if self._first else ""
        text = (
            f"uploaded {version['ref']}: {version['files']} files, "
            f"{format_bytes(version['bytes'])}, root {root[:ROOT_DIGITS]} "
            f"({format_bytes(sent)} sent in {format_duration(took)}, "
            f"{format_rate(sent, took)}{resumed})"
        )
        self.bar.bar_style = "success"
        self._say(1, 1, text, line=False)
        print(text)

    def unchanged(self, dataset: dict[str, Any], root: str) -> None:
        version = _version_of(dataset, root)
        text = f"{version['ref']} already holds these files (root {root[:ROOT_DIGITS]}): "
        text += "nothing to send"
        self.bar.bar_style = "success"
        self._say(1, 1, text, line=False)
        print(text)

    def interrupted(self, received: int, total: int) -> None:
        pct = int(100 * received / total) if total else 0
        self.bar.bar_style = "warning"
        text = (
            f"interrupted: {self.name} is {pct}% uploaded ({format_bytes(received)} of "
            f"{format_bytes(total)}); run the same command again to send the rest"
        )
        self._say(received, total, text, line=False)
        print(text, file=sys.stderr, flush=True)


def _version_of(dataset: dict[str, Any], root: str) -> dict[str, Any]:
    """The version of ``dataset`` with this root (the latest if none has it)."""
    versions = dataset["versions"]
    return next((v for v in versions if v["root"] == root), versions[-1])


class DatasetTable:
    """Datasets as an HTML table in a notebook (``_repr_html_``) and as text elsewhere."""

    HEADER = ("NAME", "LATEST", "SIZE", "FILES", "ROOT", "COPIES")

    def __init__(self, datasets: list[dict[str, Any]]) -> None:
        self.datasets = datasets

    @staticmethod
    def _latest(dataset: dict[str, Any]) -> dict[str, Any]:
        versions = dataset["versions"]
        return versions[-1] if versions else {"version": None, "locations": []}

    def rows(self) -> list[tuple[str, ...]]:
        rows = []
        for d in self.datasets:
            latest = self._latest(d)
            count = len(d["versions"])
            copies = ", ".join(f"{c['node']} {c['state']}" for c in latest["locations"])
            rows.append(
                (
                    d["name"],
                    f"v{d['latest']}" + (f" (of {count})" if count > 1 else ""),
                    format_bytes(d["bytes"]),
                    str(d["files"]),
                    (d.get("root") or "-")[:ROOT_DIGITS],
                    copies or "-",
                )
            )
        return rows

    def __repr__(self) -> str:
        rows = [self.HEADER, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.HEADER))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        )

    def _repr_html_(self) -> str:
        cell = "border:1px solid #ccc;padding:2px 8px;text-align:left"
        head = "".join(f'<th style="{cell}">{h.lower()}</th>' for h in self.HEADER)
        body = []
        for d, row in zip(self.datasets, self.rows(), strict=True):
            copies = " ".join(
                f"{html.escape(c['node'])} "
                + badge(c["state"], COPY_COLOURS.get(c["state"], "#616161"))
                for c in self._latest(d)["locations"]
            )
            cells = [html.escape(v) for v in row[:4]]
            root = html.escape(d.get("root") or "")
            cells.append(f'<code title="{root}">{html.escape(row[4])}</code>')
            cells.append(copies or "-")
            body.append("<tr>" + "".join(f'<td style="{cell}">{c}</td>' for c in cells) + "</tr>")
        return (
            f"<table class='aigrid-datasets' style='border-collapse:collapse'>"
            f"<tr>{head}</tr>{''.join(body)}</table>"
        )
