"""Tests of the step retry policy (src/durably/_retry.py)."""

from __future__ import annotations

from typing import Any

import pytest

from durably import ConfigurationError, Retry


class Fatal(Exception):
    pass


class VeryFatal(Fatal):
    pass


def test_defaults() -> None:
    policy = Retry()
    assert policy.max_attempts == 3
    assert policy.initial == 1.0
    assert policy.backoff == 2.0
    assert policy.max_interval == 60.0
    assert policy.non_retryable == ()


def test_default_delay_sequence() -> None:
    policy = Retry()
    assert [policy.delay(n) for n in range(1, 9)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_delay_custom_values() -> None:
    policy = Retry(initial=0.5, backoff=3.0, max_interval=10.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_delay_fixed_wait_with_backoff_one() -> None:
    policy = Retry(initial=5, backoff=1)
    assert [policy.delay(n) for n in range(1, 5)] == [5.0, 5.0, 5.0, 5.0]


def test_delay_is_float() -> None:
    assert type(Retry(initial=2, backoff=2, max_interval=100).delay(3)) is float


def test_delay_capped_by_small_max_interval() -> None:
    policy = Retry(initial=10.0, max_interval=3.0)
    assert policy.delay(1) == 3.0
    assert policy.delay(4) == 3.0


def test_zero_initial_means_no_wait() -> None:
    assert Retry(initial=0).delay(5) == 0.0


@pytest.mark.parametrize(("attempt", "expected"), [(1, True), (2, True), (3, False), (4, False)])
def test_retries_respects_max_attempts(attempt: int, expected: bool) -> None:
    assert Retry().retries(attempt, ValueError("boom")) is expected


def test_max_attempts_one_never_retries() -> None:
    assert Retry(max_attempts=1).retries(1, RuntimeError("x")) is False


def test_many_attempts() -> None:
    policy = Retry(max_attempts=10)
    assert policy.retries(9, RuntimeError()) is True
    assert policy.retries(10, RuntimeError()) is False


def test_non_retryable_stops_at_once() -> None:
    policy = Retry(max_attempts=5, non_retryable=(Fatal, KeyError))
    assert policy.retries(1, Fatal("no")) is False
    assert policy.retries(1, KeyError("k")) is False
    assert policy.retries(1, ValueError("yes")) is True


def test_non_retryable_includes_subclasses() -> None:
    policy = Retry(non_retryable=(Fatal,))
    assert policy.retries(1, VeryFatal()) is False


def test_non_retryable_base_class_does_not_block_parent() -> None:
    policy = Retry(non_retryable=(VeryFatal,))
    assert policy.retries(1, Fatal()) is True


def test_non_retryable_base_exception_accepted() -> None:
    policy = Retry(non_retryable=(KeyboardInterrupt,))
    assert policy.retries(1, KeyboardInterrupt()) is False


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -2}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"initial": -1.0}, "initial"),
        ({"initial": "1"}, "initial"),
        ({"backoff": 0.5}, "backoff"),
        ({"backoff": -2.0}, "backoff"),
        ({"max_interval": -0.1}, "max_interval"),
        ({"non_retryable": ("ValueError",)}, "non_retryable"),
        ({"non_retryable": (ValueError, int)}, "non_retryable"),
    ],
)
def test_bad_values_raise_configuration_error(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Retry(**kwargs)
    assert f"{field}=" in str(info.value)


def test_bad_max_attempts_message_shows_value() -> None:
    with pytest.raises(ConfigurationError, match=r"max_attempts=0"):
        Retry(max_attempts=0)


def test_is_frozen() -> None:
    policy = Retry()
    with pytest.raises(AttributeError):
        policy.max_attempts = 5  # type: ignore[misc]


# -- regressions found in review ------------------------------------------------


@pytest.mark.parametrize("field", ["initial", "backoff", "max_interval"])
def test_nan_is_rejected(field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        Retry(**{field: float("nan")})


def test_bool_max_attempts_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="max_attempts"):
        Retry(max_attempts=True)


def test_huge_attempt_numbers_cap_at_max_interval() -> None:
    assert Retry(max_attempts=5000, max_interval=7.0).delay(1100) == 7.0


def test_single_exception_class_is_accepted_as_non_retryable() -> None:
    policy = Retry(non_retryable=ValueError)  # type: ignore[arg-type]
    assert policy.non_retryable == (ValueError,)
    assert not policy.retries(1, ValueError("x"))
