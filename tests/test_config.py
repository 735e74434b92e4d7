"""Tests of settings resolution (src/durably/_config.py)."""

from __future__ import annotations

import pytest

import durably
from durably import ConfigurationError
from durably._config import ENV_SPIN, database_url, lease_seconds, spin_wait

DB_ENV = "DURABLY_DATABASE_URL"
LEASE_ENV = "DURABLY_LEASE_SECONDS"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DB_ENV, raising=False)
    monkeypatch.delenv(LEASE_ENV, raising=False)


def test_database_url_default() -> None:
    assert database_url(None) == "sqlite:///durably.db"
    assert database_url() == "sqlite:///durably.db"


def test_database_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DB_ENV, "sqlite:////var/lib/app.db")
    assert database_url(None) == "sqlite:////var/lib/app.db"


def test_empty_env_falls_back_to_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DB_ENV, "")
    assert database_url(None) == "sqlite:///durably.db"


def test_explicit_database_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DB_ENV, "sqlite:///from-env.db")
    assert database_url("postgresql://u@h:5432/db") == "postgresql://u@h:5432/db"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://user:pw@host:5432/db", "postgresql://user:pw@host:5432/db"),
        ("postgres://localhost/app", "postgresql://localhost/app"),
        ("postgresql://localhost/app", "postgresql://localhost/app"),
        ("  sqlite:///x.db  ", "sqlite:///x.db"),
    ],
)
def test_database_url_normalised(given: str, expected: str) -> None:
    assert database_url(given) == expected


def test_postgres_env_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DB_ENV, "postgres://h/db")
    assert database_url(None) == "postgresql://h/db"


@pytest.mark.parametrize("url", ["durably.db", "/tmp/durably.db", "localhost:5432/db"])
def test_database_url_without_scheme(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        database_url(url)
    assert repr(url) in str(info.value)
    assert "no scheme" in str(info.value)


def test_env_database_url_without_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DB_ENV, "just-a-file.db")
    with pytest.raises(ConfigurationError, match=r"just-a-file\.db"):
        database_url(None)


def test_lease_seconds_default() -> None:
    result = lease_seconds(None)
    assert result == 30.0
    assert type(result) is float


@pytest.mark.parametrize(("given", "expected"), [(5, 5.0), (0.25, 0.25), (120.5, 120.5)])
def test_lease_seconds_explicit(given: float, expected: float) -> None:
    result = lease_seconds(given)
    assert result == expected
    assert type(result) is float


def test_explicit_lease_wins_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LEASE_ENV, "99")
    assert lease_seconds(7) == 7.0


@pytest.mark.parametrize(("raw", "expected"), [("45", 45.0), ("2.5", 2.5), (" 0.75 ", 0.75)])
def test_lease_seconds_from_env(monkeypatch: pytest.MonkeyPatch, raw: str, expected: float) -> None:
    monkeypatch.setenv(LEASE_ENV, raw)
    assert lease_seconds(None) == expected


@pytest.mark.parametrize("raw", ["", "   "])
def test_blank_env_lease_uses_default(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(LEASE_ENV, raw)
    assert lease_seconds(None) == 30.0


@pytest.mark.parametrize("raw", ["abc", "10s", "1,5"])
def test_env_lease_not_a_number(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(LEASE_ENV, raw)
    with pytest.raises(ConfigurationError) as info:
        lease_seconds(None)
    assert LEASE_ENV in str(info.value)
    assert repr(raw) in str(info.value)


@pytest.mark.parametrize("raw", ["0", "-1", "-0.5"])
def test_env_lease_not_positive(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(LEASE_ENV, raw)
    with pytest.raises(ConfigurationError, match=LEASE_ENV):
        lease_seconds(None)


@pytest.mark.parametrize("value", [0, 0.0, -3, -0.001])
def test_explicit_lease_not_positive(value: float) -> None:
    with pytest.raises(ConfigurationError, match="lease_seconds"):
        lease_seconds(value)


@pytest.mark.parametrize("value", ["30", True, [30]])
def test_explicit_lease_not_a_number(value: object) -> None:
    with pytest.raises(ConfigurationError, match="lease_seconds"):
        lease_seconds(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf"])
def test_lease_rejects_non_finite_values(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("DURABLY_LEASE_SECONDS", raw)
    with pytest.raises(ConfigurationError):
        lease_seconds(None)


def test_spin_wait_default_and_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SPIN, raising=False)
    assert spin_wait() == 500e-6
    for raw, expected in (("0", 0.0), (" 250 ", 250e-6), ("10000", 0.01), ("", 500e-6)):
        monkeypatch.setenv(ENV_SPIN, raw)
        assert spin_wait() == expected


@pytest.mark.parametrize("raw", ["abc", "5us", "-1", "nan", "inf", "10001"])
def test_spin_wait_refuses_what_is_not_a_sane_number_of_microseconds(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv(ENV_SPIN, raw)
    with pytest.raises(ConfigurationError) as info:
        spin_wait()
    assert ENV_SPIN in str(info.value) and repr(raw) in str(info.value)


def test_a_bad_spin_wait_is_said_when_the_postgres_storage_opens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_SPIN, "fast")
    app = durably.App("test", "postgresql://127.0.0.1:1/never")  # nothing is connected yet
    with pytest.raises(ConfigurationError, match=ENV_SPIN):
        app.storage  # noqa: B018
