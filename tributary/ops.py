"""Run history in the warehouse: `ops.pipeline_runs` (one row per flow run) and
`ops.table_loads` (one row per raw table per run), so freshness and volume are plain SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class TableRow:
    """One row of ``ops.table_loads``: what one run did to one raw table."""

    dataset: str
    table_name: str
    load_ids: list[str]
    rows_loaded: int
    rows_new: int
    rows_updated: int
    rows_deleted: int
    rows_quarantined: int = 0


@dataclass(frozen=True)
class SchemaChangeRow:
    """One row of ``ops.schema_changes``: a source column that changed, found by one run."""

    dataset: str
    table_name: str
    column_name: str
    change: str
    detail: str


@dataclass(frozen=True)
class RunRow:
    """One row of ``ops.pipeline_runs`` with its ``ops.table_loads`` and ``ops.schema_changes``
    rows, as plain values: a run whose history could not be written keeps them in its journal."""

    flow_run_id: str
    flow_name: str
    deployment: str | None
    status: str
    error: str | None
    started_at: datetime
    finished_at: datetime
    rows_loaded: int = 0
    dbt_nodes_passed: int | None = None
    dbt_nodes_failed: int | None = None
    dbt_nodes_skipped: int | None = None
    tables: list[TableRow] = field(default_factory=list)
    schema_changes: list[SchemaChangeRow] = field(default_factory=list)


def run_row(
    *,
    flow_run_id: str,
    flow_name: str,
    deployment: str | None,
    status: str,
    error: str | None,
    started_at: datetime,
    finished_at: datetime,
    report: RunReport,
) -> RunRow:
    """The history rows of one run, from its report."""
    dbt = report.dbt
    return RunRow(
        flow_run_id=flow_run_id,
        flow_name=flow_name,
        deployment=deployment,
        status=status,
        error=error,
        started_at=started_at,
        finished_at=finished_at,
        rows_loaded=sum(load.rows_loaded for load in report.loads),
        dbt_nodes_passed=dbt.count(_ALL, {"success", "pass"}) if dbt else None,
        dbt_nodes_failed=dbt.count(_ALL, {"error", "fail"}) if dbt else None,
        dbt_nodes_skipped=dbt.count(_ALL, {"skipped"}) if dbt else None,
        tables=[
            TableRow(
                dataset=load.dataset,
                table_name=table.table,
                load_ids=load.load_ids,
                rows_loaded=table.loaded,
                rows_new=table.new,
                rows_updated=table.updated,
                rows_deleted=table.deleted,
                rows_quarantined=table.quarantined,
            )
            for load in report.loads
            for table in load.tables
        ],
        schema_changes=[
            SchemaChangeRow(
                dataset=load.dataset,
                table_name=change.table,
                column_name=change.column,
                change=change.change,
                detail=change.detail,
            )
            for load in report.loads
            for change in load.schema_changes
        ],
    )


def write_runs(settings: Settings, rows: list[RunRow], *, now: datetime) -> list[Freshness]:
    """Write runs' facts in one transaction; a run written before has its rows replaced.

    Returns each raw dataset's freshness as of ``now``, read in the same connection (a reader
    cannot open the file while a writer holds it)."""
    with (
        warehouse_lock(settings),
        duckdb.connect(str(check_warehouse(settings))) as warehouse,
    ):
        warehouse.execute(DDL)
        warehouse.execute("begin")
        for row in rows:
            for table in ("table_loads", "schema_changes"):
                warehouse.execute(
                    f"delete from ops.{table} where flow_run_id = ?", [row.flow_run_id]
                )
            warehouse.execute(
                "delete from ops.pipeline_runs where flow_run_id = ?", [row.flow_run_id]
            )
            warehouse.execute(
                "insert into ops.pipeline_runs values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    row.flow_run_id,
                    row.flow_name,
                    row.deployment,
                    row.status,
                    row.error,
                    row.started_at,
                    row.finished_at,
                    row.rows_loaded,
                    row.dbt_nodes_passed,
                    row.dbt_nodes_failed,
                    row.dbt_nodes_skipped,
                ],
            )
            if row.tables:
                warehouse.executemany(
                    "insert into ops.table_loads (flow_run_id, dataset, table_name, load_ids, "
                    "rows_loaded, rows_new, rows_updated, rows_deleted, rows_quarantined, "
                    "loaded_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        [
                            row.flow_run_id,
                            table.dataset,
                            table.table_name,
                            table.load_ids,
                            table.rows_loaded,
                            table.rows_new,
                            table.rows_updated,
                            table.rows_deleted,
                            table.rows_quarantined,
                            row.finished_at,
                        ]
                        for table in row.tables
                    ],
                )
            if row.schema_changes:
                warehouse.executemany(
                    "insert into ops.schema_changes values (?, ?, ?, ?, ?, ?, ?)",
                    [
                        [
                            row.flow_run_id,
                            change.dataset,
                            change.table_name,
                            change.column_name,
                            change.change,
                            change.detail,
                            row.finished_at,
                        ]
                        for change in row.schema_changes
                    ],
                )
        warehouse.execute("commit")
        return _freshness(warehouse, now)


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
