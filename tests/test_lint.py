"""The determinism lint (``durably._lint`` and ``durably check MODULE:APP``)."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from random import randint
from time import time as wall_clock
from typing import Any

import pytest

import durably
from apps import lint_bad, lint_good
from conftest import TESTS_DIR
from durably._lint import Finding, check, check_function, classify

BAD_FILE = Path(inspect.getsourcefile(lint_bad) or "").resolve()
GOOD_FILE = Path(inspect.getsourcefile(lint_good) or "").resolve()

ADVICE = {
    "time.time": "ctx.now()",
    "dt.datetime.now": "ctx.now()",
    "datetime.now": "ctx.now()",
    "random.randint": "ctx.random()",
    "uuid.uuid4": "ctx.uuid4()",
    "os.urandom": "ctx.random()",
    "time.sleep": "ctx.sleep(",
}


def bad_markers() -> dict[int, str]:
    """Line number -> call, from the ``# BAD: call`` markers of apps/lint_bad.py."""
    marked = {}
    for number, line in enumerate(BAD_FILE.read_text().splitlines(), start=1):
        match = re.search(r"  # BAD: ([\w.]+)$", line)
        if match:
            marked[number] = match.group(1)
    return marked


def workflows(app: durably.App) -> list[tuple[str, Callable[..., Any]]]:
    return [(name, d.fn) for name, d in sorted(app.workflows.items())]


def location_line(finding: Finding) -> tuple[Path, int]:
    path, _, line = finding.location.rpartition(":")
    return Path(path).resolve(), int(line)


# -- the lint itself ----------------------------------------------------------------


def test_flags_each_direct_call_with_file_and_line() -> None:
    findings = check(workflows(lint_bad.app))
    expected = bad_markers()
    assert sorted(expected.values()) == sorted(ADVICE)  # the sample covers every case
    found = {}
    for finding in findings:
        path, line = location_line(finding)
        assert path == BAD_FILE
        found[line] = finding.call
    assert found == expected  # exactly these lines: nothing in lambdas or nested functions
    assert len(findings) == len(expected)


def test_findings_name_the_workflow_and_give_advice() -> None:
    findings = check(workflows(lint_bad.app))
    by_call = {f.call: f for f in findings}
    assert by_call["time.time"].workflow == "clocks"
    assert by_call["dt.datetime.now"].workflow == "clocks"
    assert by_call["random.randint"].workflow == "chance"
    assert by_call["os.urandom"].workflow == "chance"
    assert by_call["time.sleep"].workflow == "napper"
    for call, advice in ADVICE.items():
        text = str(by_call[call])
        assert text.startswith(by_call[call].location + ": ")
        assert f"workflow {by_call[call].workflow!r}" in text
        assert f"calls {call}()" in text
        assert advice in text
    assert by_call["time.time"].reason == "clock"
    assert by_call["datetime.now"].reason == "clock"
    assert by_call["uuid.uuid4"].reason == "uuid"
    assert by_call["os.urandom"].reason == "random"
    assert by_call["time.sleep"].reason == "sleep"


def test_steps_lambdas_nested_functions_and_ctx_calls_are_not_flagged() -> None:
    assert check(workflows(lint_good.app)) == []
    source = GOOD_FILE.read_text()
    for needle in ("ctx.now()", "ctx.random()", "ctx.uuid4()", "lambda: time.time()"):
        assert needle in source  # the sample really holds what must not be flagged
    # The bad sample also holds the same calls inside a lambda and nested functions.
    bad_lines = BAD_FILE.read_text().splitlines()
    flagged = {location_line(f)[1] for f in check(workflows(lint_bad.app))}
    inside = ["lambda: time.time()", "random.randint(1, 6) + len", "time.sleep(0)", "uuid.uuid4())"]
    for needle in inside:
        (number,) = [i for i, line in enumerate(bad_lines, start=1) if needle in line]
        assert number not in flagged, needle


