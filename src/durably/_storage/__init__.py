"""Storage backends behind one interface; :func:`open_storage` picks by URL."""

from __future__ import annotations

from .._errors import ConfigurationError
from .base import Storage


def open_storage(url: str) -> Storage:
    """A storage for ``url`` (not yet migrated; call ``migrate()``)."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("sqlite", "sqlite3"):
        from .sqlite.store import SQLiteStorage

        return SQLiteStorage(url)
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        from .postgres.store import PostgresStorage

        return PostgresStorage(url)
    raise ConfigurationError(
        f"unsupported database URL {url!r}: use sqlite:///path/to/file.db or "
        "postgresql://user@host:5432/dbname"
    )
