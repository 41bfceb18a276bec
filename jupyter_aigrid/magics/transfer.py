"""Values between the notebook and a job: push, pull, and a rank's exception as the cell's error."""

from __future__ import annotations

import ast
import base64
import pickle
import re
from collections.abc import Iterable, Mapping
from typing import Any

from IPython.core.error import UsageError


def split_names(values: Iterable[str], option: str) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``, each a valid variable name, without repeats."""
    names: list[str] = []
    for value in values:
        for name in (n.strip() for n in value.split(",")):
            if not name:
                continue
            if not name.isidentifier():
                msg = f"{option}: {name!r} is not a variable name; write {option} a,b"
                raise UsageError(msg)
            if name not in names:
                names.append(name)
    return names


def encode_push(namespace: Mapping[str, Any], names: list[str]) -> dict[str, str]:
    """Pickle (cloudpickle) each pushed variable; a missing or unpicklable one is a UsageError."""
    import cloudpickle

    encoded = {}
    for name in names:
        if name not in namespace:
            msg = f"--push {name}: the notebook has no variable {name!r}; define it first"
            raise UsageError(msg)
        value = namespace[name]
        try:
            data = cloudpickle.dumps(value)
        except Exception as e:
            msg = (
                f"--push {name}: a {type(value).__module__}.{type(value).__qualname__} cannot "
                f"be pickled, so it cannot be sent to the job ({e}); push what it holds instead"
            )
            raise UsageError(msg) from e
        encoded[name] = base64.b64encode(data).decode("ascii")
    return encoded


def decode_pull(data: bytes) -> Any:
    return pickle.loads(data)  # noqa: S301 (a pickle made by the user's own job)


class _Bindings(ast.NodeVisitor):
    """Names a module binds at its top level (assignments, imports, defs, globals in defs)."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.star_import = False
        self._depth = 0

    def visit_Name(self, node: ast.Name) -> None:
        if self._depth == 0 and isinstance(node.ctx, ast.Store):
            self.names.add(node.id)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        if self._depth == 0:
            self.names.add(node.target.id)
        self.generic_visit(node)

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name == "*":
                self.star_import = True
            elif self._depth == 0:
                self.names.add(alias.asname or alias.name.split(".")[0])

    visit_Import = visit_ImportFrom = _import

    def visit_Global(self, node: ast.Global) -> None:
        self.names.update(node.names)

    def _scope(self, node: ast.AST) -> None:
        name = getattr(node, "name", None)
        if name and self._depth == 0:
            self.names.add(name)
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _scope
    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _scope

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name and self._depth == 0:
            self.names.add(node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name and self._depth == 0:
            self.names.add(node.name)
        self.generic_visit(node)


def check_pull(source: str, pull: list[str], pushed: list[str], filename: str) -> None:
    """Compile the cell here (a syntax error is shown before anything is submitted) and make
    sure it can set every pulled name."""
    tree = compile(source, filename, "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
    compile(tree, filename, "exec", dont_inherit=True)
    found = _Bindings()
    found.visit(tree)
    if found.star_import:
        return
    missing = [n for n in pull if n not in found.names and n not in pushed]
    if missing:
        listed = ", ".join(missing)
        msg = (
            f"--pull {listed}: the cell never sets {listed}; pull only names the cell assigns "
            "(rank 0's value comes back)"
        )
        raise UsageError(msg)


_COPY = re.compile(r'File "[^"]*/main-\d+\.py"')


class RemoteError(Exception):
    """An exception raised by the job's code on one of its ranks, re-raised in the notebook.

    ``rank``, ``ename`` (the remote exception's class name), ``evalue`` (its message) and
    ``traceback`` (the remote traceback text) say what happened where; like ipyparallel's
    RemoteError, the notebook shows the remote traceback rather than the local one.
    """

    def __init__(
        self,
        job_id: str,
        error: dict[str, Any],
        reason: str | None = None,
        code_name: str | None = None,
    ) -> None:
        self.job_id = job_id
        self.rank = error.get("rank", 0)
        self.node = error.get("node")
        self.ename = error.get("type", "Exception")
        self.evalue = error.get("message", "")
        self.traceback = error.get("traceback", "")
        if code_name:
            # The replica ran a copy of the code; name it as the notebook knows it.
            self.traceback = _COPY.sub(f'File "{code_name}"', self.traceback)
        self.reason = reason
        super().__init__(f"[rank {self.rank}] {self.ename}: {self.evalue}")

    def _render_traceback_(self) -> list[str]:
        where = f"rank {self.rank}" + (f" on {self.node}" if self.node else "")
        head = f"\x1b[31mRemoteError\x1b[0m: job {self.job_id} failed on {where}"
        return [head, *self.traceback.rstrip("\n").splitlines()]


class JobFailed(RuntimeError):
    """The job ended without success and no rank recorded an exception (an exit code, a time
    limit, a cancellation)."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        reason = job.get("reason") or "no reason recorded"
        super().__init__(f"job {job['id']} {job['state']}: {reason}")
