"""What a worker says when a database operation fails."""

from __future__ import annotations

import logging

import pytest

from durably._errors import DatabaseError, DatabaseUnavailable
from durably._worker.outage import Outage


def test_only_an_unreachable_database_is_called_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every failure of a worker's loops used to be logged as "database
    unreachable ... retrying", a bad value or a bug included, which sent the
    reader looking at the network."""
    outage = Outage()
    with caplog.at_level(logging.WARNING, logger="durably.worker"):
        outage.failed("checking signals", DatabaseError("value too long for type"))
        outage.failed("checking signals", ValueError("a bug"))
        assert outage.since is None
        assert "checking signals failed: value too long" in caplog.text
        assert "checking signals failed: a bug" in caplog.text
        assert "unreachable" not in caplog.text
        outage.failed("claiming runs", DatabaseUnavailable("cannot reach the server"))
        assert outage.since is not None
        assert "database unreachable (claiming runs: cannot reach the server)" in caplog.text
