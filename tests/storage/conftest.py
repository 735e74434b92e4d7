"""Fixtures of the storage tests: stores opened on the test database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from durably._storage import open_storage
from durably._storage.base import Storage


@pytest.fixture
def storage(database_url: str) -> Iterator[Storage]:
    store = open_storage(database_url)
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def other(database_url: str, storage: Storage) -> Iterator[Storage]:
    """A second, independent connection to the same database (another process)."""
    store = open_storage(database_url)
    store.migrate()
    yield store
    store.close()
