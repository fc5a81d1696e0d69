"""PostgreSQL → DuckDB: tributary's shop path against the COPY limit, dlt's default backend, Sling.

``make bench`` (or ``python -m bench.sql_to_duckdb --rows 5000000``). An orders-like table of
N rows is made in a throwaway PostgreSQL database; then, interleaved (A B C D A B C D …), each
path runs in its own child process, which times only the load (not interpreter start):

- ``copy-binary limit``: ``COPY (SELECT …) TO STDOUT (FORMAT binary)`` read fully, discarded;
- ``dlt sqlalchemy (default)``: ``sql_database`` as a user would configure it, into DuckDB;
- ``duckdb postgres scanner``: ATTACH + CREATE TABLE AS (needs ``duckdb-ext-postgres``);
- ``tributary``: ``run_source("shop")`` into a new warehouse, the table declared in a
  scratch sources file;
- ``sling full load``: Sling's ``sling run`` (full refresh) into a new DuckDB file, offline (the
  ``sling`` dependency group; without it these rows are skipped).

Then tributary's incremental runs: after updating 1% of the rows, and with no change — each
followed by Sling's incremental run (merge on ``order_id``, ``updated_at`` as update key) on
the same state of the table; and tributary's fixed cost: a no-change run of a one-row copy of
the table (what every run of a source pays whatever its size: dlt's configuration, state, schema
and bookkeeping, tributary's counts). Every Sling run is checked against the source afterwards.
One table of medians (wall seconds, rows/s, ratio to the limit, peak RSS of the child) is
printed, and as the last line of output the same figures as one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "tributary_bench"
COLUMNS = (
    "order_id, customer_id, store_id, ordered_at, status, subtotal_cents, tax_cents, "
    "total_cents, updated_at"
)
FULL_PATHS = ("limit", "dlt_default", "scanner", "tributary", "sling")
# The full load an incremental row is a share of (tributary's unless named here).
FULL_LOAD_OF = {"sling_1pct": "sling", "sling_nochange": "sling"}
LABELS = {
    "limit": "copy-binary limit",
    "dlt_default": "dlt sqlalchemy (default)",
    "scanner": "duckdb postgres scanner",
    "tributary": "tributary",
    "tributary_1pct": "tributary, 1% updated",
    "tributary_nochange": "tributary, no change",
    "tributary_1pct_keys_off": "… no key reconciliation",
    "tributary_nochange_keys_off": "… no change, no reconciliation",
    "tributary_fixed": "tributary fixed cost (1 row)",
    "sling": "sling full load",
    "sling_1pct": "sling, 1% updated",
    "sling_nochange": "sling, no change",
}


def database_url(admin_url: str) -> str:
    return admin_url.rsplit("/", 1)[0] + f"/{DATABASE}"


def make_source(admin_url: str, rows: int) -> None:
    """A new database with ``orders`` (the demo shop's columns and keys) of ``rows`` rows."""
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f"drop database if exists {DATABASE}")
        connection.execute(f"create database {DATABASE}")
    with psycopg.connect(database_url(admin_url), autocommit=True) as connection:
        connection.execute(
            """
            create table orders (
                order_id integer primary key, customer_id integer not null,
                store_id integer not null, ordered_at timestamp not null,
                status varchar(20) not null, subtotal_cents integer not null,
                tax_cents integer not null, total_cents integer not null,
                updated_at timestamp not null)
            """
        )
        # Stamps 5 s apart from 2020: 5M rows end in 2020-10, all in the past (a run quarantines
        # rows whose cursor lies beyond now, and would spend the bench doing that).
        connection.execute(
            """
            insert into orders
            select g, 1 + mod(g * 7919, 50000), 1 + mod(g, 6),
                timestamp '2020-01-01' + g * interval '5 seconds',
                (array['placed', 'shipped', 'completed', 'returned', 'cancelled'])[1 + mod(g, 5)],
                1000 + mod(g * 31, 90000), mod(g * 31, 9000), 1000 + mod(g * 31, 90000)
                    + mod(g * 31, 9000),
                timestamp '2020-01-01' + g * interval '5 seconds'
            from generate_series(1::bigint, %s) g
            """,
            [rows],
        )
        connection.execute("create index ix_orders_updated_at on orders (updated_at)")
        connection.execute("vacuum analyze orders")
        # the fixed cost's table: one row, the same declaration
        connection.execute(
            "create table tiny_orders (like orders including all); "
            "insert into tiny_orders select * from orders where order_id = 1"
        )


