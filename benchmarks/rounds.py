"""Latency and throughput in rounds that alternate the engines, pooled.

The virtual machines these benchmarks run on change speed over minutes, and a
ratio compares engines measured at different moments. So the figures a ratio
is made of are measured in rounds: each round runs every engine once (on both
backends, and the optional peers on their own servers), and an engine's
figure comes from all its rounds together.

- Latency: each round takes its share of the samples; an engine's samples of
  all rounds are pooled (each round's p50 is kept too, to show the drift).
- Throughput: each round starts the full number of runs in every shape; an
  engine's figure is all its runs over all its time (each round's figure is
  kept). A peer whose best figure in the first round was under half the best
  peer's of its backend's table is not measured again: it cannot be the peer
  a ratio is taken against, and the slow ones (Temporal, DBOS) would add many
  minutes a round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common import summary_of_ms

Key = tuple[str, str, str]  # (group: a backend or "peers", scenario, engine label)
KEEP_FRACTION = 0.5  # of the best peer's first-round figure, to be measured again


@dataclass(frozen=True)
class Job:
    group: str
    scenario: str
    label: str
    title: str
    run: Callable[[dict[str, Any], str], dict[str, Any]]  # (params, title) -> result
    peer: bool = False  # not durably: may be left out after the first round

    @property
    def key(self) -> Key:
        return (self.group, self.scenario, self.label)


def run_rounds(
    jobs: list[Job], params: dict[str, Any], rounds: int, *, drop_slow_peers: bool = False
) -> dict[Key, list[dict[str, Any]]]:
    """Each job's results, a round each; a job that failed (or was skipped)
    once is not tried again."""
    rounds = max(1, rounds)
    parts: dict[Key, list[dict[str, Any]]] = {}
    wanted = list(jobs)
    for r in range(rounds):
        suffix = f", round {r + 1}/{rounds}" if rounds > 1 else ""
        for job in wanted:
            if any(not p.get("ok") for p in parts.get(job.key, [])):
                continue
            parts.setdefault(job.key, []).append(job.run(params, job.title + suffix))
        if r == 0 and drop_slow_peers:
            wanted = [job for job in wanted if not job.peer or _close(job, jobs, parts)]
    return parts


def _close(job: Job, jobs: list[Job], parts: dict[Key, list[dict[str, Any]]]) -> bool:
    """Whether ``job``'s peer came within KEEP_FRACTION of the best peer of its
    backend's table in round one (the peers on their own servers are in
    every backend's table)."""

    def first(j: Job) -> float:
        done = parts.get(j.key, [])[:1]
        return float(done[0]["per_second"]) if done and done[0].get("ok") else 0.0

    def best(label: str, group: str) -> float:
        return max((first(j) for j in jobs if j.label == label and j.group == group), default=0.0)

    def top(backend: str) -> float:
        return max(
            (first(j) for j in jobs if j.peer and j.group in (backend, "peers")), default=0.0
        )

    backends = {j.group for j in jobs if j.group != "peers"} or {"peers"}
    tables = backends if job.group == "peers" else {job.group}
    mine = best(job.label, job.group)
    return any(mine >= KEEP_FRACTION * top(b) for b in tables)


def pool_latency(parts: list[dict[str, Any]]) -> dict[str, Any]:
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


def pool_throughput(parts: list[dict[str, Any]]) -> dict[str, Any]:
    failed = [p for p in parts if not p.get("ok")]
    if failed:
        return failed[0]
    out = dict(parts[0])
    out["n"] = sum(p["n"] for p in parts)
    out["seconds"] = sum(p["seconds"] for p in parts)
    out["per_second"] = out["n"] / out["seconds"]
    out["rounds"] = len(parts)
    out["rounds_per_second"] = [p["per_second"] for p in parts]
    out["elapsed"] = sum(p.get("elapsed", 0.0) for p in parts)
    out["load_after"] = parts[-1].get("load_after")
    return out
