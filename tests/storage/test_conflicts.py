"""A client's write the server rolls back on a conflict with another
transaction (here a lock not granted within the database's lock_timeout)
wrote nothing: it is sent again, so ``app.start``, ``app.signal`` and
``app.cancel`` go through once the other transaction lets go (PostgreSQL)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import durably
from durably._errors import WriteConflict
from durably._storage import open_storage
from durably._storage.postgres import store as store_module
from durably._worker.outage import Outage
from storage.test_storage import new_run

LOCK_TIMEOUT = "50ms"


@pytest.fixture
def url(pg: tuple[str, Any]) -> str:
    url, _ = pg
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {admin.info.dbname} SET lock_timeout = '{LOCK_TIMEOUT}'")
    return url


def _blocked(probe: psycopg.Connection[Any], holder: int) -> bool:
    row = probe.execute(
        "SELECT 1 FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (holder,)
    ).fetchone()
    return row is not None


def _let_go_after_two_waits(
    url: str, holder: int, release: threading.Event, seen: list[str]
) -> None:
    """Wait for a session blocked by ``holder``, for it to give up (its
    lock_timeout: a conflict), and for it to wait again; then let go."""
    with psycopg.connect(url, autocommit=True, options="-c lock_timeout=0") as probe:
        deadline = time.monotonic() + 10
        for want in (True, False, True):
            while _blocked(probe, holder) is not want:
                if time.monotonic() > deadline:
                    release.set()
                    return
                time.sleep(0.002)
            seen.append("waiting" if want else "gave up")
    release.set()


@contextlib.contextmanager
def _held(url: str, sql: str, *params: Any) -> Iterator[None]:
    """Run ``sql`` in a transaction of another session, kept open until a
    write waiting behind it has been rolled back once and is waiting again."""
    seen: list[str] = []
    release = threading.Event()
    with psycopg.connect(url, options="-c lock_timeout=0") as holder:
        holder.execute(sql, params)
        watcher = threading.Thread(
            target=_let_go_after_two_waits,
            args=(url, holder.info.backend_pid, release, seen),
        )
        watcher.start()
        letting_go = threading.Thread(target=lambda: (release.wait(20), holder.rollback()))
        letting_go.start()
        try:
            yield
        finally:
            release.set()
            letting_go.join(20)
            watcher.join(20)
    # The write did wait, was rolled back, and waited again: the conflict happened.
    assert seen == ["waiting", "gave up", "waiting"]


def _app(url: str) -> durably.App:
    app = durably.App(database=url)

    @app.workflow
    def wf(ctx: durably.Context, x: int) -> int:
        return ctx.wait_for("go")  # type: ignore[no-any-return]

    app.list_runs_sync()  # connected and migrated before any lock is taken
    return app


def test_a_start_conflicting_with_an_uncommitted_insert_of_its_id_goes_through(url: str) -> None:
    app = _app(url)
    try:
        insert = (
            "INSERT INTO durably.runs (id, workflow, version, status, args, created_at, "
            "updated_at) VALUES ('r1', 'wf', 'v', 'pending', '[]', 0, 0)"
        )
        with _held(url, insert):
            handle = app.start_sync("wf", 1, id="r1")
        assert handle.status_sync() == "pending"  # the other insert was rolled back
    finally:
        app.close()


def test_a_signal_and_a_cancel_waiting_behind_a_row_lock_go_through(url: str) -> None:
    app = _app(url)
    try:
        app.start_sync("wf", 1, id="r1")
        lock = "SELECT 1 FROM durably.runs WHERE id = %s FOR UPDATE"
        with _held(url, lock, "r1"):
            app.signal_sync("r1", "go", 5)
        with _held(url, lock, "r1"):
            assert app.cancel_sync("r1") == "cancelled"
    finally:
        app.close()


def test_a_conflict_left_to_a_workers_loop_is_logged_without_calling_it_an_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage()
    with caplog.at_level(logging.WARNING, logger="durably.worker"):
        outage.failed("claiming runs", WriteConflict("deadlock detected"))
    assert outage.since is None  # not an outage: nothing waits for a recovery
    [record] = caplog.records
    assert (
        "claiming runs failed: deadlock detected (rolled back on a conflict" in record.getMessage()
    )
    assert record.exc_info is None


def test_a_batch_start_whose_read_back_conflicts_still_says_which_runs_it_created(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batch's insert commits, then the ids that existed already are
    # read: that read meets a table lock (DDL, VACUUM FULL) past the
    # lock_timeout. Sending the whole call again would insert nothing and
    # answer "not created" for the run this very call created.
    store = open_storage(url)
    store.migrate()
    store.create_runs([new_run("r0")])
    answered = store_module.start_answers
    locked: list[bool] = []

    def after_the_insert(runs: Any, created: set[str], read: Any) -> Any:
        if not locked:
            taken = threading.Event()

            def hold() -> None:
                with psycopg.connect(url, options="-c lock_timeout=0") as other:
                    other.execute("LOCK TABLE durably.runs IN ACCESS EXCLUSIVE MODE")
                    taken.set()
                    time.sleep(0.12)  # more than lock_timeout, less than four tries

            threading.Thread(target=hold).start()
            locked.append(taken.wait(10))
        return answered(runs, created, read)

    monkeypatch.setattr(store_module, "start_answers", after_the_insert)
    try:
        answer = store.create_runs([new_run("r0"), new_run("r1")])
    finally:
        store.close()
    assert locked == [True]
    assert [(record.id, created) for record, created in answer] == [("r0", False), ("r1", True)]
