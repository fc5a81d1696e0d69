"""PostgreSQL → DuckDB: tributary's shop path against the COPY limit and dlt's default backend.

``make bench`` (or ``python -m bench.sql_to_duckdb --rows 5000000``). An orders-like table of
N rows is made in a throwaway PostgreSQL database; then, interleaved (A B C D A B C D …), each
path runs in its own child process, which times only the load (not interpreter start):

- ``copy-binary limit``: ``COPY (SELECT …) TO STDOUT (FORMAT binary)`` read fully, discarded;
- ``dlt sqlalchemy (default)``: ``sql_database`` as a user would configure it, into DuckDB;
- ``duckdb postgres scanner``: ATTACH + CREATE TABLE AS (needs ``duckdb-ext-postgres``);
- ``tributary``: ``run_source("shop")`` into a new warehouse, the table declared in a
  scratch sources file.

Then tributary's incremental runs: after updating 1% of the rows, and with no change; and its
fixed cost: a no-change run of a one-row copy of the table (what every run of a source pays
whatever its size: dlt's configuration, state, schema and bookkeeping, tributary's counts). One
table of medians (wall seconds, rows/s, ratio to the limit, peak RSS of the child) is printed,
and as the last line of output the same figures as one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
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
FULL_PATHS = ("limit", "dlt_default", "scanner", "tributary")
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


RUNNERS = {
    "limit": _run_limit,
    "dlt_default": _run_dlt_default,
    "scanner": _run_scanner,
    "tributary": _run_tributary,
    "tributary_keys_off": _run_tributary_keys_off,
    "tributary_tiny": _run_tributary_tiny,
}


# Imported before the clock starts: a path is timed on its work, not on Python's imports.
IMPORTS = {
    "limit": (),
    "dlt_default": ("dlt", "dlt.sources.sql_database"),
    "scanner": ("duckdb",),
    "tributary": ("ingestion.pipeline", "tributary.settings"),
    "tributary_keys_off": ("ingestion.pipeline", "tributary.settings"),
    "tributary_tiny": ("ingestion.pipeline", "tributary.settings"),
}


def child(path: str, url: str, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for module in IMPORTS[path]:
        importlib.import_module(module)
    started = time.perf_counter()
    rows = RUNNERS[path](url, work)
    print(json.dumps({"seconds": time.perf_counter() - started, "rows": rows}))


def measure(path: str, url: str, work: Path) -> dict[str, float]:
    """Runs one path in a child process: its own timing, and its peak RSS from the kernel."""
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
    result["rss_mib"] = usage.ru_maxrss / 1024
    return result


# --- the benchmark --------------------------------------------------------------------------


def _have_scanner() -> bool:
    import duckdb

    extensions = Path(duckdb.__file__).parent.parent / "duckdb_ext" / "extensions"
    return any(extensions.glob(f"v{duckdb.__version__}/*/postgres_scanner.duckdb_extension"))


def run(
    rows: int, repeats: int, admin_url: str, console: Console, skip: Sequence[str] = ()
) -> dict[str, Any]:
    url = database_url(admin_url)
    console.print(f"Making {rows:,} orders in PostgreSQL database {DATABASE} …")
    make_source(admin_url, rows)
    paths = [
        path for path in FULL_PATHS if path not in skip and (path != "scanner" or _have_scanner())
    ]
    samples: dict[str, list[dict[str, float]]] = {path: [] for path in paths}
    incremental = {
        "tributary_1pct": "tributary",
        "tributary_nochange": "tributary",
        "tributary_1pct_keys_off": "tributary_keys_off",
        "tributary_nochange_keys_off": "tributary_keys_off",
    }
    samples.update({kind: [] for kind in incremental})
    changed: list[int] = []
    with tempfile.TemporaryDirectory(prefix="tributary-bench-") as tmp:
        for round_ in range(repeats):
            for path in paths:
                work = Path(tmp) / f"{path}-{round_}"
                result = measure(path, url, work)
                samples[path].append(result)
                console.print(
                    f"  round {round_ + 1} {LABELS[path]:<26} {result['seconds']:7.2f} s "
                    f"{result['rows']:>10,} rows  {result['rss_mib']:6.0f} MiB"
                )
                if path != "tributary":
                    shutil.rmtree(work, ignore_errors=True)
        # Incremental runs on the last full load's warehouse and state.
        work = Path(tmp) / f"tributary-{repeats - 1}"
        for round_ in range(repeats):
            for kind, path in incremental.items():
                if "1pct" in kind:
                    changed.append(update_one_percent(admin_url, rows, len(changed)))
                result = measure(path, url, work)
                samples[kind].append(result)
                console.print(
                    f"  round {round_ + 1} {LABELS[kind]:<26} {result['seconds']:7.2f} s "
                    f"{result['rows']:>10,} rows  {result['rss_mib']:6.0f} MiB"
                )
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
    full = statistics.median(sample["seconds"] for sample in samples["tributary"])
    figures: dict[str, Any] = {"rows": rows, "rows_changed_1pct": changed[-1], "paths": {}}
    for path, runs in samples.items():
        seconds = statistics.median(sample["seconds"] for sample in runs)
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
        choices=["dlt_default", "scanner"],
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
