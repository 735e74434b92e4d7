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
    assert "samples_ms" not in json.dumps(report)  # pooled, not stored
