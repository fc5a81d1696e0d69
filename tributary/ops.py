"""Run history in the warehouse: `ops.pipeline_runs` (one row per flow run) and
`ops.table_loads` (one row per raw table per run), so freshness and volume are plain SQL."""

from __future__ import annotations

from datetime import datetime

import duckdb

from tributary.lock import warehouse_lock
from tributary.report import RunReport
from tributary.settings import Settings

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
    loaded_at timestamptz not null,
    primary key (flow_run_id, dataset, table_name)
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
) -> None:
    """Write one run's facts in one transaction; a retried run replaces its earlier rows."""
    dbt = report.dbt
    with (
        warehouse_lock(settings),
        duckdb.connect(str(settings.warehouse)) as warehouse,
    ):
        warehouse.execute(DDL)
        warehouse.execute("begin")
        warehouse.execute("delete from ops.table_loads where flow_run_id = ?", [flow_run_id])
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
                finished_at,
            ]
            for load in report.loads
            for table in load.tables
        ]
        if rows:
            warehouse.executemany(
                "insert into ops.table_loads values (?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
        warehouse.execute("commit")


_ALL = {"model", "test", "seed", "snapshot", "unit_test"}
