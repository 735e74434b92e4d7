"""The engine's own schema: created on first use, migrated forward, and
refused with a clear :class:`durably.DatabaseError` (never a raw driver
error) when it is newer than this code, foreign, corrupt or unreachable.

A refused open must never touch what the database already holds.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import durably
from durably import ConfigurationError, DatabaseError
from durably._storage import open_storage
from durably._storage.base import NewRun, RunFilter, Storage
from durably._storage.common import migrations

SQLITE_LATEST = len(migrations("durably._storage.sqlite"))
POSTGRES_LATEST = len(migrations("durably._storage.postgres"))
T0 = 1_700_000_000.0


def _with_dbname(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def _sqlite_path(url: str) -> str:
    assert url.startswith("sqlite:///")
    return url[len("sqlite:///") :]


@contextlib.contextmanager
def empty_postgres_database(server: Any) -> Iterator[str]:
    """A new PostgreSQL database made without durably's template: truly empty."""
    name = f"durably_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_dbname(server.url, name)
    finally:
        server.drop(name)


@pytest.fixture
def fresh_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL of a database that holds nothing at all (not even durably's schema)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    with empty_postgres_database(request.getfixturevalue("postgres_server")) as url:
        yield url


@pytest.fixture
def pg_fresh_url(postgres_server: Any) -> Iterator[str]:
    with empty_postgres_database(postgres_server) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'durably.db'}"


# -- raw access (independent of durably's own code) ------------------------------


def raw_query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(_sqlite_path(url), timeout=5)
        try:
            rows = conn.execute(sql, params).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def durably_tables(url: str) -> set[str]:
    if url.startswith("sqlite"):
        if not os.path.exists(_sqlite_path(url)):
            return set()
        rows = raw_query(
            url, "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'durably%'"
        )
    else:
        rows = raw_query(
            url,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'durably'",
        )
    return {r[0] for r in rows}


def schema_version(url: str) -> int:
    table = "durably_meta" if url.startswith("sqlite") else "durably.meta"
    mark = "?" if url.startswith("sqlite") else "%s"
    rows = raw_query(url, f"SELECT value FROM {table} WHERE key = {mark}", ("schema_version",))
    assert len(rows) == 1, rows
    return int(rows[0][0])


def set_schema_version(url: str, version: int) -> None:
    table = "durably_meta" if url.startswith("sqlite") else "durably.meta"
    mark = "?" if url.startswith("sqlite") else "%s"
    raw_query(
        url,
        f"UPDATE {table} SET value = {mark} WHERE key = {mark}",
        (str(version), "schema_version"),
    )


def latest(url: str) -> int:
    return SQLITE_LATEST if url.startswith("sqlite") else POSTGRES_LATEST


def expected_tables(url: str) -> set[str]:
    if url.startswith("sqlite"):
        return {"durably_meta", "durably_runs", "durably_journal"}
    return {"meta", "runs", "journal"}


def opened(url: str) -> Storage:
    storage = open_storage(url)
    try:
        storage.migrate()
    except BaseException:
        storage.close()
        raise
    return storage


def new_run(run_id: str, workflow: str = "wf") -> NewRun:
    return NewRun(id=run_id, workflow=workflow, version="v1", args='["x"]', created_at=T0)


# -- fresh databases ------------------------------------------------------------------


def test_fresh_database_is_migrated(fresh_url: str) -> None:
    assert durably_tables(fresh_url) == set()
    storage = opened(fresh_url)
    try:
        assert durably_tables(fresh_url) >= expected_tables(fresh_url)
        assert schema_version(fresh_url) == latest(fresh_url)
        record, created = storage.create_run(new_run("r-1"))
        assert created and record.status == "pending"
        got = storage.get_run("r-1")
        assert got is not None and got.args == '["x"]'
        assert storage.load_journal("r-1") == []
    finally:
        storage.close()


def test_app_migrates_a_fresh_database_on_first_use(fresh_url: str) -> None:
    app = durably.App("schema-test", fresh_url)
    try:
        assert durably_tables(fresh_url) == set()  # constructing touches nothing
        assert app.storage.get_run("nope") is None
        assert durably_tables(fresh_url) >= expected_tables(fresh_url)
        assert schema_version(fresh_url) == latest(fresh_url)
    finally:
        app.close()


def test_migrate_is_idempotent_and_keeps_data(fresh_url: str) -> None:
    storage = opened(fresh_url)
    try:
        storage.create_run(new_run("keep-me"))
        storage.migrate()
        storage.migrate()
        assert schema_version(fresh_url) == latest(fresh_url)
        got = storage.get_run("keep-me")
        assert got is not None and got.workflow == "wf"
    finally:
        storage.close()
    again = opened(fresh_url)  # a second process opening it later
    try:
        got = again.get_run("keep-me")
        assert got is not None and got.args == '["x"]'
        assert schema_version(fresh_url) == latest(fresh_url)
    finally:
        again.close()


