#!/usr/bin/env python
"""durably against DBOS (and optionally Temporal and Restate), in one run.

    python benchmarks/run.py --backend sqlite|postgres|both
                             [--peers dbos[,temporal,restate]]
                             [--scenarios latency,throughput,sleep,recovery,idle,floor]
                             [--quick] [--out benchmarks/results]

Every engine x scenario runs in its own subprocess (``scenario.py``) on a
fresh database: a SQLite file in a temporary directory, or a PostgreSQL
database created for it and dropped afterwards (admin URL from
``BENCH_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``).

Scenarios (all with the same workflow of three trivial steps):

  latency     sequential start-then-await, p50/p99, in-process worker
  throughput  N runs started at once, time until all results are in: in-process
              worker, and 1/2/4 worker processes with a separate client process
  sleep       N runs asleep on a durable timer: worker RSS against the same
              worker idle, rows used, time from the timers' due time to all done
  recovery    N runs blocked in a slow step, worker SIGKILLed; time for a fresh
              worker to finish them all
  idle        transactions per second an idle worker sends (PostgreSQL only)
  floor       bare commits of one small row with the same driver; each engine's
              latency against 5 such commits

Prints a table with each figure of durably, of the best peer and their ratio
(> 1 means durably is better), and writes JSON and a PNG chart to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import HERE, PG_ADMIN_URL, PROGRESS, REPO, event_loop_name, fresh_database

ALL_SCENARIOS = ["latency", "throughput", "sleep", "recovery", "idle", "floor"]
ALL_PEERS = ["dbos", "temporal", "restate"]
OWN_STORAGE = ("temporal", "restate")  # measured once per round, not per backend

FULL = {
    "latency_n": 1000,
    "latency_warmup": 100,
    "latency_rounds": 3,
    "throughput_n": 2000,
    "throughput_rounds": 3,
    "workers": [1, 2, 4],
    "sleep_n": 10000,
    "sleep_seconds": 20.0,
    "sleep_margin": 10.0,
    "settle": 5.0,
    # > 10 s: PostgreSQL 15 flushes an idle backend's transaction counts up to
    # 10 s late, so a shorter pause counts the warm-up's work as idle load.
    "pre_idle": 12.0,
    "recovery_n": 5000,
    "lease_seconds": 1.0,
    "idle_seconds": 30.0,
    "wake_timeout": 600.0,
    "timeout": 1800.0,
}
QUICK = {
    "latency_n": 20,
    "latency_warmup": 3,
    "latency_rounds": 1,
    "throughput_n": 100,
    "throughput_rounds": 1,
    "workers": [1],
    "sleep_n": 100,
    "sleep_seconds": 2.0,
    "sleep_margin": 1.5,
    "settle": 1.2,
    "pre_idle": 0.3,
    "recovery_n": 100,
    "lease_seconds": 1.0,
    "idle_seconds": 2.0,
    "wake_timeout": 60.0,
    "timeout": 120.0,
}

# (key, label, unit, better) for the table and chart; better is "lower" or "higher"
METRICS: list[tuple[str, str, str, str]] = [
    ("latency_p50", "1. sequential latency p50", "ms", "lower"),
    ("latency_p99", "1. sequential latency p99", "ms", "lower"),
    ("tput_inproc", "2. throughput, in-process worker", "wf/s", "higher"),
    ("tput_w1", "2. throughput, 1 worker process", "wf/s", "higher"),
    ("tput_w2", "2. throughput, 2 worker processes", "wf/s", "higher"),
    ("tput_w4", "2. throughput, 4 worker processes", "wf/s", "higher"),
    ("tput_best", "2. throughput, each engine's best shape", "wf/s", "higher"),
    ("sleep_rss", "3. worker RSS added by the sleepers", "MB", "lower"),
    ("sleep_rows", "3. database rows per sleeping run", "rows", "lower"),
    ("sleep_wake", "3. timers due -> all completed", "s", "lower"),
    ("recovery", "4. SIGKILL -> all recovered runs done", "s", "lower"),
    ("idle", "5. idle worker transactions", "tx/s", "lower"),
    ("floor_x", "6. p50 latency / (5 x bare commit)", "x", "lower"),
]


def say(message: str = "") -> None:
    print(message, flush=True)


# -- machine and versions ----------------------------------------------------------------


def _cmd(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(backends: list[str]) -> dict[str, Any]:
    import sqlite3
    from importlib.metadata import PackageNotFoundError, version

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg_at_start": os.getloadavg(),
        "event_loop": event_loop_name(),
    }
    with contextlib.suppress(Exception):
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    versions: dict[str, str] = {}
    for pkg in ("durably", "dbos", "psycopg", "sqlalchemy", "uvloop", "matplotlib", "psutil"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "not installed"
    info["versions"] = versions
    if "postgres" in backends:
        try:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                row = conn.execute("SELECT version()").fetchone()
                info["postgresql"] = row[0] if row else ""
                for setting in ("synchronous_commit", "fsync", "shared_buffers"):
                    row = conn.execute(f"SHOW {setting}").fetchone()
                    info[f"postgresql_{setting}"] = row[0] if row else ""
        except Exception as exc:  # noqa: BLE001 - reported, the run fails later if it must
            info["postgresql"] = f"unreachable: {exc}"
    info["git_commit"] = _cmd(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    info["git_dirty_files_in_src"] = len(
        [
            x
            for x in _cmd(["git", "-C", str(REPO), "status", "--porcelain", "src"]).splitlines()
            if x
        ]
    )
    return info


# -- running one engine x scenario -------------------------------------------------------


def run_one(
    backend: str,
    engine: str,
    scenario: str,
    params: dict[str, Any],
    label: str,
) -> dict[str, Any]:
    """Run ``scenario.py`` on a fresh database; stream its progress; return its figures."""
    say(f"  [{backend}] {label} ...")
    started = time.time()
    load_before = os.getloadavg()[0]
    with fresh_database(backend, engine) as db:
        result_file = os.path.join(db["tmpdir"], "result.json")
        argv = [
            sys.executable,
            str(HERE / "scenario.py"),
            engine,
            scenario,
            "--db-json",
            json.dumps(db),
            "--params",
            json.dumps(params),
            "--result-file",
            result_file,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(REPO),
            text=True,
            errors="replace",
        )
        tail: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                tail.append(line)
                del tail[:-40]
                if line.startswith(PROGRESS):  # progress lines of scenario.py
                    say(f"      [{backend}] {line[len(PROGRESS) :]}")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=float(params["timeout"]))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            raise
        reader.join(5)
        try:
            result = json.loads(Path(result_file).read_text())
        except (OSError, ValueError):
            result = {"ok": False, "error": f"no result (exit code {proc.returncode})"}
        if not result.get("ok"):
            result["output_tail"] = tail[-25:]
    if scenario != "latency":
        result.pop("samples_ms", None)  # pooled across rounds for latency only
    result["load_before"] = load_before
    result["load_after"] = os.getloadavg()[0]
    result["elapsed"] = time.time() - started
    status = "ok" if result.get("ok") else f"FAILED: {result.get('error')}"
    say(f"      -> {brief(scenario, result)} [{result['elapsed']:.1f}s, {status}]")
    if not result.get("ok"):
        for line in result.get("output_tail", [])[-12:]:
            say(f"         | {line}")
    return result


def brief(scenario: str, r: dict[str, Any]) -> str:
    if not r.get("ok"):
        return "no figure"
    if scenario == "latency" or scenario == "floor":
        return f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"
    if scenario.startswith("throughput"):
        return f"{r['per_second']:.0f} wf/s ({r['n']} in {r['seconds']:.2f} s)"
    if scenario == "sleep":
        woken = r["wake_to_all_completed_seconds"]
        done = (
            f"all done {woken:.2f} s after due"
            if woken is not None
            else f"only {r['completed']}/{r['n']} done {r['wake_timeout_seconds']:.0f} s after due"
        )
        return (
            f"RSS +{r['rss_delta_mb']:.1f} MB ({r['rss_per_run_kb']:.2f} KB/run), "
            f"{r['rows_per_run']:.1f} rows/run, {done}"
        )
    if scenario == "recovery":
        return f"all {r['n']} done {r['kill_to_all_completed_seconds']:.2f} s after SIGKILL"
    if scenario == "idle":
        return f"{r['per_second']:.2f} tx/s over {r['seconds']:.0f} s"
    return ""


# -- the suite ------------------------------------------------------------------------------


def run_backend(
    backend: str,
    engines: list[str],
    scenarios: list[str],
    base: dict[str, Any],
    dbos_apis: list[str],
    measured: dict[str, Any],
) -> dict[str, Any]:
    """Every scenario (but those measured in rounds, already in ``measured``)
    for every engine on one backend; returns {scenario: {label: result}}."""
    out: dict[str, dict[str, Any]] = {k: dict(v) for k, v in measured.items()}

    def variants(engine: str, scenario: str) -> list[tuple[str, dict[str, Any]]]:
        return engine_variants(engine, scenario, dbos_apis)

    def record(scenario: str, label: str, result: dict[str, Any]) -> None:
        out.setdefault(scenario, {})[label] = result

    for scenario in scenarios:
        if scenario == "idle" and backend != "postgres":
            continue
        if scenario == "floor":
            record("floor", "bare", run_one(backend, "floor", "floor", base, "bare commits"))
            continue
        for engine in engines:
            if engine in OWN_STORAGE:
                continue  # in the rounds only (they keep their own storage), see main()
            extra_params: dict[str, Any] = {}
            if scenario == "sleep":
                extra_params = sleep_params(base, out, engine)
            for label, extra in variants(engine, scenario):
                record(
                    scenario,
                    label,
                    run_one(
                        backend,
                        engine,
                        scenario,
                        {**base, **extra, **extra_params},
                        f"{label} {scenario}",
                    ),
                )
    return out


def engine_variants(
    engine: str, scenario: str, dbos_apis: list[str]
) -> list[tuple[str, dict[str, Any]]]:
    """(label, extra params) of each way ``engine`` is measured in ``scenario``."""
    if engine == "dbos" and scenario in ("latency", "throughput_inproc", "throughput_workers"):
        return [(f"dbos-{api}", {"dbos_api": api}) for api in dbos_apis]
    if engine == "dbos":
        return [("dbos-async", {"dbos_api": "async"})]
    return [(engine, {})]


def peer_jobs(scenario: str, extra_peers: list[str], skips: dict[str, dict[str, Any]]) -> list[Any]:
    """Round jobs of the optional peers (their own servers) in ``scenario``; a
    peer that cannot run here gets its skip in ``skips`` ({key: {peer: result}})."""
    import peers as peer_mod
    from rounds import Job

    jobs = []
    for peer in extra_peers:
        key = peer_mod.result_key(peer, scenario)
        skipped = peer_mod.available(peer)
        if skipped is not None:
            skips.setdefault(key, {})[peer] = skipped
            continue

        def run(params: dict[str, Any], title: str, peer: str = peer) -> dict[str, Any]:
            result = run_one_peer(peer, scenario, params, f"{title} (own server)")
            if not result.get("ok"):
                result["skipped"] = True  # reported, but never fails the run
            return result

        jobs.append(Job("peers", key, peer, f"{peer} {scenario}", run, peer=True))
    return jobs


def engine_jobs(
    backends: list[str],
    engines: list[str],
    dbos_apis: list[str],
    shapes: list[tuple[str, str, dict[str, Any], str]],
) -> list[Any]:
    """Round jobs of the engines on our backends: shapes are (result key,
    scenario, extra params, title) of one scenario."""
    from rounds import Job

    jobs = []
    for backend in backends:
        for engine in engines:
            if engine in OWN_STORAGE:
                continue
            for key, scenario, shape, what in shapes:
                for label, extra in engine_variants(engine, scenario, dbos_apis):
                    params = {**shape, **extra}

                    def run(
                        base: dict[str, Any],
                        title: str,
                        backend: str = backend,
                        engine: str = engine,
                        scenario: str = scenario,
                        params: dict[str, Any] = params,
                    ) -> dict[str, Any]:
                        return run_one(backend, engine, scenario, {**base, **params}, title)

                    title = f"{label} {what}"
                    jobs.append(Job(backend, key, label, title, run, peer=engine != "durably"))
    return jobs


def split_by_group(
    pooled: dict[tuple[str, str, str], dict[str, Any]],
    backends: list[str],
    skips: dict[str, dict[str, Any]],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """({backend: {scenario: {label: result}}}, {scenario: {peer: result}})."""
    by_backend: dict[str, dict[str, Any]] = {b: {} for b in backends}
    by_peer: dict[str, Any] = {k: dict(v) for k, v in skips.items()}
    for (group, scenario, label), result in pooled.items():
        where = by_peer if group == "peers" else by_backend[group]
        where.setdefault(scenario, {})[label] = result
    return by_backend, by_peer


def latency_in_rounds(
    backends: list[str],
    engines: list[str],
    extra_peers: list[str],
    base: dict[str, Any],
    dbos_apis: list[str],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every engine's latency, alternating in rounds (see ``rounds.py``):
    ({backend: {"latency": {label: result}}}, {"latency": {peer: result}})."""
    from rounds import pool_latency, run_rounds

    skips: dict[str, dict[str, Any]] = {}
    jobs = engine_jobs(backends, engines, dbos_apis, [("latency", "latency", {}, "latency")])
    jobs += peer_jobs("latency", extra_peers, skips)
    rounds = base["latency_rounds"]
    params = {**base, "latency_n": max(1, base["latency_n"] // max(1, rounds))}
    parts = run_rounds(jobs, params, rounds)
    pooled = {k: pool_latency(v) for k, v in parts.items()}
    return split_by_group(pooled, backends, skips)


def throughput_in_rounds(
    backends: list[str],
    engines: list[str],
    extra_peers: list[str],
    base: dict[str, Any],
    dbos_apis: list[str],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Every engine's throughput in every shape, alternating in rounds (see
    ``rounds.py``): ({backend: {scenario: {label: result}}}, {scenario: {peer: result}})."""
    from rounds import pool_throughput, run_rounds

    shapes = [("throughput_inproc", "throughput_inproc", {}, "throughput, in-process worker")]
    shapes += [
        (
            f"throughput_w{k}",
            "throughput_workers",
            {"workers": k},
            f"throughput, {k} worker process(es) + client",
        )
        for k in base["workers"]
    ]
    skips: dict[str, dict[str, Any]] = {}
    jobs = engine_jobs(backends, engines, dbos_apis, shapes)
    jobs += peer_jobs("throughput_inproc", extra_peers, skips)
    parts = run_rounds(jobs, base, base["throughput_rounds"], drop_slow_peers=True)
    pooled = {k: pool_throughput(v) for k, v in parts.items()}
    return split_by_group(pooled, backends, skips)


def sleep_params(base: dict[str, Any], out: dict[str, Any], engine: str) -> dict[str, Any]:
    """Pick the timers' due time so every sleeper is started (and measured) before it.

    The due time is T + max(sleep_seconds, 1.3 x the time this engine needed
    for the same number of runs in the 1-worker throughput scenario + a margin).
    """
    rate = None
    for label, r in out.get("throughput_w1", {}).items():
        if label.split("-")[0] == engine and r.get("ok"):
            rate = r["per_second"]
    seconds = float(base["sleep_seconds"])
    if rate:
        seconds = max(seconds, 1.3 * base["sleep_n"] / rate + float(base["sleep_margin"]))
    return {"sleep_seconds": min(seconds, 900.0)}


# -- figures, ratios, table -----------------------------------------------------------------


def figures(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{metric: {engine label: value}} from one backend's results."""
    fig: dict[str, dict[str, float]] = {}

    def put(metric: str, label: str, value: float | None) -> None:
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            fig.setdefault(metric, {})[label] = float(value)

    for label, r in results.get("latency", {}).items():
        if r.get("ok"):
            put("latency_p50", label, r["p50_ms"])
            put("latency_p99", label, r["p99_ms"])
    for key, metric in (
        ("throughput_inproc", "tput_inproc"),
        ("throughput_w1", "tput_w1"),
        ("throughput_w2", "tput_w2"),
        ("throughput_w4", "tput_w4"),
    ):
        for label, r in results.get(key, {}).items():
            if r.get("ok"):
                put(metric, label, r["per_second"])
                best = max(r["per_second"], fig.get("tput_best", {}).get(label, 0.0))
                put("tput_best", label, best)
    for label, r in results.get("sleep", {}).items():
        if r.get("ok"):
            put("sleep_rss", label, r["rss_delta_mb"])
            put("sleep_rows", label, r["rows_per_run"])
            if r.get("all_completed", True):
                put("sleep_wake", label, r["wake_to_all_completed_seconds"])
            else:  # a lower bound: not all were done when the scenario gave up
                put("sleep_wake", label, r["wake_timeout_seconds"])
                fig.setdefault("lower_bounds", {}).setdefault("sleep_wake", {})[label] = (
                    f"only {r['completed']}/{r['n']} completed"
                )
    for label, r in results.get("recovery", {}).items():
        if r.get("ok"):
            put("recovery", label, r["kill_to_all_completed_seconds"])
    for label, r in results.get("idle", {}).items():
        if r.get("ok"):
            put("idle", label, r["per_second"])
    floor = results.get("floor", {}).get("bare", {})
    if floor.get("ok"):
        put("floor_commit_ms", "bare", floor["p50_ms"])
        for label, value in fig.get("latency_p50", {}).items():
            put("floor_x", label, value / (5 * floor["p50_ms"]))
    return fig


def compare(fig: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    rows = []
    for key, name, unit, better in METRICS:
        values = fig.get(key, {})
        mine = values.get("durably")
        peers = {k: v for k, v in values.items() if k != "durably"}
        best_label = None
        if peers:
            pick = min if better == "lower" else max
            best_label = pick(peers, key=lambda k: peers[k])
        best = peers.get(best_label) if best_label else None
        ratio: float | None = None
        if mine is not None and best is not None:
            if better == "lower":
                # floor at a tiny positive value: a figure of 0 (or below, from noise) wins
                ratio = best / mine if mine > 1e-9 else math.inf
                if best <= 0 < mine:
                    ratio = 0.0
            else:
                ratio = mine / best if best > 0 else math.inf
        bounds = fig.get("lower_bounds", {}).get(key, {})
        rows.append(
            {
                "lower_bounds": bounds,
                "metric": key,
                "name": name,
                "unit": unit,
                "better": better,
                "durably": mine,
                "best_peer": best_label,
                "best_peer_value": best,
                "ratio": ratio,
                "all": values,
            }
        )
    return rows


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def print_table(backend: str, rows: list[dict[str, Any]], floor_ms: float | None) -> None:
    say()
    head = f"== {backend} "
    if floor_ms is not None:
        head += f"(bare commit p50 {floor_ms:.3f} ms) "
    say(head + "=" * max(0, 100 - len(head)))
    say(f"{'scenario':44} {'durably':>14} {'best peer':>24} {'ratio':>9}")
    for row in rows:
        if row["durably"] is None and row["best_peer_value"] is None:
            continue
        peer = "-"
        bound = ">" if row["best_peer"] in row.get("lower_bounds", {}) else ""
        if row["best_peer"]:
            peer = f"{bound}{fmt(row['best_peer_value'], row['unit'])} {row['best_peer']}"
        ratio = row["ratio"]
        ratio_text = "-" if ratio is None else ("inf" if math.isinf(ratio) else f"{ratio:.2f}x")
        ratio_text = bound + ratio_text if ratio is not None else ratio_text
        say(f"{row['name']:44} {fmt(row['durably'], row['unit']):>14} {peer:>24} {ratio_text:>9}")
    say("ratio > 1 means durably is better (peer/durably for lower-is-better, durably/peer else)")
    for row in rows:
        for label, text in row.get("lower_bounds", {}).items():
            say(f"  > {row['name']}, {label}: {text} when the scenario gave up (a lower bound)")


# -- chart -------------------------------------------------------------------------------------


def chart(per_backend: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        m
        for m in METRICS
        if any(r["all"] for rows in per_backend.values() for r in rows if r["metric"] == m[0])
    ]
    if not keys:
        return
    cols = 4
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.3 * nrows), squeeze=False)
    colors = {"durably": "#2a7de1"}
    palette = ["#e8833a", "#8e6bbf", "#59a14f", "#d64f4f", "#9c755f", "#76b7b2"]
    for ax, (key, name, unit, better) in zip(axes.flat, keys, strict=False):
        backends = [
            b
            for b, rows in per_backend.items()
            if any(r["metric"] == key and r["all"] for r in rows)
        ]
        engines: list[str] = []
        for rows in per_backend.values():
            for r in rows:
                if r["metric"] == key:
                    for label in r["all"]:
                        if label not in engines:
                            engines.append(label)
        engines.sort(key=lambda e: (e != "durably", e))
        width = 0.8 / max(1, len(engines))
        for i, label in enumerate(engines):
            if label not in colors:
                colors[label] = palette[(len(colors) - 1) % len(palette)]
            xs, ys = [], []
            for j, b in enumerate(backends):
                for r in per_backend[b]:
                    if r["metric"] == key and label in r["all"]:
                        xs.append(j + (i - (len(engines) - 1) / 2) * width)
                        ys.append(max(r["all"][label], 0.0))
            bars = ax.bar(xs, ys, width, label=label, color=colors[label])
            for bar, y in zip(bars, ys, strict=True):
                ax.annotate(
                    fmt(y),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=6,
                )
        ax.set_xticks(range(len(backends)))
        ax.set_xticklabels(backends)
        ax.set_title(f"{name}\n({unit}, {better} is better)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--peers", default="dbos", help="comma list of dbos,temporal,restate")
    parser.add_argument("--scenarios", default=",".join(ALL_SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument(
        "--workers", default=None, help="worker process counts for throughput (default 1,2,4)"
    )
    parser.add_argument(
        "--sleep-seconds",
        type=float,
        default=None,
        help="minimum time until the sleepers' timers are due (default 20; 2 with --quick)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="alternating rounds of latency and throughput (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--dbos-api",
        default=None,
        help="DBOS APIs tried for latency and throughput, the best is reported "
        "(default async,sync; async with --quick)",
    )
    args = parser.parse_args(argv)

    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for p in peers:
        if p not in ALL_PEERS:
            parser.error(f"unknown peer {p!r} (choose from {', '.join(ALL_PEERS)})")
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in ALL_SCENARIOS:
            parser.error(f"unknown scenario {s!r} (choose from {', '.join(ALL_SCENARIOS)})")
    base = dict(QUICK if args.quick else FULL)
    if args.workers:
        base["workers"] = [int(x) for x in args.workers.split(",")]
    if args.sleep_seconds is not None:
        base["sleep_seconds"] = args.sleep_seconds
    if args.rounds is not None:
        base["latency_rounds"] = base["throughput_rounds"] = max(1, args.rounds)
    base["floor_n"] = 5 * base["latency_n"]
    dbos_api = args.dbos_api or ("async" if args.quick else "async,sync")
    dbos_apis = [a.strip() for a in dbos_api.split(",") if a.strip()]

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    started = time.time()
    say(f"durably benchmark: {command}")
    say(
        f"backends {', '.join(backends)}; engines durably, {', '.join(peers) or 'none'}; "
        f"scenarios {', '.join(scenarios)}; {'quick' if args.quick else 'full'}"
    )
    info = machine_info(backends)
    say(
        f"machine: {info['cpu']} x{info['cpu_count']}, load {info['loadavg_at_start']}; "
        f"async clients and workers on {info['event_loop']}"
    )

    report: dict[str, Any] = {
        "command": command,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "mode": "quick" if args.quick else "full",
        "machine": info,
        "params": base,
        "notes": notes(base),
        "backends": {},
    }

    engines = ["durably", *peers]
    extra_peers = [p for p in peers if p in OWN_STORAGE]
    peer_results: dict[str, Any] = {}
    in_rounds: dict[str, dict[str, Any]] = {b: {} for b in backends}
    for scenario, measure, what in (
        ("latency", latency_in_rounds, "samples pooled"),
        ("throughput", throughput_in_rounds, "runs and time pooled, slow peers once"),
    ):
        if scenario not in scenarios:
            continue
        rounds = base[f"{scenario}_rounds"]
        say(f"\n=== {scenario}: every engine, {rounds} alternating round(s), {what} ===")
        by_backend, by_peer = measure(backends, engines, extra_peers, base, dbos_apis)
        for backend in backends:
            in_rounds[backend].update(by_backend[backend])
        peer_results.update(by_peer)
    scenarios = [s for s in scenarios if s not in ("latency", "throughput")]
    if peer_results:
        report["optional_peers"] = peer_results

    tables: dict[str, list[dict[str, Any]]] = {}
    if args.quick and len(backends) > 1:
        # a smoke run: both backends at once (its figures are not for comparison)
        say("\n=== backends " + " and ".join(backends) + " in parallel (quick) ===")
        with ThreadPoolExecutor(len(backends)) as pool:
            futures = {
                b: pool.submit(run_backend, b, engines, scenarios, base, dbos_apis, in_rounds[b])
                for b in backends
            }
            by_backend = {b: f.result() for b, f in futures.items()}
    else:
        by_backend = {}
        for backend in backends:
            if scenarios:  # (latency and throughput, if asked for, were measured above)
                say(f"\n=== backend {backend} ===")
            by_backend[backend] = run_backend(
                backend, engines, scenarios, base, dbos_apis, in_rounds[backend]
            )
    for backend in backends:
        results = by_backend[backend]
        for scenario, by_label in peer_results.items():
            for label, r in by_label.items():
                results.setdefault(scenario, {})[label] = r
        fig = figures(results)
        rows = compare(fig)
        tables[backend] = rows
        report["backends"][backend] = {"results": results, "figures": fig, "comparison": rows}

    report["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat()
    report["total_seconds"] = time.time() - started
    report["machine"]["loadavg_at_end"] = os.getloadavg()

    for backend, rows in tables.items():
        floor = report["backends"][backend]["figures"].get("floor_commit_ms", {}).get("bare")
        print_table(backend, rows, floor)
    apis = describe_apis(report)
    if apis:
        say("\n" + apis)

    json_path = out_dir / f"bench-{stamp}.json"
    png_path = out_dir / f"bench-{stamp}.png"
    json_path.write_text(json.dumps(_clean(report), indent=2, default=str, allow_nan=False))
    try:
        chart(
            tables,
            png_path,
            f"durably vs peers ({report['mode']}, {info['cpu_count']} CPUs, "
            f"{report['started_at'][:16]})",
        )
    except Exception as exc:  # noqa: BLE001 - the figures are in the JSON anyway
        say(f"chart failed: {exc}")
    for src, name in ((json_path, "latest.json"), (png_path, "latest.png")):
        if src.exists():
            shutil.copyfile(src, out_dir / name)
    say(f"\nresults: {json_path}\nchart:   {png_path}\ntotal {report['total_seconds']:.0f} s")
    failures = [
        f"{b}/{s}/{label}"
        for b, v in report["backends"].items()
        for s, by_label in v["results"].items()
        for label, r in by_label.items()
        if not r.get("ok") and not r.get("skipped")
    ]
    if failures:
        say(f"FAILED: {', '.join(failures)}")
        return 1
    return 0


def run_one_peer(engine: str, scenario: str, params: dict[str, Any], label: str) -> dict[str, Any]:
    """Optional peers need no database of ours; the backend only names the temp dir."""
    return run_one("sqlite", engine, scenario, params, label)


def notes(base: dict[str, Any]) -> list[str]:
    return [
        "Same workflow for every engine: three trivial steps (x+1, *2, -3).",
        "Latency: start then await the result, one at a time, after a warm-up, in-process worker.",
        "Throughput (worker processes): the client starts all runs concurrently, then awaits "
        "their results in start order; durably workers are `durably worker bench_durably:app`, "
        "DBOS workers are processes that DBOS.launch() and listen on a queue the client "
        "enqueues to with DBOSClient.",
        "Sleep: runs wait on one durable timer due at T+sleep_seconds (T = first start); RSS "
        "(psutil, median of 5 samples) of the worker process after warm-up against after all "
        f"runs went to sleep and {base['settle']} s settled; rows = all tables of the database.",
        "Recovery: the killed worker holds every run in a slow step; the fresh worker starts "
        "right after SIGKILL; time from SIGKILL to all runs reported completed by the engine.",
        "Idle: pg_stat_database xact_commit + xact_rollback of the benchmark's database over "
        "the window, with only the idle worker connected (each idle result names its source).",
        "Floor: bare commits of one small row with the same driver; the engine's p50 "
        "sequential latency is divided by 5 such commits (about what a 3-step run needs).",
    ]


def describe_apis(report: dict[str, Any]) -> str:
    lines = []
    for backend, v in report["backends"].items():
        lat = v["figures"].get("latency_p50", {})
        dbos = {k: x for k, x in lat.items() if k.startswith("dbos-")}
        if len(dbos) > 1:
            best = min(dbos, key=lambda k: dbos[k])
            lines.append(
                f"DBOS on {backend}: fastest API for latency was {best.removeprefix('dbos-')} "
                f"({', '.join(f'{k} {x:.2f} ms' for k, x in dbos.items())}); throughput tries "
                "both, sleep and recovery use async workflows (a sleeping sync workflow holds "
                "a thread)"
            )
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    """JSON without NaN/Infinity: those become the strings "nan", "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
