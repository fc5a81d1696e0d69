"""Runs one source into the warehouse and says what it changed there."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import dlt
from dlt.common.configuration.specs import ConnectionStringCredentials
from dlt.common.pipeline import LoadInfo
from dlt.extract import DltSource
from sqlalchemy.engine import URL

from ingestion.fx import fx
from ingestion.payments import payments
from ingestion.shop import bulk, database_url, shop
from ingestion.shop.keys import KeySnapshot, delete_missing
from ingestion.shop.keys import snapshot as key_snapshot
from ingestion.shop.settings import CURSOR_COLUMN, DELETED_COLUMN
from tributary.lock import file_lock, warehouse_lock
from tributary.settings import ConfigurationError, Settings
from tributary.warehouse import check_warehouse

SourceName = Literal["shop", "payments", "fx"]
SOURCE_NAMES: tuple[SourceName, ...] = ("shop", "payments", "fx")


@dataclass(frozen=True)
class TableLoad:
    """What one load did to one raw table: ``loaded`` rows written (re-read rows included),
    of which ``new`` keys and ``updated`` changed rows; ``deleted`` rows removed (soft deletes
    and keys gone from the source)."""

    table: str
    loaded: int
    new: int
    updated: int
    deleted: int = 0


@dataclass(frozen=True)
class SourceLoad:
    source: str
    dataset: str
    load_ids: list[str]
    tables: list[TableLoad] = field(default_factory=list)
    resumed: bool = False

    @property
    def rows_loaded(self) -> int:
        return sum(table.loaded for table in self.tables)


def dataset_name(source: SourceName) -> str:
    return f"raw_{source}"


def _shop_credentials(settings: Settings) -> str:
    """The shop database URL: ``TRIBUTARY_SHOP_URL``, else dlt's ``sources.shop.credentials``
    secret, else the SQLite file (which must exist)."""
    if settings.shop_url is not None:
        return settings.shop_connection_url
    secret = dlt.secrets.get("sources.shop.credentials")
    if secret is not None:
        credentials = ConnectionStringCredentials()
        if isinstance(secret, str):
            credentials.parse_native_representation(secret)
        else:
            credentials.update(secret)
        return credentials.to_native_representation()
    path = settings.shop_sqlite_path
    if not path.is_file():
        raise ConfigurationError(
            f"TRIBUTARY_SHOP_DB_PATH: no shop database at {path}. Generate the sample shop "
            "with `python -m demo generate`, or point TRIBUTARY_SHOP_URL at your database."
        )
    return settings.shop_connection_url


def _shop_source(settings: Settings, bulk_tables: Collection[str] = ()) -> DltSource:
    options = {"tables": settings.shop_tables} if settings.shop_tables else {}
    return shop(
        credentials=_shop_credentials(settings),
        lag_seconds=settings.shop_lag_seconds,
        bulk_tables=bulk_tables,
        **options,
    )


SOURCE_FACTORIES: dict[SourceName, Callable[[Settings], DltSource]] = {
    "shop": _shop_source,
    "payments": lambda settings: payments(base_url=settings.payments_api_url),
    "fx": lambda settings: fx(base_url=settings.fx_api_url),
}
# Sources whose tables mirror a database's: a table read whole replaces its warehouse copy.
MIRRORED_SOURCES: frozenset[SourceName] = frozenset({"shop"})
# Sources that take a backfill window: (ISO start, ISO end) over their incremental cursor.
WINDOWED_SOURCES: dict[SourceName, Callable[[Settings, tuple[str, str]], DltSource]] = {
    "payments": lambda settings, window: payments(
        base_url=settings.payments_api_url, window=window
    ),
    "fx": lambda settings, window: fx(base_url=settings.fx_api_url, window=window),
}


def make_pipeline(source: SourceName, settings: Settings) -> dlt.Pipeline:
    """One pipeline per source; its local state lives under the settings' data directory so
    separate warehouses (tests, environments) never share incremental state."""
    settings.warehouse.parent.mkdir(parents=True, exist_ok=True)
    return dlt.pipeline(
        pipeline_name=f"tributary_{source}",
        pipelines_dir=str(settings.pipelines_dir),
        destination=dlt.destinations.duckdb(str(settings.warehouse)),
        dataset_name=dataset_name(source),
    )


def _count_rows(
    pipeline: dlt.Pipeline, tables: list[str], load_ids: Sequence[str] | None = None
) -> dict[str, int]:
    """Rows per table now in the warehouse, or only those these loads inserted or replaced
    (counted in the warehouse, so right for a resumed load too). A table that does not exist
    yet counts 0."""
    if not tables or load_ids == []:
        return dict.fromkeys(tables, 0)
    with pipeline.sql_client() as client:
        existing = {
            row[0]
            for row in client.execute_sql(
                "select table_name from information_schema.columns "
                "where table_schema = %s and column_name = '_dlt_load_id'",
                client.dataset_name,
            )
        }
        where = f"where _dlt_load_id in ({', '.join(['%s'] * len(load_ids))})" if load_ids else ""
        return {
            table: client.execute_sql(
                f"select count(*) from {client.make_qualified_table_name(table)} {where}",
                *(load_ids or ()),
            )[0][0]
            if table in existing
            else 0
            for table in tables
        }


def _key_columns(pipeline: dlt.Pipeline, table: str) -> list[str]:
    columns = pipeline.default_schema.get_table_columns(table)
    return [name for name, column in columns.items() if column.get("primary_key")]


def _integer_key(pipeline: dlt.Pipeline, table: str) -> bool:
    columns = pipeline.default_schema.get_table_columns(table)
    keys = _key_columns(pipeline, table)
    return len(keys) == 1 and columns[keys[0]].get("data_type") == "bigint"


def _pending_parquet(pipeline: dlt.Pipeline) -> dict[str, list[str]]:
    """The parquet files per table that the normalised packages are about to load."""
    files: dict[str, list[str]] = {}
    for load_id in pipeline.list_normalized_load_packages():
        info = pipeline.get_load_package_info(load_id)
        for job in info.jobs.get("new_jobs", []):
            if job.job_file_info.file_format == "parquet":
                files.setdefault(job.job_file_info.table_name, []).append(job.file_path)
    return files


def _changes(
    pipeline: dlt.Pipeline, tables: list[str], *, refreshed: bool = False
) -> dict[str, tuple[int, int, int]]:
    """(new, updated, deleted) per table, read off the pending parquet files against the
    warehouse before they load: new keys, keys whose loaded columns differ, and flagged soft
    deletes of keys the warehouse holds. Rows re-read unchanged (the lag window) count in none.
    Tables without a primary key or without parquet files are left out. ``refreshed``: the
    load drops the tables first, so every row counts as new."""
    files = _pending_parquet(pipeline)
    changes: dict[str, tuple[int, int, int]] = {}
    with pipeline.sql_client() as client:
        existing = {
            row[0]
            for row in client.execute_sql(
                "select table_name from information_schema.tables where table_schema = %s",
                client.dataset_name,
            )
        }
        for table in tables:
            keys = _key_columns(pipeline, table)
            if not keys or table not in files:
                continue
            columns = pipeline.default_schema.get_table_columns(table)
            flagged = [name for name, column in columns.items() if column.get("hard_delete")]
            paths = ", ".join("'" + path.replace("'", "''") + "'" for path in files[table])
            package = f"read_parquet([{paths}], union_by_name = true)"
            deleted_flag = " or ".join(f"p.{name} is not null" for name in flagged) or "false"
            key_list = ", ".join(keys)
            if refreshed or table not in existing:
                [(new,)] = client.execute_sql(
                    f"select count(*) from (select distinct {key_list} from {package} p "
                    f"where not ({deleted_flag}))"
                )
                changes[table] = (new, 0, 0)
                continue
            raw = client.make_qualified_table_name(table)
            in_raw = {
                row[0]
                for row in client.execute_sql(
                    "select column_name from information_schema.columns "
                    "where table_schema = %s and table_name = %s",
                    client.dataset_name,
                    table,
                )
            }
            shared = [
                row[0]
                for row in client.execute_sql(f"describe select * from {package}")
                if row[0] in in_raw and not row[0].startswith("_dlt_")
            ]
            differs = " or ".join(f"p.{name} is distinct from r.{name}" for name in shared)
            on = " and ".join(f"p.{key} = r.{key}" for key in keys)
            [(new, updated, deleted)] = client.execute_sql(
                f"""
                select
                    count(distinct ({key_list})) filter (where r_key is null and not gone),
                    count(distinct ({key_list})) filter (where r_key is not null and not gone
                        and changed),
                    count(distinct ({key_list})) filter (where r_key is not null and gone)
                from (
                    select {", ".join(f"p.{key}" for key in keys)},
                        r.{keys[0]} as r_key,
                        ({deleted_flag}) as gone,
                        ({differs or "false"}) as changed
                    from {package} p left join {raw} r on {on}
                )
                """
            )
            changes[table] = (new, updated, deleted)
    return changes


def _reconcile(pipeline: dlt.Pipeline, snapshots: Sequence[KeySnapshot]) -> dict[str, int]:
    """Deletes the warehouse rows whose key the source no longer holds (hard deletes). The
    snapshots were read after extraction, so every key loaded now was in them unless it has
    since been deleted. Returns rows deleted per table."""
    with pipeline.sql_client() as client:
        return {
            snap.table: delete_missing(
                client.native_connection, client.make_qualified_table_name(snap.table), snap
            )
            for snap in snapshots
        }


def _loaded_rows(pipeline: dlt.Pipeline) -> dict[str, int]:
    """Rows normalised per data table in this run (dlt's own tables left out)."""
    trace = pipeline.last_trace
    info = trace.last_normalize_info if trace else None
    counts = info.row_counts if info else {}
    return {table: rows for table, rows in counts.items() if not table.startswith("_dlt")}


def _full_reads(pipeline: dlt.Pipeline, dlt_source: DltSource, refresh: str | None) -> set[str]:
    """The tables this run reads whole: refreshed, or with no incremental state yet."""
    selected = set(dlt_source.resources.selected)
    if refresh:
        return selected
    state = pipeline.state.get("sources", {}).get(dlt_source.name, {}).get("resources", {})
    return {table for table in selected if not state.get(table, {}).get("incremental")}


def _bulk_eligible(dlt_source: DltSource, full_reads: set[str]) -> set[str]:
    """Whole-table reads that can stream: those with a primary key."""
    return {
        table
        for table in full_reads
        if any(
            column.get("primary_key")
            for column in dlt_source.resources[table].compute_table_schema()["columns"].values()
        )
    }


def _bulk_reads(pipeline: dlt.Pipeline, source_name: str, tables: set[str]) -> list[bulk.BulkRead]:
    """What to stream after the load: per table, the rows below the cursor dlt just set."""
    [load_id] = pipeline.list_normalized_load_packages()[-1:]
    resources = pipeline.state.get("sources", {}).get(source_name, {}).get("resources", {})
    reads = []
    for table in sorted(tables):
        cursor = resources.get(table, {}).get("incremental", {}).get(CURSOR_COLUMN, {})
        if cursor.get("last_value") is None:  # an empty table: nothing below
            continue
        reads.append(
            bulk.BulkRead(
                table=table,
                load_id=load_id,
                below=bulk.cursor_value(cursor["last_value"]),
                keys=_key_columns(pipeline, table),
            )
        )
    return reads


def _stream_bulk_reads(pipeline: dlt.Pipeline, url: URL, plan: Path) -> None:
    """Streams the planned rest of each table read whole, then forgets the plan. Call it
    holding the warehouse lock, after the load that created the tables."""
    reads = bulk.read_plan(plan)
    if reads:
        with pipeline.sql_client() as client:
            for read in reads:
                raw = client.make_qualified_table_name(read.table)
                bulk.stream_rest(client.native_connection, raw, url, read)
    plan.unlink(missing_ok=True)


def run_source(
    source: SourceName,
    settings: Settings,
    *,
    full_refresh: bool = False,
    refresh_tables: Sequence[str] = (),
    window: tuple[str, str] | None = None,
    reconcile_deletes: bool | None = None,
) -> SourceLoad:
    """Extract, normalise and load one source.

    ``full_refresh`` drops all the source's tables and incremental state first and reloads them;
    ``refresh_tables`` does that for the named tables only (and loads only them); ``window``
    reloads an API source's [start, end) range without touching its incremental state.
    ``reconcile_deletes`` (default ``TRIBUTARY_SHOP_RECONCILE_DELETES``) deletes the shop's
    hard-deleted rows after the load, at the cost of one key scan per table.

    Extraction runs outside the warehouse lock, so sources extract while another writes; the
    load holds it. Packages an interrupted earlier attempt left pending are loaded first and
    nothing new is extracted (as ``dlt.Pipeline.run`` does), so a retry finishes the work
    instead of repeating it.
    """
    # Tables read whole from PostgreSQL: dlt reads their newest rows, the rest streams in after.
    bulk_tables: set[str] = set()
    shop_url = database_url(_shop_credentials(settings)) if source == "shop" else None
    if window is not None:
        if source not in WINDOWED_SOURCES:
            raise ConfigurationError(
                f"{source}: a backfill window applies to {', '.join(WINDOWED_SOURCES)} only"
            )
        dlt_source = WINDOWED_SOURCES[source](settings, window)
    elif source == "shop":
        dlt_source = _shop_source(settings, bulk_tables)
    else:
        dlt_source = SOURCE_FACTORIES[source](settings)
    refresh: Literal["drop_sources", "drop_resources"] | None = None
    if full_refresh:
        refresh = "drop_sources"
    elif refresh_tables:
        unknown = sorted(set(refresh_tables) - set(dlt_source.resources))
        if unknown:
            raise ConfigurationError(
                f"{source}: no table {', '.join(unknown)} to refresh; its tables are "
                f"{', '.join(sorted(dlt_source.resources))}"
            )
        dlt_source = dlt_source.with_resources(*refresh_tables)
        refresh = "drop_resources"
    # One run of a pipeline at a time: its working folder is not shared between processes.
    pipeline_lock = settings.pipelines_dir / f"tributary_{source}.lock"
    with file_lock(pipeline_lock, f"{source} pipeline", settings.lock_timeout_seconds):
        pipeline = make_pipeline(source, settings)
        plan = bulk.plan_path(settings.pipelines_dir, pipeline.pipeline_name)
        with warehouse_lock(settings):
            check_warehouse(settings)
            pipeline.sync_destination()
            resumed = pipeline.has_pending_data
            if shop_url and not resumed:  # an earlier run died between its load and stream
                _stream_bulk_reads(pipeline, shop_url, plan)
        full_reads: set[str] = set()
        if resumed:
            if pipeline.list_extracted_load_packages():
                pipeline.normalize()
        else:
            if source in MIRRORED_SOURCES:
                full_reads = _full_reads(pipeline, dlt_source, refresh)
                for table in full_reads:
                    # A whole table replaces the warehouse's copy: no merge staging to pay for.
                    # It holds no soft-deleted rows, so there is nothing to delete either.
                    resource = dlt_source.resources[table]
                    columns = resource.compute_table_schema()["columns"]
                    resource.apply_hints(
                        write_disposition="replace",
                        columns={DELETED_COLUMN: {"hard_delete": False}}
                        if DELETED_COLUMN in columns
                        else None,
                    )
            if (
                shop_url
                and settings.shop_bulk_reads
                and shop_url.get_backend_name() == "postgresql"
            ):
                bulk_tables.update(_bulk_eligible(dlt_source, full_reads))
            pipeline.extract(dlt_source, refresh=refresh)
            pipeline.normalize()
            if bulk_tables:
                bulk.write_plan(plan, _bulk_reads(pipeline, dlt_source.name, bulk_tables))
        tables = sorted(set(dlt_source.resources.selected) | set(_loaded_rows(pipeline)))
        # Keys are read after extraction: a key loaded now is in them unless deleted since.
        snapshots = (
            [
                key_snapshot(shop_url, table, keys, _integer_key(pipeline, table))
                for table in tables
                if table not in full_reads and (keys := _key_columns(pipeline, table))
            ]
            if shop_url
            and (
                settings.shop_reconcile_deletes if reconcile_deletes is None else reconcile_deletes
            )
            else []
        )
        fresh = bool(refresh) and not resumed
        with warehouse_lock(settings):
            before = _count_rows(pipeline, tables)
            changes = _changes(
                pipeline, [table for table in tables if table not in full_reads], refreshed=fresh
            )
            info: LoadInfo = pipeline.load()
            if shop_url:
                _stream_bulk_reads(pipeline, shop_url, plan)
            after = _count_rows(pipeline, tables)
            loaded = _count_rows(pipeline, tables, list(info.loads_ids))
            removed = _reconcile(pipeline, snapshots)
    table_loads = []
    for table in tables:
        if table in changes:
            new, updated, deleted = changes[table]
        else:  # a whole table, no key or not arrow: counted from row totals
            new = after[table] - (0 if fresh or table in full_reads else before[table])
            updated, deleted = loaded.get(table, 0) - new, 0
        table_loads.append(
            TableLoad(
                table=table,
                loaded=loaded.get(table, 0),
                new=new,
                updated=updated,
                deleted=deleted + removed.get(table, 0),
            )
        )
    return SourceLoad(
        source=source,
        dataset=pipeline.dataset_name,
        load_ids=list(info.loads_ids),
        resumed=resumed,
        tables=table_loads,
    )
