"""The benchmark's 3-step workflow for Restate: a service whose handler journals
three ``ctx.run`` steps. Served with hypercorn: ``hypercorn bench_restate:app``."""

from __future__ import annotations

import restate

service = restate.Service("bench")


async def add_one(x: int) -> int:
    return x + 1


async def double(x: int) -> int:
    return x * 2


async def minus_three(x: int) -> int:
    return x - 3


@service.handler()
async def three_steps(ctx: restate.Context, x: int) -> int:
    a = await ctx.run_typed("add_one", add_one, x=x)
    b = await ctx.run_typed("double", double, x=a)
    return await ctx.run_typed("minus_three", minus_three, x=b)


app = restate.app(services=[service])