def test_concurrent_migration_in_threads(fresh_url: str) -> None:
    n = 4
    barrier = threading.Barrier(n, timeout=10)
    errors: list[BaseException] = []
    stores: list[Storage] = [open_storage(fresh_url) for _ in range(n)]

    def migrate(storage: Storage) -> None:
        try:
            barrier.wait()
            storage.migrate()
            storage.create_run(new_run(f"t-{id(storage)}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "migration hung"
        assert errors == []
        assert schema_version(fresh_url) == latest(fresh_url)
        assert len(stores[0].list_runs(RunFilter(limit=100))) == n
    finally:
        for s in stores:
            s.close()


MIGRATE_SCRIPT = """
import sys, time
from durably._storage import open_storage
from durably._storage.base import NewRun
url, start_at, me = sys.argv[1], float(sys.argv[2]), sys.argv[3]
time.sleep(max(0.0, start_at - time.time()))
s = open_storage(url)
s.migrate()
s.create_run(NewRun(id=me, workflow="wf", version="v1", args="[]", created_at=1.0))
s.close()
print("migrated", me)
"""


def test_concurrent_migration_in_processes(fresh_url: str) -> None:
    n = 3
    start_at = time.time() + 1.5  # every process has imported durably by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_SCRIPT, fresh_url, str(start_at), f"p-{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=30))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert "migrated" in out
    assert schema_version(fresh_url) == latest(fresh_url)
    storage = opened(fresh_url)
    try:
        ids = {r.id for r in storage.list_runs(RunFilter(limit=100))}
        assert ids == {f"p-{i}" for i in range(n)}
    finally:
        storage.close()


# -- newer schema ----------------------------------------------------------------------


def test_newer_schema_is_refused_and_nothing_is_lost(database_url: str) -> None:
    storage = opened(database_url)
    try:
        storage.create_run(new_run("journaled"))
    finally:
        storage.close()
    newer = latest(database_url) + 1
    set_schema_version(database_url, newer)

    refused = open_storage(database_url)
    try:
        with pytest.raises(DatabaseError) as info:
            refused.migrate()
    finally:
        refused.close()
    message = str(info.value)
    assert "newer" in message
    assert "upgrade durably" in message
    assert str(newer) in message and str(latest(database_url)) in message

    # The App refuses the same way (it never starts on a schema it cannot read).
    app = durably.App("newer", database_url)
    try:
        with pytest.raises(DatabaseError, match="newer"):
            _ = app.storage
    finally:
        app.close()

    # Nothing was downgraded or dropped.
    assert schema_version(database_url) == newer
    table = "durably_runs" if database_url.startswith("sqlite") else "durably.runs"
    assert raw_query(database_url, f"SELECT id, workflow FROM {table}") == [("journaled", "wf")]


# -- SQLite: foreign, corrupt or misplaced files ------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"name,email\nada,ada@example.com\n" * 50, id="text"),
        pytest.param(os.urandom(16384), id="random-bytes"),
        pytest.param(b"SQLite format 3\x00" + os.urandom(4096), id="bad-header"),
    ],
)
def test_sqlite_file_that_is_not_sqlite_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "data.db"
    path.write_bytes(content)
    storage = open_storage(f"sqlite:///{path}")
    try:
        with pytest.raises(DatabaseError) as info:
            storage.migrate()
        assert not isinstance(info.value, sqlite3.Error)
        assert "not a usable durably database" in str(info.value)
        assert str(path) in str(info.value)
        # Any other use is refused the same way, not with a raw sqlite3 error.
        with pytest.raises(DatabaseError, match="not a usable durably database"):
            storage.get_run("x")
    finally:
        storage.close()
    assert path.read_bytes() == content


def test_sqlite_file_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    conn.execute("INSERT INTO users (email) VALUES ('ada@example.com')")
    conn.commit()
    conn.close()

    storage = open_storage(f"sqlite:///{path}")
    try:
        with pytest.raises(DatabaseError) as info:
            storage.migrate()
    finally:
        storage.close()
    assert "users" in str(info.value)
    assert "did not create" in str(info.value)

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT email FROM users").fetchall() == [("ada@example.com",)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert not {t for t in tables if t.startswith("durably")}
    finally:
        conn.close()


def test_sqlite_damaged_meta_is_refused(sqlite_url: str) -> None:
    opened(sqlite_url).close()
    raw_query(sqlite_url, "DELETE FROM durably_meta")
    storage = open_storage(sqlite_url)
    try:
        with pytest.raises(DatabaseError, match="no schema version"):
            storage.migrate()
    finally:
        storage.close()
    assert durably_tables(sqlite_url) >= expected_tables(sqlite_url)


