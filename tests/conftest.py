"""Shared fixtures: every engine test runs on a real SQLite file and a real
PostgreSQL database.

PostgreSQL comes from ``DURABLY_TEST_POSTGRES_URL`` (default: the local
server's ``test`` database). Each test gets a fresh database cloned from a
template that already holds durably's schema (cheaper than migrating, and
nothing leaks between tests). Without a server the PostgreSQL half is
skipped locally; with ``CI=true`` that is a failure instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import durably
from durably._storage import open_storage
from durably._storage.base import Storage
from outage_proxy import OutageProxy

PG_URL = os.environ.get("DURABLY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ["sqlite", "postgres"]


def _with_dbname(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


class PostgresServer:
    """Creates throwaway databases from a migrated template."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self._admin = psycopg.connect(url, autocommit=True, connect_timeout=5)
        self.template = f"durably_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self._admin.execute(f'CREATE DATABASE "{self.template}"')
        from durably._storage.postgres.store import PostgresStorage

        storage = PostgresStorage(_with_dbname(url, self.template))
        storage.migrate()
        storage.close()

    def create(self) -> str:
        name = f"durably_t_{uuid.uuid4().hex[:12]}"
        self._admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name

    def drop(self, name: str) -> None:
        self._admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self.drop(self.template)
        self._admin.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer(PG_URL)
    except Exception as exc:  # noqa: BLE001 - reported as skip or failure below
        message = f"PostgreSQL not reachable at {PG_URL}: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: PostgreSQL is required)")
        pytest.skip(message)
    yield server
    server.close()


@pytest.fixture
def pg(postgres_server: PostgresServer) -> Iterator[tuple[str, OutageProxy]]:
    """A fresh PostgreSQL database and a cuttable proxy in front of its server."""
    name = postgres_server.create()
    base = postgres_server.url.rpartition("/")[0]
    proxy = OutageProxy()
    try:
        yield f"{base}/{name}", proxy
    finally:
        proxy.close()
        postgres_server.drop(name)


@pytest.fixture
def pg_storage(pg: tuple[str, OutageProxy]) -> Iterator[tuple[Storage, str]]:
    """A migrated store on a fresh PostgreSQL database, and that database's URL."""
    url, _ = pg
    store = open_storage(url)
    store.migrate()
    yield store, url
    store.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty durably database URL on the parametrised backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'durably.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create()
    try:
        yield _with_dbname(server.url, name)
    finally:
        server.drop(name)


@pytest.fixture
def make_app(database_url: str) -> Iterator[Callable[..., durably.App]]:
    """Build apps on the test database; all are closed afterwards."""
    apps: list[durably.App] = []

    def make(name: str = "test", **options: Any) -> durably.App:
        options.setdefault("lease_seconds", 2.0)
        app = durably.App(name, database_url, **options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


# -- real worker processes ------------------------------------------------------

TESTS_DIR = Path(__file__).resolve().parent


class Workers:
    """Spawns ``durably worker`` processes against the test database."""

    def __init__(self, database_url: str, effects: Path) -> None:
        self.database_url = database_url
        self.effects = effects
        self.procs: list[Any] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(TESTS_DIR), *filter(None, [env.get("PYTHONPATH")])]
        )
        env["DURABLY_TEST_EFFECTS"] = str(self.effects)
        env["DURABLY_LEASE_SECONDS"] = "1"
        env.pop("CRASHY_BLOCK", None)
        env.update(extra)
        return env

    def spawn(self, app_ref: str = "apps.crashy:app", concurrency: int = 8, **env: str) -> Any:
        import subprocess
        import sys

        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "durably",
                "worker",
                app_ref,
                "--database",
                self.database_url,
                "--concurrency",
                str(concurrency),
                "--log-level",
                "WARNING",
            ],
            env=self.env(**env),
            cwd=str(TESTS_DIR),
        )
        self.procs.append(proc)
        return proc

    def kill(self, proc: Any) -> None:
        import signal

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        import signal
        import subprocess

        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Iterator[Workers]:
    procs = Workers(database_url, tmp_path / "effects.db")
    yield procs
    procs.stop_all()


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Await until ``predicate()`` is truthy (for tests on the event loop)."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not reached within {timeout}s")
