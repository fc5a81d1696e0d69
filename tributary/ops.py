"""Run history in the warehouse: `ops.pipeline_runs` (one row per flow run) and
`ops.table_loads` (one row per raw table per run), so freshness and volume are plain SQL."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb

from tributary.lock import warehouse_lock
from tributary.report import Freshness, RunReport
from tributary.settings import Settings
from tributary.warehouse import check_warehouse

DDL = """
create schema if not exists ops;
create table if not exists ops.pipeline_runs (
    flow_run_id varchar primary key,
    flow_name varchar not null,
    deployment varchar,
    status varchar not null,
    error varchar,
    started_at timestamptz not null,
    finished_at timestamptz not null,
    rows_loaded bigint not null,
    dbt_nodes_passed bigint,
    dbt_nodes_failed bigint,
    dbt_nodes_skipped bigint
);
create table if not exists ops.table_loads (
    flow_run_id varchar not null,
    dataset varchar not null,
    table_name varchar not null,
    load_ids varchar[] not null,
    rows_loaded bigint not null,
    rows_new bigint not null,
    rows_updated bigint not null,
    rows_deleted bigint not null default 0,
    loaded_at timestamptz not null,
    primary key (flow_run_id, dataset, table_name)
);
-- warehouses made before deletes were counted, and before rows were quarantined
alter table ops.table_loads add column if not exists rows_deleted bigint default 0;
alter table ops.table_loads add column if not exists rows_quarantined bigint default 0;
create table if not exists ops.schema_changes (
    flow_run_id varchar not null,
    dataset varchar not null,
    table_name varchar not null,
    column_name varchar not null,
    change varchar not null,
    detail varchar not null,
    detected_at timestamptz not null
);
"""


def record_run(
    settings: Settings,
    *,
    flow_run_id: str,
    flow_name: str,
    deployment: str | None,
    status: str,
    error: str | None,
    started_at: datetime,
    finished_at: datetime,
    report: RunReport,
) -> list[Freshness]:
    """Write one run's facts in one transaction; a retried run replaces its earlier rows.

    Returns each raw dataset's freshness, read in the same connection (a reader cannot open
    the file while a writer holds it)."""
    dbt = report.dbt
    with (
        warehouse_lock(settings),
        duckdb.connect(str(check_warehouse(settings))) as warehouse,
    ):
        warehouse.execute(DDL)
        warehouse.execute("begin")
        warehouse.execute("delete from ops.table_loads where flow_run_id = ?", [flow_run_id])
        warehouse.execute("delete from ops.schema_changes where flow_run_id = ?", [flow_run_id])
        changes = [
            [
                flow_run_id,
                load.dataset,
                change.table,
                change.column,
                change.change,
                change.detail,
                finished_at,
            ]
            for load in report.loads
            for change in load.schema_changes
        ]
        if changes:
            warehouse.executemany(
                "insert into ops.schema_changes values (?, ?, ?, ?, ?, ?, ?)", changes
            )
        warehouse.execute("delete from ops.pipeline_runs where flow_run_id = ?", [flow_run_id])
        warehouse.execute(
            "insert into ops.pipeline_runs values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                flow_run_id,
                flow_name,
                deployment,
                status,
                error,
                started_at,
                finished_at,
                sum(load.rows_loaded for load in report.loads),
                dbt.count(_ALL, {"success", "pass"}) if dbt else None,
                dbt.count(_ALL, {"error", "fail"}) if dbt else None,
                dbt.count(_ALL, {"skipped"}) if dbt else None,
            ],
        )
        rows = [
            [
                flow_run_id,
                load.dataset,
                table.table,
                load.load_ids,
                table.loaded,
                table.new,
                table.updated,
                table.deleted,
                table.quarantined,
                finished_at,
            ]
            for load in report.loads
            for table in load.tables
        ]
        if rows:
            warehouse.executemany(
                "insert into ops.table_loads (flow_run_id, dataset, table_name, load_ids, "
                "rows_loaded, rows_new, rows_updated, rows_deleted, rows_quarantined, loaded_at) "
                "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        warehouse.execute("commit")
        return _freshness(warehouse, finished_at)


def _freshness(warehouse: duckdb.DuckDBPyConnection, now: datetime) -> list[Freshness]:
    """Last completed dlt load per raw dataset (status 0 in its ``_dlt_loads``)."""
    datasets = warehouse.execute(
        "select schema_name from duckdb_tables() where table_name = '_dlt_loads' "
        "and schema_name like 'raw\\_%' escape '\\' order by 1"
    ).fetchall()
    result = []
    for (dataset,) in datasets:
        [(last,)] = warehouse.execute(
            f'select max(inserted_at) from "{dataset}"._dlt_loads where status = 0'
        ).fetchall()
        if last is not None and last.tzinfo is None:
            last = last.replace(tzinfo=UTC)
        result.append(Freshness(dataset=dataset, last_loaded_at=last, checked_at=now))
    return result


_ALL = {"model", "test", "seed", "snapshot", "unit_test"}
