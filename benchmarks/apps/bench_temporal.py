"""The benchmark's 3-step workflow for Temporal (three activities)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn
async def add_one(x: int) -> int:
    return x + 1


@activity.defn
async def double(x: int) -> int:
    return x * 2


@activity.defn
async def minus_three(x: int) -> int:
    return x - 3


ACTIVITIES = [add_one, double, minus_three]


@workflow.defn
class ThreeSteps:
    @workflow.run
    async def run(self, x: int) -> int:
        timeout = timedelta(seconds=60)
        a = await workflow.execute_activity(add_one, x, start_to_close_timeout=timeout)
        b = await workflow.execute_activity(double, a, start_to_close_timeout=timeout)
        return await workflow.execute_activity(minus_three, b, start_to_close_timeout=timeout)