def update_one_percent(admin_url: str, rows: int, round_: int) -> int:
    """Moves 1% of the orders (spread over the table) to a new status, stamped 15 minutes
    after the newest change — the incremental deployment's interval, so a run's lag window
    (5 minutes) holds this update only, as it would in production."""
    with psycopg.connect(database_url(admin_url), autocommit=True) as connection:
        cursor = connection.execute(
            "update orders set status = 'returned', updated_at = "
            "(select max(updated_at) from orders) + interval '15 minutes' "
            "where mod(order_id, 100) = %s",
            [round_ % 100],
        )
        return cursor.rowcount


# --- one measurement, in a child process --------------------------------------------------


def _run_limit(url: str, _: Path) -> int:
    rows = 0
    with psycopg.connect(url) as connection, connection.cursor() as cursor:
        with cursor.copy(f"copy (select {COLUMNS} from orders) to stdout (format binary)") as copy:
            for _block in copy:
                pass
        rows = cursor.rowcount
    return rows


def _run_dlt_default(url: str, work: Path) -> int:
    import dlt
    from dlt.sources.sql_database import sql_database

    pipeline = dlt.pipeline(
        pipeline_name="bench_dlt_default",
        pipelines_dir=str(work / "pipelines"),
        destination=dlt.destinations.duckdb(str(work / "dlt.duckdb")),
        dataset_name="raw",
    )
    url = url.replace("postgresql://", "postgresql+psycopg://")
    pipeline.run(sql_database(credentials=url, table_names=["orders"]))
    return pipeline.last_trace.last_normalize_info.row_counts["orders"]


def _run_scanner(url: str, work: Path) -> int:
    import duckdb

    extensions = Path(duckdb.__file__).parent.parent / "duckdb_ext" / "extensions"
    with duckdb.connect(str(work / "scanner.duckdb")) as connection:
        connection.execute(f"set extension_directory = '{extensions}'")
        connection.execute("load postgres")
        connection.execute(f"attach '{url}' as source (type postgres, read_only)")
        connection.execute(f"create table orders as select {COLUMNS} from source.public.orders")
        return connection.sql("select count(*) from orders").fetchone()[0]


def _sources_file(url: str, work: Path, table: str = "orders") -> Path:
    """The table declared as a team would: merged on its key, incremental on `updated_at`."""
    import yaml

    path = work / "sources.yml"
    declaration = {
        "type": "sql_database",
        "credentials": url,
        "defaults": {"mode": "merge", "cursor": "updated_at", "lag": 300},
        "tables": {table: None},
    }
    path.write_text(yaml.safe_dump({"sources": {"shop": declaration}}))
    return path


def _run_tributary(
    url: str, work: Path, *, reconcile_deletes: bool = True, table: str = "orders"
) -> int:
    from ingestion.pipeline import run_source
    from tributary.settings import Settings

    settings = Settings(data_dir=work / "tributary", sources_file=_sources_file(url, work, table))
    load = run_source("shop", settings, reconcile_deletes=reconcile_deletes)
    [orders] = load.tables
    return orders.loaded


def _run_tributary_tiny(url: str, work: Path) -> int:
    """The one-row table, keys reconciled (the daily deployment's run)."""
    return _run_tributary(url, work, table="tiny_orders")


def _run_tributary_keys_off(url: str, work: Path) -> int:
    """As the every-15-minutes deployment runs it: hard deletes wait for the daily run."""
    return _run_tributary(url, work, reconcile_deletes=False)


def _sling_tools() -> dict[str, Path] | None:
    """Sling's binary, the DuckDB CLI it writes through and the extensions that CLI loads (all
    from the `sling` dependency group, for this DuckDB); None where they are not installed."""
    packages = Path(sysconfig.get_path("purelib"))
    tools = {
        "sling": packages / "sling_linux_amd64" / "bin" / "sling-linux-amd64",
        "duckdb": Path(sysconfig.get_path("scripts")) / "duckdb",
        "extensions": packages / "duckdb_ext" / "extensions",
    }
    httpfs = tools["extensions"].glob(f"v{metadata.version('duckdb')}/*/httpfs.duckdb_extension")
    return tools if tools["sling"].exists() and tools["duckdb"].exists() and any(httpfs) else None