def test_sqlite_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "no" / "such" / "folder"
    storage = open_storage(f"sqlite:///{folder / 'durably.db'}")
    try:
        with pytest.raises(DatabaseError) as info:
            storage.migrate()
    finally:
        storage.close()
    assert str(folder) in str(info.value)
    assert "does not exist" in str(info.value)
    assert not (tmp_path / "no").exists()


def test_sqlite_path_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}")
    try:
        with pytest.raises(DatabaseError):
            storage.migrate()
    finally:
        storage.close()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///:memory:",
        "sqlite://",
        "sqlite:///",
        "sqlite:///durably.db?foo=bar",
        "sqlite:///durably.db?synchronous=sometimes",
        "sqlite:///durably.db?synchronous=normal&cache=shared",
    ],
)
def test_sqlite_unusable_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_storage(url).close()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://root@localhost/app",
        "mongodb://localhost/app",
        "http://example.com/db",
        "durably.db",
    ],
)
def test_unsupported_url_schemes_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_storage(url).close()
    assert "sqlite" in str(info.value) and "postgresql" in str(info.value)


def test_sqlite_synchronous_option_is_accepted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fast.db'}?synchronous=normal"
    storage = opened(url)
    try:
        assert storage.create_run(new_run("r"))[1] is True
        assert storage.get_run("r") is not None
    finally:
        storage.close()
    assert (tmp_path / "fast.db").exists()


def test_sqlite_relative_and_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    storage = opened("sqlite:///relative.db")
    storage.close()
    assert (tmp_path / "relative.db").exists()
    absolute = tmp_path / "sub"
    absolute.mkdir()
    storage = opened(f"sqlite:///{absolute / 'abs.db'}")
    storage.close()
    assert (absolute / "abs.db").exists()


# -- PostgreSQL: unreachable or foreign --------------------------------------------------------


def test_postgres_unreachable_server_is_a_clear_error() -> None:
    url = "postgresql://postgres@127.0.0.1:1/durably"
    started = time.monotonic()
    storage = open_storage(url)
    try:
        with pytest.raises(DatabaseError) as info:
            storage.migrate()
    finally:
        storage.close()
    assert time.monotonic() - started < 15
    assert "cannot reach" in str(info.value)
    assert "127.0.0.1:1" in str(info.value)


def test_postgres_missing_database_is_a_clear_error(postgres_server: Any) -> None:
    name = f"durably_missing_{uuid.uuid4().hex[:8]}"
    storage = open_storage(_with_dbname(postgres_server.url, name))
    try:
        with pytest.raises(DatabaseError) as info:
            storage.migrate()
    finally:
        storage.close()
    assert name in str(info.value)


def test_postgres_unknown_url_option_is_a_configuration_error(postgres_server: Any) -> None:
    storage = open_storage(postgres_server.url + "?bogus_option=1")
    try:
        with pytest.raises(ConfigurationError):
            storage.migrate()
    finally:
        storage.close()


def test_postgres_foreign_durably_schema_is_refused(pg_fresh_url: str) -> None:
    raw_query(pg_fresh_url, "CREATE SCHEMA durably")
    raw_query(pg_fresh_url, "CREATE TABLE durably.users (id serial PRIMARY KEY, email text)")
    raw_query(pg_fresh_url, "INSERT INTO durably.users (email) VALUES ('ada@example.com')")

    storage = open_storage(pg_fresh_url)
    try:
        with pytest.raises(DatabaseError) as info:
            storage.migrate()
    finally:
        storage.close()
    assert "users" in str(info.value)
    assert "durably" in str(info.value)

    assert raw_query(pg_fresh_url, "SELECT email FROM durably.users") == [("ada@example.com",)]
    assert durably_tables(pg_fresh_url) == {"users"}


def test_postgres_empty_durably_schema_is_adopted(pg_fresh_url: str) -> None:
    raw_query(pg_fresh_url, "CREATE SCHEMA durably")  # e.g. made by a DBA beforehand
    storage = opened(pg_fresh_url)
    try:
        assert storage.create_run(new_run("r"))[1] is True
    finally:
        storage.close()
    assert durably_tables(pg_fresh_url) >= expected_tables(pg_fresh_url)


def test_postgres_other_tables_in_public_are_left_alone(pg_fresh_url: str) -> None:
    raw_query(pg_fresh_url, "CREATE TABLE public.runs (id text PRIMARY KEY, note text)")
    raw_query(pg_fresh_url, "INSERT INTO public.runs VALUES ('mine', 'hello')")
    storage = opened(pg_fresh_url)
    try:
        storage.create_run(new_run("theirs"))
        assert storage.get_run("mine") is None
    finally:
        storage.close()
    assert raw_query(pg_fresh_url, "SELECT id, note FROM public.runs") == [("mine", "hello")]
