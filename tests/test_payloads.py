"""Semantic 10: bad input gets a clear error and loses nothing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable

import pydantic
import pytest

import durably


class Customer(pydantic.BaseModel):
    id: uuid.UUID
    email: str
    since: dt.datetime


@dataclasses.dataclass
class Invoice:
    number: int
    lines: list[str]
    raw: bytes


async def test_pydantic_and_dataclass_arguments_and_results_round_trip(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.step()
    def bill(customer: Customer) -> Invoice:
        assert isinstance(customer, Customer)
        return Invoice(7, [customer.email], b"\x00\xff")

    @app.workflow()
    async def flow(ctx: durably.Context, customer: Customer) -> Invoice:
        invoice = await bill(customer)
        assert isinstance(invoice, Invoice) and invoice.raw == b"\x00\xff"
        return invoice

    customer = Customer(
        id=uuid.uuid4(), email="a@b.c", since=dt.datetime(2026, 5, 1, tzinfo=dt.timezone.utc)
    )
    async with app.worker():
        result = await (await app.start(flow, customer)).result(timeout=20)
    assert result == Invoice(7, ["a@b.c"], b"\x00\xff")


async def test_unserialisable_argument_fails_start_before_anything_is_written(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def flow(ctx: durably.Context, order_id: str, lock: object) -> None:
        return None

    with pytest.raises(durably.PayloadError, match="argument 'lock' of workflow 'flow'"):
        await app.start(flow, "o-1", object(), id="never")
    assert await app.list_runs() == []


async def test_wrong_arguments_are_refused_at_start(make_app: Callable[..., durably.App]) -> None:
    app = make_app()

    @app.workflow()
    async def flow(ctx: durably.Context, order_id: str) -> None:
        return None

    with pytest.raises(durably.PayloadError, match="missing a required argument: 'order_id'"):
        await app.start(flow)


async def test_a_positional_start_is_checked_against_defaults_and_arity(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def flow(ctx: durably.Context, order_id: str, qty: int = 1) -> None:
        return None

    with pytest.raises(durably.PayloadError, match="too many positional arguments"):
        await app.start(flow, "o-1", 2, 3)
    with pytest.raises(durably.PayloadError, match="missing a required argument: 'order_id'"):
        await app.start(flow)
    await app.start(flow, "o-1", id="one")  # the default fills qty
    await app.start(flow, "o-1", 2, id="two")
    assert sorted(r.id for r in await app.list_runs()) == ["one", "two"]


async def test_payload_over_the_limit_names_sizes(make_app: Callable[..., durably.App]) -> None:
    app = make_app(max_payload_bytes=1000)

    @app.workflow()
    async def flow(ctx: durably.Context, blob: str) -> None:
        return None

    with pytest.raises(durably.PayloadError, match=r"over the 1000-byte payload limit"):
        await app.start(flow, "x" * 5000)


async def test_unserialisable_workflow_result_fails_the_run(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def flow(ctx: durably.Context) -> object:
        return {1, object()}

    async with app.worker():
        with pytest.raises(durably.WorkflowFailed, match="PayloadError: the result of workflow"):
            await (await app.start(flow)).result(timeout=20)


async def test_unknown_workflow_and_unknown_run(make_app: Callable[..., durably.App]) -> None:
    app = make_app()

    @app.workflow()
    async def known(ctx: durably.Context) -> None:
        return None

    async def stranger(ctx: durably.Context) -> None:
        return None

    with pytest.raises(durably.UnknownWorkflowError, match=r"'nope' is not a workflow.*known"):
        await app.start("nope")
    with pytest.raises(durably.UnknownWorkflowError, match="'stranger' is not a workflow"):
        await app.start(stranger)
    with pytest.raises(durably.RunNotFound, match="no run with id 'ghost'"):
        await app.get_handle("ghost").status()
    with pytest.raises(durably.RunNotFound):
        await app.get_handle("ghost").result(timeout=1)


async def test_an_id_cannot_be_reused_for_another_workflow(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def one(ctx: durably.Context) -> None:
        return None

    @app.workflow()
    async def two(ctx: durably.Context) -> None:
        return None

    await app.start(one, id="shared")
    with pytest.raises(durably.DurablyError, match="already belongs to a run of workflow 'one'"):
        await app.start(two, id="shared")


def test_every_error_derives_from_durably_error() -> None:
    for name in durably.__all__:
        obj = getattr(durably, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, durably.DurablyError), name
            assert issubclass(obj, Exception), name


async def test_keys_that_would_collide_in_json_are_refused_not_lost(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.step()
    async def tally() -> dict[object, int]:
        return {1: 10, "1": 20}

    @app.workflow()
    async def flow(ctx: durably.Context, counts: dict[object, int]) -> object:
        return await tally()

    with pytest.raises(durably.PayloadError, match="argument 'counts' of workflow 'flow'"):
        await app.start(flow, {True: 1, "true": 2}, id="never")
    assert await app.list_runs() == []

    async with app.worker():
        handle = await app.start(flow, {1: 1})
        with pytest.raises(durably.WorkflowFailed) as info:
            await handle.result(timeout=20)
    assert "the result of step 'tally'" in str(info.value)
    assert "its keys 1 and '1' both become the JSON key '1'" in str(info.value)
