"""Sequential latency in rounds that alternate the engines, pooled.

The virtual machines these benchmarks run on change speed over minutes, and a
latency ratio compares engines measured at different moments. So every
engine's latency (on both backends, and the optional peers on their own
servers) is measured in rounds: each round runs every engine once on its
share of the samples, and an engine's figures come from the samples of all
its rounds together (each round's p50 is kept too, to show the drift).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common import summary_of_ms

# (group, label, run): run(params, title) measures one round; group is the
# backend, or "peers" for the engines that keep their own storage.
Job = tuple[str, str, Callable[[dict[str, Any], str], dict[str, Any]]]


def run_rounds(
    jobs: list[Job], base: dict[str, Any], rounds: int
) -> dict[tuple[str, str], dict[str, Any]]:
    """{(group, label): pooled result}; a failed round makes that engine's result."""
    rounds = max(1, rounds)
    params = {**base, "latency_n": max(1, base["latency_n"] // rounds)}
    parts: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(rounds):
        suffix = f", round {r + 1}/{rounds}" if rounds > 1 else ""
        for group, label, run in jobs:
            if any(not p.get("ok") for p in parts.get((group, label), [])):
                continue  # failed (or skipped) once: not tried again
            parts.setdefault((group, label), []).append(run(params, f"{label} latency{suffix}"))
    return {key: pool(results) for key, results in parts.items()}


def pool(parts: list[dict[str, Any]]) -> dict[str, Any]:
    failed = [p for p in parts if not p.get("ok")]
    if failed:
        return failed[0]
    samples = [s for p in parts for s in p["samples_ms"]]
    out = {k: v for k, v in parts[0].items() if k != "samples_ms"}
    out.update(summary_of_ms(samples))
    out["rounds"] = len(parts)
    out["rounds_p50_ms"] = [p["p50_ms"] for p in parts]
    out["elapsed"] = sum(p.get("elapsed", 0.0) for p in parts)
    out["load_after"] = parts[-1].get("load_after")
    return out
