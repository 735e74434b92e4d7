"""The ``durably`` command line, run as a real process against real databases."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import durably
from apps import effects
from conftest import TESTS_DIR, Workers, wait_until
from durably._cli import cli

APP = "apps.cli_app:app"
COMMANDS = [
    "worker",
    "start",
    "list",
    "show",
    "retry",
    "resume",
    "check",
    "demo",
    "signal",
    "cancel",
]


def run_cli(
    *args: str,
    database: str | None = None,
    cwd: Path = TESTS_DIR,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """``python -m durably ARGS [--database URL]`` in a fresh process."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS_DIR), *filter(None, [full_env.get("PYTHONPATH")])]
    )
    full_env["DURABLY_LEASE_SECONDS"] = "1"
    full_env.pop("DURABLY_DATABASE_URL", None)
    full_env.update(env or {})
    command = [sys.executable, "-m", "durably", *args]
    if database is not None:
        command += ["--database", database]
    return subprocess.run(
        command, cwd=str(cwd), env=full_env, capture_output=True, text=True, timeout=timeout
    )


def assert_clean_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A failed command: non-zero exit, the message on stderr, no traceback anywhere."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def table_rows(output: str) -> dict[str, list[str]]:
    """``durably list`` output as {id: [workflow, status, ...]} (header skipped)."""
    lines = output.strip().splitlines()
    assert lines[0].split()[:3] == ["id", "workflow", "status"], output
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


@pytest.fixture
def client(database_url: str) -> Iterator[durably.App]:
    """An app (no workflows of its own) to observe runs through the public API."""
    app = durably.App("cli-observer", database_url)
    yield app
    app.close()


def status(app: durably.App, run_id: str) -> str:
    return str(app.get_handle(run_id).status_sync())


