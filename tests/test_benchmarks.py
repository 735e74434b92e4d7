"""The benchmark suite's smoke run: it must keep working, on both backends.

No timing is asserted (speed is measured by ``benchmarks/run.py``, never by a
unit test); this checks that every scenario runs for durably and for DBOS,
and that the report, its JSON and its chart are written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {
    "latency",
    "throughput_inproc",
    "throughput_w1",
    "sleep",
    "recovery",
    "floor",
}


@pytest.mark.timeout(600)
def test_quick_benchmark_runs_every_scenario_on_both_backends(
    tmp_path: Path, postgres_server: object
) -> None:
    # postgres_server: PostgreSQL must be up (a failure in CI, a skip locally)
    out = tmp_path / "results"
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--backend", "both"]
    proc = subprocess.run(
        [*command, "--quick", "--rounds", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=540,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "ratio > 1 means durably is better" in proc.stdout
    report = json.loads((out / "latest.json").read_text())
    assert (out / "latest.png").stat().st_size > 1000
    for backend in ("sqlite", "postgres"):
        results = report["backends"][backend]["results"]
        expected = SCENARIOS | ({"idle"} if backend == "postgres" else set())
        assert expected <= set(results), (backend, sorted(results))
        for scenario in expected - {"floor"}:
            labels = results[scenario]
            assert labels["durably"]["ok"], (backend, scenario, labels["durably"])
            peer = [r for label, r in labels.items() if label.startswith("dbos")]
            assert peer and all(r["ok"] for r in peer), (backend, scenario, labels)
        assert results["floor"]["bare"]["ok"]
        # Latency alternates the engines in rounds; each engine's samples are pooled.
        for label, result in results["latency"].items():
            assert result["rounds"] == 2 and len(result["rounds_p50_ms"]) == 2, label
            assert result["n"] == report["params"]["latency_n"], label
        # So does throughput, each round starting all the runs of each shape.
        for scenario in ("throughput_inproc", "throughput_w1"):
            for label, result in results[scenario].items():
                assert len(result["rounds_per_second"]) == 2, (scenario, label)
                assert result["n"] == 2 * report["params"]["throughput_n"], (scenario, label)
    assert "samples_ms" not in json.dumps(report)  # pooled, not stored


def test_throughput_rounds_measure_again_only_the_peers_that_could_be_the_best() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from rounds import Job, pool_throughput, run_rounds
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    calls: list[str] = []

    def engine(label: str, rate: float) -> Job:
        def run(params: dict[str, object], title: str) -> dict[str, object]:
            calls.append(title)
            if rate <= 0:
                return {"ok": False, "error": "no server"}
            n = int(str(params["throughput_n"]))
            return {"ok": True, "n": n, "seconds": n / rate, "per_second": rate}

        return Job("sqlite", "throughput_w1", label, label, run, peer=label != "durably")

    jobs = [engine("durably", 2000), engine("near", 100), engine("far", 40), engine("down", 0)]
    parts = run_rounds(jobs, {"throughput_n": 10}, 3, drop_slow_peers=True)
    assert {key[2]: len(v) for key, v in parts.items()} == {
        "durably": 3,
        "near": 3,  # within half of the best peer: measured in every round
        "far": 1,  # under half: its first round stands
        "down": 1,  # failed: not tried again
    }
    assert calls[:4] == [
        "durably, round 1/3",
        "near, round 1/3",
        "far, round 1/3",
        "down, round 1/3",
    ]
    pooled = pool_throughput(parts[("sqlite", "throughput_w1", "near")])
    assert pooled["n"] == 30 and pooled["per_second"] == pytest.approx(100)
    assert pooled["rounds_per_second"] == [100, 100, 100]


def test_slow_peers_are_dropped_against_the_best_peer_of_their_own_backend() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from rounds import Job, run_rounds
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    def job(group: str, label: str, rate: float) -> Job:
        def run(params: dict[str, object], title: str) -> dict[str, object]:
            return {"ok": True, "n": 10, "seconds": 10 / rate, "per_second": rate}

        return Job(group, "throughput_w1", label, label, run, peer=label != "durably")

    jobs = [
        job("sqlite", "durably", 2000),
        job("sqlite", "dbos", 20),  # the best peer of SQLite's own engines
        job("postgres", "durably", 2000),
        job("postgres", "dbos", 60),
        job("peers", "restate", 100),  # in both tables: SQLite's dbos is far behind it
    ]
    parts = run_rounds(jobs, {}, 2, drop_slow_peers=True)
    assert {(k[0], k[2]): len(v) for k, v in parts.items()} == {
        ("sqlite", "durably"): 2,
        ("sqlite", "dbos"): 1,  # 20 < half of restate's 100
        ("postgres", "durably"): 2,
        ("postgres", "dbos"): 2,  # 60: within half of restate
        ("peers", "restate"): 2,
    }