async def _aliased(ctx: durably.Context) -> float:
    first = wall_clock()
    roll = randint(1, 6)
    return first + roll


def _attribute_chains(ctx: durably.Context) -> str:
    return f"{dt.date.today()} {time.monotonic()} {uuid.uuid1()}"


def _only_context(ctx: durably.Context) -> str:
    def inner() -> float:
        return time.time() + random.random()

    later = ctx.run("inner", inner)
    return f"{ctx.now()} {ctx.random()} {ctx.uuid4()} {later} {len('x')} {os.getpid}"


def test_names_are_resolved_through_the_module_globals() -> None:
    calls = {f.call: f.reason for f in check_function("aliased", _aliased)}
    assert calls == {"wall_clock": "clock", "randint": "random"}
    calls = {f.call: f.reason for f in check_function("chains", _attribute_chains)}
    assert calls == {"dt.date.today": "clock", "time.monotonic": "clock", "uuid.uuid1": "uuid"}
    assert check_function("only_context", _only_context) == []


def test_line_numbers_point_at_the_call() -> None:
    (finding,) = [f for f in check_function("aliased", _aliased) if f.call == "randint"]
    path, line = location_line(finding)
    assert path == Path(__file__).resolve()
    assert "randint(1, 6)" in Path(__file__).read_text().splitlines()[line - 1]


def test_function_without_source_is_skipped() -> None:
    namespace: dict[str, Any] = {"time": time}
    exec("def generated(ctx):\n    return time.time()\n", namespace)
    assert check_function("generated", namespace["generated"]) == []


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (time.time, "clock"),
        (time.time_ns, "clock"),
        (time.perf_counter, "clock"),
        (time.sleep, "sleep"),
        (datetime.now, "clock"),
        (datetime.utcnow, "clock"),
        (dt.date.today, "clock"),
        (random.randint, "random"),
        (random.random, "random"),
        (uuid.uuid4, "uuid"),
        (os.urandom, "random"),
        (len, None),
        (json.dumps, None),
        (datetime.fromtimestamp, None),
        (uuid.UUID, None),
        (None, None),
    ],
)
def test_classify(obj: object, reason: str | None) -> None:
    assert classify(obj) == reason


# -- durably check ------------------------------------------------------------------


def run_check(ref: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("DURABLY_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "durably", "check", ref],
        cwd=str(cwd),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_command_reports_findings_and_exits_1(tmp_path: Path) -> None:
    proc = run_check("apps.lint_bad:app", tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.strip().splitlines()
    expected = bad_markers()
    assert len(lines) == len(expected)
    for number, call in expected.items():
        (line,) = [ln for ln in lines if ln.startswith(f"{BAD_FILE}:{number}: ")]
        assert f"calls {call}()" in line
        assert ADVICE[call] in line
    assert "no non-deterministic calls" not in proc.stdout
    assert list(tmp_path.iterdir()) == []  # checking code does not create a database


def test_check_command_passes_a_clean_app(tmp_path: Path) -> None:
    proc = run_check("apps.lint_good:app", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "2 workflow(s) checked: no non-deterministic calls found"
    assert list(tmp_path.iterdir()) == []


# -- regressions: imports inside the body, indented workflows ---------------------


def test_imports_inside_the_workflow_body_are_resolved() -> None:
    def wf(ctx: durably.Context) -> float:
        import time as clock
        from random import random as draw

        return clock.time() + draw()

    calls = sorted(f.call for f in check_function("wf", wf))
    assert calls == ["clock.time", "draw"]


def test_indented_workflow_with_a_column_zero_string_is_checked() -> None:
    def make() -> Callable[..., Any]:
        def wf(ctx: durably.Context) -> str:
            text = """
starts at column zero
"""
            return text + str(time.time())

        return wf

    findings = check_function("wf", make())
    assert [f.call for f in findings] == ["time.time"]
