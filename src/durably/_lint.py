"""``durably check``: find non-deterministic calls in workflow code.

Workflow code runs again on every replay, so reading the wall clock, a random
number generator or a UUID directly makes a replay see different values than
the original run. This looks at the source of each registered workflow and
resolves every call's name through the workflow module's globals, so aliases
(``import datetime as dt``, ``from time import time``) are caught too. Code
inside lambdas and nested functions is skipped: those are usually steps
(``ctx.run("x", lambda: time.time())`` is fine).
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

_ADVICE = {
    "clock": "read the time with ctx.now()",
    "random": "draw random numbers with ctx.random()",
    "uuid": "make ids with ctx.uuid4()",
    "sleep": "wait with ctx.sleep(name, duration)",
    "env": "read configuration in a step or pass it as an argument",
}

_QUALNAMES = {
    "datetime.now": "clock",
    "datetime.utcnow": "clock",
    "datetime.today": "clock",
    "date.today": "clock",
    "Random.random": "random",
}
_TIME_FUNCS = {
    "time": "clock",
    "time_ns": "clock",
    "monotonic": "clock",
    "monotonic_ns": "clock",
    "perf_counter": "clock",
    "perf_counter_ns": "clock",
    "localtime": "clock",
    "gmtime": "clock",
    "ctime": "clock",
    "sleep": "sleep",
}


@dataclass(frozen=True)
class Finding:
    workflow: str
    location: str
    call: str
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.location}: workflow {self.workflow!r} calls {self.call}(), which differs "
            f"on replay; {_ADVICE[self.reason]}"
        )


def classify(obj: Any) -> str | None:
    """Why calling ``obj`` inside a workflow is non-deterministic, if it is."""
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__name__", "")
    qualname = getattr(obj, "__qualname__", "")
    if qualname in _QUALNAMES:
        return _QUALNAMES[qualname]
    if module == "time" and name in _TIME_FUNCS:
        return _TIME_FUNCS[name]
    if module in ("random", "secrets") and callable(obj):
        return "random"
    if module == "uuid" and name in ("uuid1", "uuid4"):
        return "uuid"
    if module in ("posix", "nt", "os") and name in ("urandom", "getrandom"):
        return "random"
    return None


def _dotted(node: ast.AST) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def _resolve(parts: list[str], namespace: dict[str, Any]) -> Any:
    if parts[0] not in namespace:
        return None
    obj = namespace[parts[0]]
    for part in parts[1:]:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


class _Calls(ast.NodeVisitor):
    """Calls and imports in a workflow body, skipping lambdas and nested defs."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []
        self.imports: dict[str, tuple[str, str | None]] = {}
        self._depth = 0

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._nested(node)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        return  # a step body, not workflow code

    def _nested(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._depth += 1
        if self._depth == 1:  # the workflow itself (its decorators are not its code)
            for statement in node.body:
                self.visit(statement)
        self._depth -= 1

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.imports[alias.asname] = (alias.name, None)
            else:
                top = alias.name.split(".")[0]
                self.imports[top] = (top, None)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and not node.level:
            for alias in node.names:
                self.imports[alias.asname or alias.name] = (node.module, alias.name)

    def visit_Call(self, node: ast.Call) -> None:
        parts = _dotted(node.func)
        if parts is not None:
            self.calls.append((parts, node.lineno))
        self.generic_visit(node)


def _imported(module: str, attribute: str | None) -> Any:
    try:
        obj = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - cannot tell: do not flag
        return None
    return getattr(obj, attribute, None) if attribute else obj


def _function_node(fn: Callable[..., Any]) -> tuple[ast.AST, str] | None:
    """The AST of ``fn``, parsed from its whole file (no dedenting guesswork)."""
    try:
        filename = inspect.getsourcefile(fn)
        code = fn.__code__
    except (TypeError, AttributeError):
        return None
    if not filename:
        return None
    try:
        with open(filename, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), filename)
    except (OSError, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == fn.__name__:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if code.co_firstlineno in (first, node.lineno):
                return node, filename
    return None


def check_function(name: str, fn: Callable[..., Any]) -> list[Finding]:
    found = _function_node(fn)
    if found is None:
        return []
    node, filename = found
    visitor = _Calls()
    visitor.visit(node)
    namespace = dict(getattr(fn, "__globals__", {}))
    for local, (module, attribute) in visitor.imports.items():
        namespace[local] = _imported(module, attribute)
    findings = []
    for parts, lineno in visitor.calls:
        reason = classify(_resolve(parts, namespace))
        if reason is not None:
            findings.append(Finding(name, f"{filename}:{lineno}", ".".join(parts), reason))
    return findings


def check(workflows: Iterable[tuple[str, Callable[..., Any]]]) -> list[Finding]:
    found: list[Finding] = []
    for name, fn in workflows:
        found.extend(check_function(name, fn))
    return found
