"""dbt inside a flow against a plain ``dbt build``: what reporting every node costs.

``python -m bench.dbt_in_flow`` (``--orders``, ``--repeats``, ``--select``). A sample warehouse
is made once (the demo shop generated, its three sources ingested) and built once untimed; a
Prefect server runs for the whole bench on a throwaway database, as a long-lived server would.
Then, interleaved (A B C D A B C D …), each path builds the same selection in its own child
process:

- ``dbt build (CLI)``: ``dbt build --profiles-dir .`` as typed at a shell, timed from outside
  (interpreter start and imports included);
- ``plain dbt build``: ``dbtRunner().invoke(["build", …])`` in the child after its imports, with
  dbt's default logging — the reference;
- ``flow's dbt step``: ``run_dbt`` inside a flow, as ``elt`` and ``dbt`` call it, after imports:
  one task run per node, reported by ``tributary.dbt_nodes``;
- ``flow, prefect-dbt as shipped``: the same with prefect-dbt's own ``PrefectDbtRunner`` (the
  task engine per node in threads that rebuild Prefect's settings and clients);
- ``plain parts``: the three sources loaded by calling ``run_source`` (no flow), then the plain
  dbt build, after imports;
- ``elt flow``: the ``elt`` flow against the server, loading the same sources and building the
  same selection (then publishing and recording the run, as it always does), after imports.

Every load is a re-run without changes (each still re-reads its lag window and merges it). The
ratio ``elt flow`` / ``plain parts`` is what orchestration costs a whole run.

The in-process children also report their CPU seconds, and the flow ones how many Prefect
``Settings`` and API clients were built during the step, how many task runs the server
recorded and the server's CPU seconds until it had (on a small machine it shares the cores).
One table of medians is printed, then the same figures as one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

PATHS = ("cli", "plain", "flow", "shipped", "parts", "elt")
LABELS = {
    "cli": "dbt build (CLI)",
    "plain": "plain dbt build",
    "flow": "flow's dbt step",
    "shipped": "flow, prefect-dbt as shipped",
    "parts": "plain parts: loads + dbt build",
    "elt": "elt flow",
}
TOKEN = "bench-token"
KEYS = ("cpu", "server_cpu", "nodes", "task_runs", "settings", "clients", "slot_wait", "slots")
"""What the in-process children report besides their wall time (medians in the table)."""


# --- the sample warehouse and the server, in the parent -------------------------------------


@contextmanager
def sample_warehouse(data_dir: Path, orders: int) -> Iterator[None]:
    """The demo shop at ``orders`` orders, its sources ingested into ``data_dir``'s warehouse;
    its API serves (this process's environment names it) until the block ends."""
    from demo import paths
    from demo.api import serve_in_background
    from demo.generate import generate
    from tributary.settings import Settings

    settings = Settings(data_dir=data_dir)
    generate(paths.shop_url(settings), settings.demo_api_db, orders=orders, seed=42)
    os.environ["SOURCES__PAYMENTS__TOKEN"] = TOKEN
    with serve_in_background(settings.demo_api_db, TOKEN) as base_url:
        os.environ["TRIBUTARY_PAYMENTS_API_URL"] = base_url
        os.environ["TRIBUTARY_FX_API_URL"] = base_url
        load_every_source(settings)
        yield


def load_every_source(settings: Any) -> None:
    """Each declared source loaded by calling ``run_source``, without a flow."""
    from ingestion import registry
    from ingestion.pipeline import run_source

    for source in registry.source_names(settings):
        run_source(source, settings)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def prefect_server(home: Path) -> Iterator[tuple[str, int]]:
    """``prefect server start`` on a throwaway database, with the warehouse's concurrency
    limit; yields its API URL and process id."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    environment = {**os.environ, "PREFECT_HOME": str(home)}
    environment.pop("PREFECT_API_URL", None)
    home.mkdir(parents=True, exist_ok=True)
    with (home / "server.log").open("w") as log:
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError as exc:
                if server.poll() is not None or time.monotonic() > deadline:
                    log_tail = (home / "server.log").read_text()[-3000:]
                    raise SystemExit(f"bench: no Prefect server:\n{log_tail}") from exc
                time.sleep(1)
        subprocess.run(
            [
                str(Path(sys.executable).parent / "prefect"),
                "gcl",
                "create",
                "tributary-warehouse",
                "--limit",
                "1",
            ],
            env={**environment, "PREFECT_API_URL": url},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        yield url, server.pid
    finally:
        server.terminate()
        server.wait(30)


# --- one measurement, in a child process ----------------------------------------------------


def _count_constructions() -> Counter[str]:
    """Counts the Prefect ``Settings`` and sync API clients built from now on."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings.models.root import Settings as PrefectSettings

    counts: Counter[str] = Counter()
    for name, cls in (("settings", PrefectSettings), ("clients", SyncPrefectClient)):
        original = cls.__init__

        def counting(self: Any, *args: Any, _n: str = name, _i: Any = original, **kw: Any):
            counts[_n] += 1
            _i(self, *args, **kw)

        cls.__init__ = counting  # type: ignore[method-assign]
    return counts


def _time_slot_waits() -> list[float]:
    """Seconds each warehouse slot took to acquire from now on (``tributary.lock._hold``'s
    entry: on a server, the global concurrency limit's slot)."""
    import tributary.lock as lock

    waits: list[float] = []
    original = lock._hold

    @contextmanager
    def timed(settings: Any) -> Iterator[None]:
        started = time.perf_counter()
        with original(settings):
            waits.append(time.perf_counter() - started)
            yield

    lock._hold = timed  # type: ignore[assignment]
    return waits


def _use_shipped_runner() -> None:
    """``run_dbt`` through prefect-dbt's own ``PrefectDbtRunner`` as shipped: the engine's task
    runs per node that ``tributary.dbt_nodes`` replaces (its node threads joined before the
    step ends, as ours are)."""
    from prefect_dbt import PrefectDbtRunner, PrefectDbtSettings

    import tributary.dbt as dbt
    from tributary.settings import DBT_PROJECT_DIR

    def invoke(args: list[str], environment: dict[str, str]) -> Any:
        runner = PrefectDbtRunner(
            settings=PrefectDbtSettings(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR),
            raise_on_failure=False,
        )
        with dbt._environment(environment):
            try:
                result = runner.invoke(args)
            finally:
                dbt.release_duckdb()
                for thread in threading.enumerate():
                    if thread.name.endswith("(run_task)"):
                        thread.join(120)
        return dbt._summarise(args, result.result)

    dbt.invoke_dbt = invoke  # type: ignore[assignment]


def _recorded_task_runs(flow_run_id: Any, timeout: float = 120) -> int:
    """Task runs of the flow run, once the server has recorded them all in a final state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    deadline = time.monotonic() + timeout
    seen = -1
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            final = sum(1 for run in runs if run.state is not None and run.state.is_final())
            if final == len(runs) == seen or time.monotonic() > deadline:
                return final
            seen = len(runs)
            time.sleep(2)


def _run_plain(args: list[str], *, loads: bool = False) -> dict[str, Any]:
    """The plain dbt build; with ``loads``, every source loaded first (the plain parts)."""
    from dbt.cli.main import dbtRunner

    from tributary.settings import DBT_PROJECT_DIR, get_settings

    project = ["--profiles-dir", str(DBT_PROJECT_DIR), "--project-dir", str(DBT_PROJECT_DIR)]
    started, cpu = time.perf_counter(), time.process_time()
    if loads:
        load_every_source(get_settings())
    result = dbtRunner().invoke([*args, *project])
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    nodes = len(result.result.results) if result.result is not None else 0
    return {"seconds": seconds, "cpu": cpu, "nodes": nodes, "ok": result.success}


def _run_elt(args: list[str]) -> dict[str, Any]:
    from flows.elt import EltParameters, elt

    select = args[args.index("--select") + 1 :] if "--select" in args else []
    params = EltParameters(dbt_select=select) if select else EltParameters(dbt="all")
    counts = _count_constructions()
    waits = _time_slot_waits()
    started, cpu = time.perf_counter(), time.process_time()
    state = elt(params, return_state=True)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    report = state.result() if state.is_completed() else None
    nodes = len(report.dbt.nodes) if report is not None and report.dbt is not None else 0
    figures = {"seconds": seconds, "cpu": cpu, "nodes": nodes, "ok": state.is_completed()}
    figures["settings"], figures["clients"] = counts["settings"], counts["clients"]
    figures["slot_wait"], figures["slots"] = sum(waits), len(waits)
    figures["task_runs"] = _recorded_task_runs(state.state_details.flow_run_id)
    return figures


def _run_flow(args: list[str]) -> dict[str, Any]:
    from prefect import flow

    from tributary.dbt import run_dbt
    from tributary.settings import get_settings

    counts = _count_constructions()
    waits = _time_slot_waits()
    figures: dict[str, Any] = {}

    @flow(name="bench-dbt-step")
    def dbt_step() -> None:
        settings = get_settings()
        counts.clear()
        started, cpu = time.perf_counter(), time.process_time()
        summary = run_dbt(args, settings)
        figures["seconds"] = time.perf_counter() - started
        figures["cpu"] = time.process_time() - cpu
        figures["nodes"] = len(summary.nodes)
        figures["settings"], figures["clients"] = counts["settings"], counts["clients"]
        figures["slot_wait"], figures["slots"] = sum(waits), len(waits)

    state = dbt_step(return_state=True)
    figures["ok"] = state.is_completed()
    figures["task_runs"] = _recorded_task_runs(state.state_details.flow_run_id)
    return figures


IMPORTS = {
    "plain": ("dbt.cli.main", "dbt.adapters.duckdb"),
    "flow": ("prefect", "tributary.dbt", "dbt.adapters.duckdb", "prefect.task_engine"),
    "parts": ("dbt.cli.main", "dbt.adapters.duckdb", "ingestion.pipeline", "ingestion.registry"),
    "elt": ("flows.elt", "dbt.adapters.duckdb", "prefect.task_engine"),
}
RUNS = {
    "plain": _run_plain,
    "flow": _run_flow,
    "shipped": _run_flow,
    "parts": functools.partial(_run_plain, loads=True),
    "elt": _run_elt,
}


def child(path: str, args: list[str]) -> None:
    for module in IMPORTS.get(path, IMPORTS["flow"]):
        importlib.import_module(module)
    if path == "shipped":
        _use_shipped_runner()
    print(json.dumps(RUNS[path](args)))


def cpu_seconds(pid: int) -> float:
    """CPU time a process (and its reaped children) has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def measure(path: str, args: list[str], environment: dict[str, str]) -> dict[str, Any]:
    """Runs one path in a child process: the CLI in the dbt project, the others from the
    checkout, as the flows run (Prefect reads its prefect.toml there). Their logs are kept
    only to show when a path fails."""
    from tributary.settings import DBT_PROJECT_DIR, PROJECT_ROOT

    if path == "cli":
        dbt = str(Path(sys.executable).parent / "dbt")
        started = time.perf_counter()
        process = subprocess.run(
            [dbt, *args, "--profiles-dir", "."],
            cwd=DBT_PROJECT_DIR,
            env=environment,
            stdout=subprocess.PIPE,
            text=True,
        )
        seconds = time.perf_counter() - started
        if process.returncode != 0:
            raise SystemExit(
                f"bench: dbt build failed (exit {process.returncode})\n{process.stdout[-3000:]}"
            )
        return {"seconds": seconds, "ok": True}
    process = subprocess.run(
        [sys.executable, "-m", "bench.dbt_in_flow", "--child", path, "--args", json.dumps(args)],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    if process.returncode != 0:
        raise SystemExit(
            f"bench: {path} failed (exit {process.returncode})\n{process.stderr[-3000:]}"
        )
    result = json.loads(process.stdout.strip().splitlines()[-1])
    if not result["ok"]:
        raise SystemExit(f"bench: {path}: the build failed\n{process.stderr[-3000:]}")
    return result


# --- the benchmark --------------------------------------------------------------------------


def run(
    orders: int,
    repeats: int,
    select: list[str],
    console: Console,
    paths: tuple[str, ...] = PATHS,
) -> dict[str, Any]:
    from tributary.dbt import build_args, dbt_environment
    from tributary.settings import Settings

    args = build_args(select, [])
    samples: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tributary-bench-dbt-") as tmp, ExitStack() as stack:
        data_dir = Path(tmp) / "data"
        stack.callback(shutil.rmtree, data_dir, ignore_errors=True)
        console.print(f"Making a sample warehouse ({orders:,} orders) in {data_dir} …")
        stack.enter_context(sample_warehouse(data_dir, orders))
        settings = Settings(data_dir=data_dir)
        environment = {
            **os.environ,
            **dbt_environment(settings),
            "TRIBUTARY_DATA_DIR": str(data_dir),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        console.print("Starting a Prefect server …")
        with prefect_server(Path(tmp) / "prefect") as (api_url, server):
            environment["PREFECT_API_URL"] = api_url
            console.print("  untimed warm-up build (schemas, partial parse) …")
            measure("cli", args, environment)
            for round_ in range(repeats):
                for path in paths:
                    before = cpu_seconds(server)
                    result = measure(path, args, environment)
                    if "task_runs" in result:
                        # Until the server recorded every task run (the child waits for it).
                        result["server_cpu"] = cpu_seconds(server) - before
                    samples[path].append(result)
                    extra = (
                        f"  cpu {result['cpu']:6.2f} s  {result['nodes']} nodes"
                        if "cpu" in result
                        else ""
                    )
                    if "task_runs" in result:
                        extra += (
                            f", {result['task_runs']} task runs, {result['settings']} settings, "
                            f"{result['clients']} clients built; {result['slots']} slots in "
                            f"{result['slot_wait']:.2f} s; server cpu {result['server_cpu']:.2f} s"
                        )
                    console.print(
                        f"  round {round_ + 1} {LABELS[path]:<30} {result['seconds']:7.2f} s{extra}"
                    )
    figures = summarise(orders, select, samples)
    figures["load_average"] = {
        "start": [round(value, 2) for value in load_before],
        "end": [round(value, 2) for value in os.getloadavg()],
    }
    return figures


def summarise(
    orders: int, select: list[str], samples: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    plain = statistics.median(sample["seconds"] for sample in samples["plain"])
    figures: dict[str, Any] = {"orders": orders, "select": select, "paths": {}}
    for path, runs in samples.items():
        seconds = statistics.median(sample["seconds"] for sample in runs)
        row: dict[str, Any] = {
            "seconds": round(seconds, 3),
            "runs": len(runs),
            "ratio_to_plain": round(seconds / plain, 3),
        }
        for key in KEYS:
            if any(key in sample for sample in runs):
                row[key] = statistics.median(sample.get(key, 0) for sample in runs)
        figures["paths"][path] = row
    if samples.get("elt") and samples.get("parts"):
        parts = figures["paths"]["parts"]["seconds"]
        figures["elt_over_parts"] = round(figures["paths"]["elt"]["seconds"] / parts, 3)
        # Without the time spent waiting for warehouse slots (the server's answers, not work)
        figures["elt_less_slot_waits_over_parts"] = round(
            statistics.median(run["seconds"] - run["slot_wait"] for run in samples["elt"]) / parts,
            3,
        )
    return figures


def print_table(figures: dict[str, Any], console: Console) -> None:
    selection = " ".join(figures["select"]) or "everything"
    table = Table(title=f"dbt build of {selection}, {figures['orders']:,} orders (medians)")
    columns = (
        "path",
        "wall s",
        "x plain",
        "CPU s",
        "server CPU s",
        "nodes",
        "task runs",
        "Settings",
        "clients",
        "slot wait s",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "path" else "right")
    for path, row in figures["paths"].items():

        def cell(key: str, row: dict[str, Any] = row) -> str:
            value = row.get(key)
            return (
                "" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)
            )

        table.add_row(
            LABELS[path],
            f"{row['seconds']:.2f}",
            f"{row['ratio_to_plain']:.2f}",
            *(cell(key) for key in KEYS if key != "slots"),
        )
    console.print(table)
    if "elt_over_parts" in figures:
        console.print(
            f"elt flow / its plain parts: {figures['elt_over_parts']:.2f}x (target <= 1.3x); "
            f"less its waits for warehouse slots: {figures['elt_less_slot_waits_over_parts']:.2f}x"
        )
    load = figures["load_average"]
    console.print(
        f"Load average (1, 5, 15 min): {load['start']} at the start, {load['end']} at the end."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=2000, help="orders in the sample shop")
    parser.add_argument("--repeats", type=int, default=3, help="runs per path (median)")
    parser.add_argument("--select", nargs="+", default=[], help="dbt --select; default: all")
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=PATHS,
        default=PATHS,
        help="only these paths and the plain build, the reference (default: all)",
    )
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(options.child, json.loads(options.args))
        return
    console = Console(stderr=False, width=max(Console().width, 110))
    paths = tuple(path for path in PATHS if path in options.paths or path == "plain")
    figures = run(options.orders, options.repeats, options.select, console, paths)
    print_table(figures, console)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
