"""The ``durably`` command line.

Every command takes ``--database URL`` (else ``DURABLY_DATABASE_URL``, else
``./durably.db``); commands that need user code take ``MODULE:APP``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from .. import _config
from .._errors import DurablyError
from .._loops import LOOPS
from .._storage import open_storage
from .._storage.base import STATUSES, TERMINAL, RunFilter, RunRecord, Storage
from .loading import load_app
from .timeline import render

F = TypeVar("F", bound=Callable[..., Any])


def database_option(fn: F) -> F:
    return click.option(
        "--database",
        "database",
        metavar="URL",
        default=None,
        help="Database URL (default: $DURABLY_DATABASE_URL, else sqlite:///durably.db).",
    )(fn)


@contextlib.contextmanager
def _storage(database: str | None) -> Iterator[Storage]:
    storage = open_storage(_config.database_url(database))
    try:
        storage.migrate()
        yield storage
    finally:
        storage.close()


def _existing(storage: Storage, run_id: str) -> RunRecord:
    record = storage.get_run(run_id)
    if record is None:
        raise click.ClickException(f"no run with id {run_id!r}")
    return record


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="durably")
def cli() -> None:
    """durably: durable execution for Python workflows."""


@cli.command()
@click.argument("app_ref", metavar="MODULE:APP")
@click.option("--concurrency", "-c", default=100, show_default=True, help="Runs held at once.")
@click.option("--log-level", default="INFO", show_default=True)
@click.option(
    "--loop",
    type=click.Choice(LOOPS),
    default="auto",
    show_default=True,
    help="Event loop: uvloop (durably[fast]) if installed with auto.",
)
@database_option
def worker(app_ref: str, concurrency: int, log_level: str, loop: str, database: str | None) -> None:
    """Run a worker for the workflows of MODULE:APP until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = load_app(app_ref, database)
    app.run_worker(concurrency=concurrency, loop=loop)


@cli.command()
@click.argument("app_ref", metavar="MODULE:APP")
@click.argument("workflow")
@click.argument("args", nargs=-1)
@click.option("--id", "run_id", default=None, help="Workflow id (idempotent).")
@click.option("--wait/--no-wait", default=False, help="Wait for the result and print it.")
@click.option("--timeout", default=None, type=float, help="Seconds to wait with --wait.")
@database_option
def start(
    app_ref: str,
    workflow: str,
    args: tuple[str, ...],
    run_id: str | None,
    wait: bool,
    timeout: float | None,
    database: str | None,
) -> None:
    """Start WORKFLOW with ARGS (each parsed as JSON, else taken as a string)."""
    app = load_app(app_ref, database)
    values = [_json_or_text(a) for a in args]
    handle = app.start_sync(workflow, *values, id=run_id)
    click.echo(handle.id)
    if wait:
        click.echo(json.dumps(handle.result_sync(timeout=timeout), default=str))


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        if text.lstrip()[:1] in ("{", "["):
            # Meant as an object or a list: a typo must not start a run with
            # the text instead.
            raise click.BadParameter(
                f"{text!r} looks like a JSON object or list but is not valid JSON "
                f"({exc}); to pass it as text, give it as a JSON string: '\"...\"'",
                param_hint="ARGS",
            ) from None
        return text


@cli.command("list")
@click.option("--status", type=click.Choice(STATUSES), default=None)
@click.option("--workflow", default=None)
@click.option("--limit", default=50, show_default=True)
@database_option
def list_runs(status: str | None, workflow: str | None, limit: int, database: str | None) -> None:
    """List runs, newest first."""
    with _storage(database) as storage:
        runs = storage.list_runs(RunFilter(status=status, workflow=workflow, limit=limit))
    if not runs:
        click.echo("no runs")
        return
    click.echo(f"{'id':<36} {'workflow':<24} {'status':<10} created")
    for run in runs:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(run.created_at))
        click.echo(f"{run.id:<36} {run.workflow:<24} {run.status:<10} {created}")


@cli.command()
@click.argument("run_id")
@database_option
def show(run_id: str, database: str | None) -> None:
    """Show a run's journal as a timeline."""
    with _storage(database) as storage:
        record = _existing(storage, run_id)
        entries = storage.load_journal(run_id)
    for line in render(record, entries):
        click.echo(line)


@cli.command()
@click.argument("run_id")
@database_option
def retry(run_id: str, database: str | None) -> None:
    """Resume a failed run by replaying its journal (after fixing the code)."""
    with _storage(database) as storage:
        record = _existing(storage, run_id)
        if not storage.set_status(run_id, "pending", time.time(), expect=("failed",)):
            raise click.ClickException(
                f"run {run_id!r} is {record.status}; only failed runs can be retried"
            )
    click.echo(f"run {run_id} is pending again; a worker will resume it by replay")


cli.add_command(retry, "resume")


@cli.command()
@click.argument("run_id")
@click.argument("topic")
@click.option("--payload", default="null", show_default=True, help="JSON payload.")
@database_option
def signal(run_id: str, topic: str, payload: str, database: str | None) -> None:
    """Send a signal to a run (for ctx.wait_for(TOPIC))."""
    try:
        json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    with _storage(database) as storage:
        storage.send_signal(run_id, topic, payload, time.time())
    click.echo(f"signal {topic!r} sent to run {run_id}")


@cli.command()
@click.argument("run_id")
@click.option("--reason", default="cancelled by operator", show_default=True)
@database_option
def cancel(run_id: str, reason: str, database: str | None) -> None:
    """Cancel a run and its children."""
    with _storage(database) as storage:
        before = _existing(storage, run_id).status
        status = storage.request_cancel(run_id, time.time(), reason)
    if before in TERMINAL:
        click.echo(f"run {run_id} already ended ({before}); nothing to cancel")
    elif status == "cancelled":
        click.echo(f"run {run_id} is cancelled")
    else:
        click.echo(f"run {run_id} is cancelling: its worker raises CancelledError in it")


@cli.command()
@click.argument("app_ref", metavar="MODULE:APP")
@database_option
def check(app_ref: str, database: str | None) -> None:
    """Find wall-clock, random and UUID calls in workflow code."""
    from .._lint import check as run_check

    app = load_app(app_ref, database)
    findings = run_check((name, d.fn) for name, d in sorted(app.workflows.items()))
    for finding in findings:
        click.echo(str(finding))
    if findings:
        raise SystemExit(1)
    click.echo(f"{len(app.workflows)} workflow(s) checked: no non-deterministic calls found")


@cli.command()
@database_option
def demo(database: str | None) -> None:
    """Run the signup flow, SIGKILL its worker after the charge, and resume it."""
    from .._demo.runner import run_demo

    raise SystemExit(run_demo(database))


def main() -> None:
    try:
        cli(standalone_mode=True)
    except DurablyError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
