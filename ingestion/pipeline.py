"""Runs one source into the warehouse and says what it changed there."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import dlt
from dlt.common.pipeline import LoadInfo
from dlt.extract import DltSource

from ingestion.fx import fx
from ingestion.payments import payments
from ingestion.shop import shop
from tributary.lock import file_lock, warehouse_lock
from tributary.settings import ConfigurationError, Settings

SourceName = Literal["shop", "payments", "fx"]
SOURCE_NAMES: tuple[SourceName, ...] = ("shop", "payments", "fx")


@dataclass(frozen=True)
class TableLoad:
    """Rows one load wrote to one raw table: ``new`` keys plus ``updated`` existing ones."""

    table: str
    loaded: int
    new: int

    @property
    def updated(self) -> int:
        return self.loaded - self.new


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


def _shop_source(settings: Settings) -> DltSource:
    if settings.shop_url is None and dlt.secrets.get("sources.shop.credentials") is None:
        path = settings.shop_sqlite_path
        if not path.is_file():
            raise ConfigurationError(
                f"TRIBUTARY_SHOP_DB_PATH: no shop database at {path}. Generate the sample shop "
                "with `python -m demo generate`, or point TRIBUTARY_SHOP_URL at your database."
            )
        return shop(credentials=settings.shop_connection_url)
    if settings.shop_url is not None:
        return shop(credentials=settings.shop_connection_url)
    return shop()


SOURCE_FACTORIES: dict[SourceName, Callable[[Settings], DltSource]] = {
    "shop": _shop_source,
    "payments": lambda settings: payments(base_url=settings.payments_api_url),
    "fx": lambda settings: fx(base_url=settings.fx_api_url),
}
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


def _row_counts(pipeline: dlt.Pipeline, tables: list[str]) -> dict[str, int]:
    """Rows per table now in the warehouse (0 for a table that does not exist yet)."""
    if not tables:
        return {}
    with pipeline.sql_client() as client:
        existing = {
            row[0]
            for row in client.execute_sql(
                "select table_name from information_schema.tables where table_schema = %s",
                client.dataset_name,
            )
        }
        return {
            table: client.execute_sql(
                f"select count(*) from {client.make_qualified_table_name(table)}"
            )[0][0]
            if table in existing
            else 0
            for table in tables
        }


def _rows_of_loads(
    pipeline: dlt.Pipeline, tables: list[str], load_ids: list[str]
) -> dict[str, int]:
    """Rows each table holds from these loads: inserted or replaced by them. Counted in the
    warehouse, so it is right for a resumed load too, whose normalising ran in another attempt."""
    if not tables or not load_ids:
        return {}
    with pipeline.sql_client() as client:
        existing = {
            row[0]
            for row in client.execute_sql(
                "select table_name from information_schema.columns "
                "where table_schema = %s and column_name = '_dlt_load_id'",
                client.dataset_name,
            )
        }
        marks = ", ".join(["%s"] * len(load_ids))
        return {
            table: client.execute_sql(
                f"select count(*) from {client.make_qualified_table_name(table)} "
                f"where _dlt_load_id in ({marks})",
                *load_ids,
            )[0][0]
            for table in tables
            if table in existing
        }


def _loaded_rows(pipeline: dlt.Pipeline) -> dict[str, int]:
    """Rows normalised per data table in this run (dlt's own tables left out)."""
    trace = pipeline.last_trace
    info = trace.last_normalize_info if trace else None
    counts = info.row_counts if info else {}
    return {table: rows for table, rows in counts.items() if not table.startswith("_dlt")}


def run_source(
    source: SourceName,
    settings: Settings,
    *,
    full_refresh: bool = False,
    refresh_tables: Sequence[str] = (),
    window: tuple[str, str] | None = None,
) -> SourceLoad:
    """Extract, normalise and load one source.

    ``full_refresh`` drops all the source's tables and incremental state first and reloads them;
    ``refresh_tables`` does that for the named tables only (and loads only them); ``window``
    reloads an API source's [start, end) range without touching its incremental state.

    Extraction runs outside the warehouse lock, so sources extract while another writes; the
    load holds it. Packages an interrupted earlier attempt left pending are loaded first and
    nothing new is extracted (as ``dlt.Pipeline.run`` does), so a retry finishes the work
    instead of repeating it.
    """
    if window is not None:
        if source not in WINDOWED_SOURCES:
            raise ConfigurationError(
                f"{source}: a backfill window applies to {', '.join(WINDOWED_SOURCES)} only"
            )
        dlt_source = WINDOWED_SOURCES[source](settings, window)
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
        with warehouse_lock(settings):
            pipeline.sync_destination()
        resumed = pipeline.has_pending_data
        if resumed:
            if pipeline.list_extracted_load_packages():
                pipeline.normalize()
        else:
            pipeline.extract(dlt_source, refresh=refresh)
            pipeline.normalize()
        tables = sorted(set(dlt_source.resources.selected) | set(_loaded_rows(pipeline)))
        with warehouse_lock(settings):
            before = _row_counts(pipeline, tables)
            info: LoadInfo = pipeline.load()
            after = _row_counts(pipeline, tables)
            loaded = _rows_of_loads(pipeline, tables, list(info.loads_ids))
    return SourceLoad(
        source=source,
        dataset=pipeline.dataset_name,
        load_ids=list(info.loads_ids),
        resumed=resumed,
        tables=[
            TableLoad(
                table=table,
                loaded=loaded.get(table, 0),
                new=after[table] - (0 if refresh and not resumed else before[table]),
            )
            for table in tables
        ],
    )