def stop_cleanly(proc: Any) -> None:
    """SIGTERM a worker process; it must exit by itself with code 0."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def spawn_failed_fragile(
    workers: Workers, client: durably.App, database_url: str, marker: Path, run_id: str
) -> Any:
    """Start ``fragile`` while its marker exists, with a worker, until the run failed."""
    marker.write_text("broken")
    worker = workers.spawn(APP)
    started = run_cli("start", APP, "fragile", str(marker), "--id", run_id, database=database_url)
    assert started.returncode == 0, started.stderr
    wait_until(lambda: status(client, run_id) == "failed", timeout=20, what="the run to fail")
    return worker


# -- help ---------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.split("Commands:", 1)[1]
    names = {line.split()[0] for line in listed.strip().splitlines()}
    assert set(COMMANDS) <= names
    resume_help = run_cli("resume", "--help")
    assert resume_help.returncode == 0
    assert "RUN_ID" in resume_help.stdout


# -- start ----------------------------------------------------------------------------


def test_start_prints_the_id_and_is_idempotent(database_url: str, client: durably.App) -> None:
    first = run_cli("start", APP, "greet", "ada", "--id", "g-1", database=database_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "g-1\n"
    again = run_cli("start", APP, "greet", "bob", "--id", "g-1", database=database_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "g-1\n"

    listed = run_cli("list", database=database_url)
    assert listed.returncode == 0, listed.stderr
    rows = table_rows(listed.stdout)
    assert list(rows) == ["g-1"]  # one run, not two
    assert rows["g-1"][:2] == ["greet", "pending"]
    shown = run_cli("show", "g-1", database=database_url)
    assert '"ada"' in shown.stdout and '"bob"' not in shown.stdout  # the first start won
    assert status(client, "g-1") == "pending"


def test_start_without_id_generates_distinct_ids(database_url: str) -> None:
    ids = []
    for _ in range(2):
        proc = run_cli("start", APP, "add", "1", "2", database=database_url)
        assert proc.returncode == 0, proc.stderr
        ids.append(proc.stdout.strip())
    assert all(ids) and ids[0] != ids[1]
    assert set(table_rows(run_cli("list", database=database_url).stdout)) == set(ids)


def spawn_worker(app_ref: str, database_url: str, workers: Workers, log: Any, *options: str) -> Any:
    """A ``durably worker`` process for ``app_ref``, stopped by the ``workers`` fixture."""
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "durably", "worker", app_ref,
            "--database", database_url, "--log-level", "WARNING", *options,
        ],
        env=workers.env(),
        cwd=str(TESTS_DIR),
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    workers.procs.append(worker)
    return worker


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_start_wait_prints_the_json_result(
    database_url: str, workers: Workers, tmp_path: Path, loop: str
) -> None:
    log = (tmp_path / "worker.log").open("w")
    worker = spawn_worker(APP, database_url, workers, log, "--loop", loop)
    try:
        proc = run_cli(
            "start", APP, "greet", "ada", "--id", "w-1", "--wait", "--timeout", "20",
            database=database_url,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        run_id, result = proc.stdout.strip().splitlines()
        assert run_id == "w-1"
        assert json.loads(result) == {"text": "hello ada", "loud": "HELLO ADA!"}

        summed = run_cli("start", APP, "add", "2", "40", "--wait", database=database_url)
        assert summed.returncode == 0, summed.stderr
        assert summed.stdout.strip().splitlines()[1] == "42"  # arguments parsed as JSON

        again = run_cli(
            "start", APP, "greet", "zed", "--id", "w-1", "--wait", database=database_url
        )
        assert again.stdout.strip().splitlines() == ["w-1", result]  # the existing result
    finally:
        stop_cleanly(worker)
        log.close()
    assert "Traceback" not in (tmp_path / "worker.log").read_text()


def test_a_worker_process_collects_garbage_less_often(
    database_url: str, workers: Workers, tmp_path: Path
) -> None:
    # A worker process raises the gen-0 threshold and freezes what it loaded
    # at start; an in-process worker leaves the application's settings alone.
    import gc

    before = gc.get_threshold()
    log = (tmp_path / "worker.log").open("w")
    worker = spawn_worker("apps.gc_probe:app", database_url, workers, log)
    try:
        proc = run_cli(
            "start", "apps.gc_probe:app", "gc_settings", "--wait", "--timeout", "20",
            database=database_url,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        settings = json.loads(proc.stdout.strip().splitlines()[1])
    finally:
        stop_cleanly(worker)
        log.close()
    assert settings["threshold"][0] == 10_000
    assert settings["threshold"][1:] == list(before[1:])
    assert settings["frozen"] > 1000  # modules, the app: never traversed again
    assert gc.get_threshold() == before  # this process never ran run_worker


def test_start_unknown_workflow_is_a_clear_error(database_url: str) -> None:
    proc = run_cli("start", APP, "nosuch", "--id", "n-1", database=database_url)
    assert_clean_error(proc, "nosuch", "add, approve, fragile, greet")
    assert proc.returncode == 2
    assert run_cli("list", database=database_url).stdout.strip() == "no runs"


def test_database_comes_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'from-env.db'}"
    env = {"DURABLY_DATABASE_URL": url}
    started = run_cli("start", APP, "greet", "eve", "--id", "e-1", env=env, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    assert "e-1" in table_rows(run_cli("list", database=url).stdout)
    assert "e-1" in table_rows(run_cli("list", env=env, cwd=tmp_path).stdout)
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["from-env.db"]


# -- list -----------------------------------------------------------------------------


def test_list_shows_status_and_filters_by_it(
    database_url: str, workers: Workers, client: durably.App, tmp_path: Path
) -> None:
    worker = spawn_failed_fragile(workers, client, database_url, tmp_path / "m", "bad-1")
    done = run_cli("start", APP, "greet", "ada", "--id", "done-1", "--wait", database=database_url)
    assert done.returncode == 0, done.stderr
    stop_cleanly(worker)
    todo = run_cli("start", APP, "add", "1", "1", "--id", "todo-1", database=database_url)
    assert todo.returncode == 0, todo.stderr

    rows = table_rows(run_cli("list", database=database_url).stdout)
    assert rows["done-1"][:2] == ["greet", "completed"]
    assert rows["bad-1"][:2] == ["fragile", "failed"]
    assert rows["todo-1"][:2] == ["add", "pending"]
    assert list(rows) == ["todo-1", "done-1", "bad-1"]  # newest first

    for wanted, run_id in [("completed", "done-1"), ("failed", "bad-1"), ("pending", "todo-1")]:
        proc = run_cli("list", "--status", wanted, database=database_url)
        assert proc.returncode == 0, proc.stderr
        assert list(table_rows(proc.stdout)) == [run_id]
    assert run_cli("list", "--status", "cancelled", database=database_url).stdout == "no runs\n"
    assert list(table_rows(run_cli("list", "--workflow", "add", database=database_url).stdout)) == [
        "todo-1"
    ]

    bogus = run_cli("list", "--status", "bogus", database=database_url)
    assert_clean_error(bogus, "bogus")
    assert bogus.returncode == 2


def test_list_on_an_empty_database(database_url: str) -> None:
    result = CliRunner().invoke(cli, ["list", "--database", database_url])
    assert result.exit_code == 0, result.output
    assert result.output == "no runs\n"


# -- show -----------------------------------------------------------------------------


def test_show_prints_the_timeline_in_order(database_url: str, workers: Workers) -> None:
    worker = workers.spawn(APP)
    done = run_cli("start", APP, "greet", "ada", "--id", "s-1", "--wait", database=database_url)
    assert done.returncode == 0, done.stderr
    stop_cleanly(worker)

    proc = run_cli("show", "s-1", database=database_url)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = lines[0]
    assert "s-1" in header and "greet" in header and "status completed" in header
    hello = next(i for i, line in enumerate(lines) if "step hello" in line)
    shout = next(i for i, line in enumerate(lines) if "step shout" in line)
    assert hello < shout
    assert '"hello ada"' in lines[hello] and '"HELLO ADA!"' in lines[shout]
    assert lines[hello].split()[1] == "0" and lines[shout].split()[1] == "1"  # positions
    assert "run completed" in lines[-1] and "HELLO ADA!" in lines[-1]


def test_show_names_the_error_of_a_failed_run(
    database_url: str, workers: Workers, client: durably.App, tmp_path: Path
) -> None:
    worker = spawn_failed_fragile(workers, client, database_url, tmp_path / "m", "f-1")
    stop_cleanly(worker)
    proc = run_cli("show", "f-1", database=database_url)
    assert proc.returncode == 0, proc.stderr
    assert "status failed" in proc.stdout.splitlines()[0]
    assert "step prepare" in proc.stdout and "step finish" not in proc.stdout
    assert "run failed" in proc.stdout.splitlines()[-1]
    assert "RuntimeError: marker" in proc.stdout.splitlines()[-1]


def test_show_unknown_id_is_a_clear_error(database_url: str) -> None:
    proc = run_cli("show", "unknown-id", database=database_url)
    assert_clean_error(proc, "no run with id 'unknown-id'")
    assert proc.stdout == ""


# -- retry / resume -------------------------------------------------------------------


def test_retry_resumes_a_failed_run_only_once_the_code_succeeds(
    database_url: str, workers: Workers, client: durably.App, tmp_path: Path
) -> None:
    marker = tmp_path / "broken"
    spawn_failed_fragile(workers, client, database_url, marker, "r-1")
    ledger = str(workers.effects)
    assert effects.count(ledger, "r-1", "prepare") == 1

    # Still broken: the retried run replays its journal and fails again.
    proc = run_cli("retry", "r-1", database=database_url)
    assert proc.returncode == 0, proc.stderr
    assert "pending" in proc.stdout
    wait_until(lambda: status(client, "r-1") == "failed", timeout=20, what="the second failure")
    assert effects.count(ledger, "r-1", "prepare") == 1  # answered from the journal
    assert effects.count(ledger, "r-1", "finish") == 0

    # Fixed: the next retry completes it.
    marker.unlink()
    proc = run_cli("retry", "r-1", database=database_url)
    assert proc.returncode == 0, proc.stderr
    assert client.get_handle("r-1").result_sync(timeout=20) == "prepared and finished"
    assert effects.count(ledger, "r-1", "prepare") == 1
    assert effects.count(ledger, "r-1", "finish") == 1
    shown = run_cli("show", "r-1", database=database_url).stdout
    assert shown.index("step prepare") < shown.index("step finish")
    assert "status completed" in shown.splitlines()[0]


def test_retry_sets_a_failed_run_back_to_pending(
    database_url: str, workers: Workers, client: durably.App, tmp_path: Path
) -> None:
    worker = spawn_failed_fragile(workers, client, database_url, tmp_path / "m", "p-1")
    stop_cleanly(worker)  # nobody picks the run up again
    proc = run_cli("retry", "p-1", database=database_url)
    assert proc.returncode == 0, proc.stderr
    assert status(client, "p-1") == "pending"
    assert table_rows(run_cli("list", database=database_url).stdout)["p-1"][1] == "pending"


def test_resume_is_an_alias_of_retry(
    database_url: str, workers: Workers, client: durably.App, tmp_path: Path
) -> None:
    marker = tmp_path / "broken"
    spawn_failed_fragile(workers, client, database_url, marker, "a-1")
    marker.unlink()
    proc = run_cli("resume", "a-1", database=database_url)
    assert proc.returncode == 0, proc.stderr
    assert "pending" in proc.stdout
    assert client.get_handle("a-1").result_sync(timeout=20) == "prepared and finished"
    refused = run_cli("resume", "a-1", database=database_url)
    assert_clean_error(refused, "completed", "only failed runs can be retried")


def test_retry_refuses_runs_that_have_not_failed(
    database_url: str, workers: Workers, client: durably.App
) -> None:
    pending = run_cli("start", APP, "add", "1", "2", "--id", "q-1", database=database_url)
    assert pending.returncode == 0
    proc = run_cli("retry", "q-1", database=database_url)
    assert_clean_error(proc, "'q-1' is pending", "only failed runs can be retried")

    workers.spawn(APP)
    assert client.get_handle("q-1").result_sync(timeout=20) == 3
    proc = run_cli("retry", "q-1", database=database_url)
    assert_clean_error(proc, "'q-1' is completed", "only failed runs can be retried")
    assert status(client, "q-1") == "completed"

    missing = run_cli("retry", "nope", database=database_url)
    assert_clean_error(missing, "no run with id 'nope'")


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no_such_module_here:app", "cannot import module 'no_such_module_here'"),
        ("apps.no_such_module:app", "cannot import module 'apps.no_such_module'"),
        ("apps.cli_app:missing", "apps.cli_app.missing is nothing, not a durably.App"),
        ("apps.cli_app:not_an_app", "apps.cli_app.not_an_app is str, not a durably.App"),
        (":app", "expected MODULE:APP"),
    ],
)
@pytest.mark.parametrize("command", ["start", "worker", "check"])
def test_bad_app_reference_is_a_clear_error(
    ref: str, message: str, command: str, tmp_path: Path
) -> None:
    extra = ["greet"] if command == "start" else []
    database = f"sqlite:///{tmp_path / 'durably.db'}"
    proc = run_cli(command, ref, *extra, database=database, cwd=tmp_path, timeout=15)
    assert_clean_error(proc, message)
    assert proc.returncode == 2


def test_default_attribute_is_app(database_url: str) -> None:
    proc = run_cli("start", "apps.cli_app", "greet", "x", "--id", "d-1", database=database_url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "d-1\n"


@pytest.fixture
def foreign_db(tmp_path: Path) -> Path:
    path = tmp_path / "users.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.close()
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["show", "x-1"],
        ["retry", "x-1"],
        ["start", APP, "greet", "ada", "--id", "x-1"],
        ["worker", APP, "--log-level", "WARNING"],
    ],
    ids=lambda args: args[0],
)
def test_foreign_sqlite_database_is_refused(
    args: list[str], foreign_db: Path, tmp_path: Path
) -> None:
    proc = run_cli(*args, database=f"sqlite:///{foreign_db}", cwd=tmp_path, timeout=15)
    assert_clean_error(proc, "error:", str(foreign_db), "users")
    assert proc.returncode == 2
    conn = sqlite3.connect(foreign_db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        names = conn.execute("SELECT name FROM users").fetchall()
    finally:
        conn.close()
    assert tables == ["users"]  # nothing of durably's was written into it
    assert names == [("ada",)]


def test_non_sqlite_file_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all\n" * 100)
    proc = run_cli("list", database=f"sqlite:///{junk}", cwd=tmp_path)
    assert_clean_error(proc, "error:", "not a usable durably database")
    assert proc.returncode == 2
    assert junk.read_bytes() == b"this is not a database at all\n" * 100


def test_database_url_without_scheme_is_refused(tmp_path: Path) -> None:
    proc = run_cli("list", database=str(tmp_path / "x.db"), cwd=tmp_path)
    assert_clean_error(proc, "error:", "has no scheme")
    assert proc.returncode == 2


def test_start_wait_reports_a_failed_run_and_a_timeout(
    database_url: str, workers: Workers, tmp_path: Path
) -> None:
    late = run_cli(
        "start", APP, "add", "1", "2", "--id", "late-1", "--wait", "--timeout", "0.3",
        database=database_url,
    )  # fmt: skip
    assert late.stdout == "late-1\n"  # no worker yet: the id, then a clear timeout
    assert_clean_error(late, "late-1", "did not finish within")
    assert late.returncode == 2

    marker = tmp_path / "broken"
    marker.write_text("broken")
    workers.spawn(APP)
    failed = run_cli(
        "start", APP, "fragile", str(marker), "--id", "wf-1", "--wait", "--timeout", "20",
        database=database_url,
    )  # fmt: skip
    assert failed.stdout == "wf-1\n"
    assert_clean_error(failed, "wf-1", "RuntimeError: marker")
    assert failed.returncode == 2


def test_a_missing_dependency_of_the_user_module_is_named(tmp_path: Path) -> None:
    (tmp_path / "flows_with_missing_dep.py").write_text("import surely_not_installed_pkg\n")
    proc = subprocess.run(
        [sys.executable, "-m", "durably", "check", "flows_with_missing_dep:app"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "surely_not_installed_pkg" in proc.stderr
    assert "cannot import module 'flows_with_missing_dep'" not in proc.stderr


def test_an_argument_that_looks_like_broken_json_is_refused(tmp_path: Path) -> None:
    """``'{bad json'`` started a run with that text as a string: a typo in an
    object went unreported. Text that is not meant as JSON is still text."""
    database = f"sqlite:///{tmp_path / 'durably.db'}"
    proc = run_cli("start", APP, "greet", "{name: ada}", database=database)
    assert_clean_error(proc, "looks like a JSON object or list but is not valid JSON")
    assert proc.returncode == 2
    plain = run_cli("start", APP, "greet", "ada lovelace", "--id", "plain", database=database)
    assert plain.returncode == 0, plain.stderr
    quoted = run_cli("start", APP, "greet", '"{not json}"', "--id", "quoted", database=database)
    assert quoted.returncode == 0, quoted.stderr


@pytest.mark.parametrize(
    ("source", "needles"),
    [
        (
            "import durably\napp = durably.App('x')\nraise RuntimeError('config missing')\n",
            ["RuntimeError: config missing", 'flows_broken.py", line 3'],
        ),
        ("def broken(:\n    pass\n", ["SyntaxError", "flows_broken.py"]),
    ],
)
def test_a_user_module_that_fails_to_import_is_a_clear_error(
    source: str, needles: list[str], tmp_path: Path
) -> None:
    """Its own exception, and where in the user's code, without a traceback
    through durably's and importlib's frames."""
    (tmp_path / "flows_broken.py").write_text(source)
    proc = run_cli("check", "flows_broken:app", cwd=tmp_path, timeout=15)
    assert_clean_error(proc, "importing 'flows_broken' (from 'flows_broken:app') raised", *needles)
    assert "loading.py" not in proc.stderr, proc.stderr


# -- signal and cancel ---------------------------------------------------------------


def test_signal_and_cancel_from_the_command_line(
    database_url: str, workers: Workers, client: durably.App
) -> None:
    worker = workers.spawn(APP)
    for run_id in ("sig-1", "can-1"):
        started = run_cli("start", APP, "approve", "--id", run_id, database=database_url)
        assert started.returncode == 0, started.stderr
    wait_until(lambda: status(client, "sig-1") == "suspended", what="the wait")
    sent = run_cli(
        "signal", "sig-1", "decision", "--payload", '{"ok": true}', database=database_url
    )
    assert sent.returncode == 0, sent.stderr
    assert client.get_handle("sig-1").result_sync(timeout=20) == {"ok": True}

    wait_until(lambda: status(client, "can-1") == "suspended", what="the wait")
    cancelled = run_cli("cancel", "can-1", database=database_url)
    assert cancelled.returncode == 0, cancelled.stderr
    with pytest.raises(durably.WorkflowCancelled, match="cancelled by operator"):
        client.get_handle("can-1").result_sync(timeout=20)
    shown = run_cli("show", "can-1", database=database_url).stdout
    assert "CancelledError raised" in shown and "step undo" in shown
    stop_cleanly(worker)

    again = run_cli("cancel", "can-1", database=database_url)
    assert again.returncode == 0 and "already ended (cancelled)" in again.stdout
    late = run_cli("signal", "can-1", "decision", database=database_url)
    assert_clean_error(late, "cancelled", "cannot receive signals")
    bad = run_cli("signal", "sig-1", "decision", "--payload", "{nope", database=database_url)
    assert bad.returncode != 0 and "not JSON" in bad.stderr
    missing = run_cli("cancel", "ghost", database=database_url)
    assert_clean_error(missing, "no run with id 'ghost'")