def _peak_rss_of_tree(pid: int) -> int:
    """The sum of the peak RSS (KiB) of a process and its descendants still running."""
    total = 0
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        total += int(status.split("VmHWM:")[1].split()[0])
        for task in Path(f"/proc/{pid}/task").iterdir():
            for descendant in (task / "children").read_text().split():
                total += _peak_rss_of_tree(int(descendant))
    except (OSError, IndexError):
        pass  # ended meanwhile
    return total


def _run_sling(url: str, work: Path, mode: str = "full-refresh") -> dict[str, float]:
    """`sling run` of `orders` into `work/sling.duckdb`, offline: Sling writes through the DuckDB
    CLI it is pointed at (else it downloads one), which reads Sling's stream with httpfs from
    its default extension directory (here the installed extensions, under a home of its own),
    and Sling sends no telemetry. Returns the rows Sling reports it wrote and the peak RSS of
    Sling and its DuckDB CLI together (sampled every 20 ms): the kernel's figure for the child
    would be the larger of the two processes only."""
    import yaml

    tools = _sling_tools()
    if tools is None:
        raise SystemExit("bench: Sling is not installed (uv sync --frozen --group sling)")
    home = work / "home"
    (home / ".duckdb").mkdir(parents=True, exist_ok=True)
    if not (home / ".duckdb" / "extensions").exists():
        (home / ".duckdb" / "extensions").symlink_to(tools["extensions"])
    defaults: dict[str, Any] = {"mode": mode}
    if mode == "incremental":
        defaults |= {"primary_key": ["order_id"], "update_key": "updated_at"}
    replication = work / f"sling-{mode}.yaml"
    replication.write_text(
        yaml.safe_dump(
            {
                "source": "PG",
                "target": "DUCK",
                "defaults": defaults,
                "streams": {"public.orders": {"object": "main.orders"}},
            }
        )
    )
    environment = {
        **os.environ,
        "PG": url + ("&" if "?" in url else "?") + "sslmode=disable",
        "DUCK": f"duckdb://{work / 'sling.duckdb'}",
        "DUCKDB_PATH": str(tools["duckdb"]),
        "DUCKDB_VERSION": metadata.version("duckdb"),
        "DUCKDB_USE_INSTALLED_EXTENSIONS": "true",
        "HOME": str(home),
        "SLING_HOME_DIR": str(home / ".sling"),
        "SLING_DISABLE_TELEMETRY": "true",
    }
    log = work / f"sling-{mode}.log"
    peak_kib = 0
    with log.open("w") as output:
        process = subprocess.Popen(
            [tools["sling"], "run", "-r", str(replication)],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        while process.poll() is None:
            peak_kib = max(peak_kib, _peak_rss_of_tree(process.pid))
            time.sleep(0.02)
    said = log.read_text()
    if process.returncode != 0:
        raise SystemExit(f"bench: sling {mode} failed (exit {process.returncode}):\n{said}")
    inserted = re.findall(r"inserted (\d+) rows into", said)
    if len(inserted) != 1:
        raise SystemExit(f"bench: sling {mode} did not say how many rows it wrote:\n{said}")
    return {"rows": int(inserted[0]), "rss_mib": peak_kib / 1024}


def _run_sling_incremental(url: str, work: Path) -> dict[str, float]:
    return _run_sling(url, work, mode="incremental")


RUNNERS = {
    "limit": _run_limit,
    "dlt_default": _run_dlt_default,
    "scanner": _run_scanner,
    "tributary": _run_tributary,
    "tributary_keys_off": _run_tributary_keys_off,
    "tributary_tiny": _run_tributary_tiny,
    "sling": _run_sling,
    "sling_incremental": _run_sling_incremental,
}


# Imported before the clock starts: a path is timed on its work, not on Python's imports.
IMPORTS = {
    "limit": (),
    "dlt_default": ("dlt", "dlt.sources.sql_database"),
    "scanner": ("duckdb",),
    "tributary": ("ingestion.pipeline", "tributary.settings"),
    "tributary_keys_off": ("ingestion.pipeline", "tributary.settings"),
    "tributary_tiny": ("ingestion.pipeline", "tributary.settings"),
    "sling": ("yaml",),
    "sling_incremental": ("yaml",),
}


def child(path: str, url: str, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for module in IMPORTS[path]:
        importlib.import_module(module)
    started = time.perf_counter()
    outcome = RUNNERS[path](url, work)
    seconds = time.perf_counter() - started
    # A runner whose load runs in processes of its own measures their memory itself.
    result = outcome if isinstance(outcome, dict) else {"rows": outcome}
    print(json.dumps({"seconds": seconds, **result}))


def measure(path: str, url: str, work: Path) -> dict[str, float]:
    """Runs one path in a child process: its own timing, and its peak RSS from the kernel (or as
    its runner measured it)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.sql_to_duckdb", "--child", path, "--url", url, str(work)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"bench: {path} failed (exit {process.returncode})")
    result = json.loads(output.strip().splitlines()[-1])
    result.setdefault("rss_mib", usage.ru_maxrss / 1024)
    return result


# --- the benchmark --------------------------------------------------------------------------


def _have_scanner() -> bool:
    import duckdb

    extensions = Path(duckdb.__file__).parent.parent / "duckdb_ext" / "extensions"
    return any(extensions.glob(f"v{duckdb.__version__}/*/postgres_scanner.duckdb_extension"))


def check_sling(admin_url: str, work: Path, reported: int, expected: int) -> None:
    """Raises unless Sling's DuckDB file holds what the source holds (its rows, how many are
    `returned`, the newest change) and Sling reported writing the rows it should have."""
    import duckdb

    query = (
        "select count(*), count(*) filter (where status = 'returned'), max(updated_at) from orders"
    )
    with psycopg.connect(database_url(admin_url)) as connection:
        source = connection.execute(query).fetchone()
    with duckdb.connect(str(work / "sling.duckdb"), read_only=True) as connection:
        copy = connection.execute(query).fetchone()
    if copy != source or reported != expected:
        raise SystemExit(
            f"bench: Sling's copy (rows, returned, newest change) is {copy}, the source's "
            f"{source}; Sling reported writing {reported:,} rows, {expected:,} expected"
        )


def run(
    rows: int, repeats: int, admin_url: str, console: Console, skip: Sequence[str] = ()
) -> dict[str, Any]:
    url = database_url(admin_url)
    console.print(f"Making {rows:,} orders in PostgreSQL database {DATABASE} …")
    make_source(admin_url, rows)
    sling = "sling" not in skip and _sling_tools() is not None
    if "sling" not in skip and not sling:
        console.print(
            "Sling rows skipped, Sling not installed: make bench installs it "
            "(.uv/bin/uv sync --frozen --group sling).",
            soft_wrap=True,
        )
    paths = [
        path
        for path in FULL_PATHS
        if path not in skip
        and (path != "scanner" or _have_scanner())
        and (path != "sling" or sling)
    ]
    samples: dict[str, list[dict[str, float]]] = {path: [] for path in paths}
    incremental = {
        "tributary_1pct": "tributary",
        "tributary_nochange": "tributary",
        "tributary_1pct_keys_off": "tributary_keys_off",
        "tributary_nochange_keys_off": "tributary_keys_off",
    }
    # Sling's incremental runs follow tributary's on the same state of the table: right after
    # the same 1% update, then with no change since.
    sling_after = (
        {"tributary_1pct": "sling_1pct", "tributary_nochange": "sling_nochange"} if sling else {}
    )
    samples.update({kind: [] for kind in incremental})
    samples.update({kind: [] for kind in sling_after.values()})
    changed: list[int] = []

    def record(round_: int, kind: str, result: dict[str, float]) -> None:
        samples[kind].append(result)
        console.print(
            f"  round {round_ + 1} {LABELS[kind]:<26} {result['seconds']:7.2f} s "
            f"{result['rows']:>10,} rows  {result['rss_mib']:6.0f} MiB"
        )

    with tempfile.TemporaryDirectory(prefix="tributary-bench-") as tmp:
        for round_ in range(repeats):
            for path in paths:
                work = Path(tmp) / f"{path}-{round_}"
                result = measure(path, url, work)
                if path == "sling":
                    check_sling(admin_url, work, int(result["rows"]), rows)
                record(round_, path, result)
                if path not in ("tributary", "sling"):
                    shutil.rmtree(work, ignore_errors=True)
        # Incremental runs on the last full load's warehouse and state (Sling's: its file).
        work = Path(tmp) / f"tributary-{repeats - 1}"
        sling_work = Path(tmp) / f"sling-{repeats - 1}"
        for round_ in range(repeats):
            if sling:
                # Untimed: Sling takes in the update made since its last run (none the first
                # time, its first incremental run), so each timed run below sees one update.
                result = measure("sling_incremental", url, sling_work)
                check_sling(
                    admin_url, sling_work, int(result["rows"]), changed[-1] if changed else 0
                )
            for kind, path in incremental.items():
                if "1pct" in kind:
                    changed.append(update_one_percent(admin_url, rows, len(changed)))
                record(round_, kind, measure(path, url, work))
                if kind in sling_after:
                    result = measure("sling_incremental", url, sling_work)
                    expected = changed[-1] if "1pct" in kind else 0
                    check_sling(admin_url, sling_work, int(result["rows"]), expected)
                    record(round_, sling_after[kind], result)
        # The fixed cost: no-change runs of the one-row table, after its first load.
        work = Path(tmp) / "tiny"
        measure("tributary_tiny", url, work)
        samples["tributary_fixed"] = []
        for round_ in range(repeats):
            result = measure("tributary_tiny", url, work)
            samples["tributary_fixed"].append(result)
            console.print(
                f"  round {round_ + 1} {LABELS['tributary_fixed']:<26} {result['seconds']:7.2f} s"
            )
    return summarise(rows, samples, changed)


def summarise(
    rows: int, samples: dict[str, list[dict[str, float]]], changed: list[int]
) -> dict[str, Any]:
    limit = statistics.median(sample["seconds"] for sample in samples["limit"])
    full_loads = {
        path: statistics.median(sample["seconds"] for sample in samples[path])
        for path in FULL_PATHS
        if path in samples
    }
    figures: dict[str, Any] = {"rows": rows, "rows_changed_1pct": changed[-1], "paths": {}}
    for path, runs in samples.items():
        seconds = statistics.median(sample["seconds"] for sample in runs)
        full = full_loads[FULL_LOAD_OF.get(path, "tributary")]
        figures["paths"][path] = {
            "seconds": round(seconds, 3),
            "runs": len(runs),
            "rows_per_second": round(rows / seconds) if path in FULL_PATHS else None,
            "ratio_to_limit": round(limit / seconds, 3) if path in FULL_PATHS else None,
            "share_of_full_load": round(seconds / full, 3) if path not in FULL_PATHS else None,
            "peak_rss_mib": round(max(sample["rss_mib"] for sample in runs)),
        }
    tributary, default = figures["paths"]["tributary"], figures["paths"].get("dlt_default")
    figures["tributary_vs_dlt_default"] = (
        round(default["seconds"] / tributary["seconds"], 2) if default else None
    )
    # Sling's wall time over tributary's, run for run.
    pairs = {
        "full_load": ("sling", "tributary"),
        "1pct": ("sling_1pct", "tributary_1pct"),
        "no_change": ("sling_nochange", "tributary_nochange"),
    }
    figures["sling_vs_tributary"] = (
        {
            name: round(figures["paths"][sling]["seconds"] / figures["paths"][ours]["seconds"], 2)
            for name, (sling, ours) in pairs.items()
        }
        if "sling" in figures["paths"]
        else None
    )
    return figures


def print_table(figures: dict[str, Any], console: Console) -> None:
    table = Table(title=f"PostgreSQL → DuckDB, {figures['rows']:,} rows (medians)")
    for column in ("path", "wall s", "rows/s", "x limit", "of full load", "peak RSS MiB"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for path, row in figures["paths"].items():
        table.add_row(
            LABELS[path],
            f"{row['seconds']:.2f}",
            f"{row['rows_per_second']:,}" if row["rows_per_second"] else "",
            f"{row['ratio_to_limit']:.2f}" if row["ratio_to_limit"] else "",
            f"{row['share_of_full_load']:.1%}" if row["share_of_full_load"] else "",
            f"{row['peak_rss_mib']:,}",
        )
    console.print(table)
    if figures["tributary_vs_dlt_default"]:
        console.print(f"tributary is {figures['tributary_vs_dlt_default']}x dlt's default backend.")
    if figures["sling_vs_tributary"]:
        ratios = figures["sling_vs_tributary"]
        console.print(
            f"Sling's time over tributary's: full load {ratios['full_load']}x, "
            f"1% updated {ratios['1pct']}x, no change {ratios['no_change']}x.",
            soft_wrap=True,
        )
    console.print(f"Each 1% update touched {figures['rows_changed_1pct']:,} rows.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="orders rows (5000000 too)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per path (median)")
    parser.add_argument("--admin-url", default=ADMIN_URL, help="PostgreSQL server (libpq URL)")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["dlt_default", "scanner", "sling"],
        help="leave a comparison out (dlt's default takes ~200 s per million rows)",
    )
    parser.add_argument("--child", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("work", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.work)
        return
    console = Console(stderr=False)
    figures = run(args.rows, args.repeats, args.admin_url, console, args.skip)
    print_table(figures, console)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
