"""SQL database sources: the tables a declaration selects from any SQLAlchemy URL, read as
arrow batches (tables in parallel), each loading by its declared mode."""

from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

import dlt
from dlt.extract import DltSource
from dlt.extract.incremental import Incremental
from dlt.sources.sql_database import sql_database
from dlt.sources.sql_database.schema_types import default_table_adapter
from sqlalchemy import DateTime, MetaData, Select, Table, create_engine, inspect
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from ingestion.declared import SqlDatabaseSource
from ingestion.guards import BIGINT_MAX, GuardError
from ingestion.sql_database import adbc
from ingestion.sql_database.bulk import newest_rows
from ingestion.sql_database.helpers import (
    TablePlan,
    check_sqlite_file,
    database_url,
    plan_table,
    select_tables,
)
from ingestion.sql_database.masking import masker
from ingestion.sql_database.settings import CHUNK_SIZE

__all__ = [
    "TablePlan",
    "backend_for",
    "database_url",
    "plan_tables",
    "reflect_tables",
    "sql_database_source",
]


def backend_for(url: URL) -> str:
    """ADBC's COPY-based arrow reader for PostgreSQL; dlt's arrow backend elsewhere."""
    return adbc.BACKEND if url.get_backend_name() == "postgresql" else "pyarrow"


def plan_tables(name: str, declaration: SqlDatabaseSource, url: URL) -> dict[str, TablePlan]:
    """Every selected table and how it loads, checked against the database's catalogue."""
    return reflect_tables(name, declaration, url)[0]


def reflect_tables(
    name: str, declaration: SqlDatabaseSource, url: URL
) -> tuple[dict[str, TablePlan], MetaData]:
    """``plan_tables``, and the selected tables as reflected: handed to dlt's source, which
    then reflects none of them again (dlt takes a given ``MetaData`` as its cache)."""
    check_sqlite_file(name, url)
    # No pool: a connection closes after each use, so none outlives a failed run.
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            available = inspect(connection).get_table_names(schema=declaration.schema_)
            selected = select_tables(name, declaration, available)
            metadata = MetaData(schema=declaration.schema_)
            # as dlt's sql_database reflects (foreign keys not followed)
            metadata.reflect(bind=connection, only=selected, resolve_fks=False)
    finally:
        engine.dispose()
    _naive_unless_said(metadata)
    _checked_mysql_types(name, metadata)
    prefix = f"{declaration.schema_}." if declaration.schema_ else ""
    plans = {
        table: plan_table(name, declaration, metadata.tables[prefix + table]) for table in selected
    }
    return plans, metadata


def _naive_unless_said(metadata: MetaData) -> None:
    """A timestamp column whose reflected ``timezone`` is not a yes or no is naive. SQLite takes
    any type name: ``datetime(6)`` (MySQL's fractional seconds, common in a ported schema)
    reflects as ``DATETIME(timezone=6)`` — SQLAlchemy passes the 6 as its first argument — and
    dlt then refuses the table (``field timezone=6 has invalid type int``). SQLite stores no
    time zone."""
    for table in metadata.tables.values():
        for column in table.columns:
            if isinstance(column.type, DateTime) and not isinstance(column.type.timezone, bool):
                column.type.timezone = False


class OutOfWarehouseRange(GuardError):
    """A MySQL or MariaDB value the warehouse's type for its column cannot hold: nothing the
    read found was loaded."""


class _Checked:
    """A reflected MySQL type that stops the read at a value its warehouse type cannot hold,
    naming the column (``problem``), instead of letting it load as another value or fail
    deep in the extract."""

    def __init__(
        self,
        source: str = "?",
        table: str = "?",
        column: str = "?",
        key: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # for the message; arguments, so that SQLAlchemy's copies of the type keep them
        self.source, self.table, self.column, self.key = source, table, column, key

    def problem(self, value: Any) -> str | None:
        raise NotImplementedError

    def result_processor(self, dialect: Any, coltype: object) -> Any:
        parent = super().result_processor(dialect, coltype)  # type: ignore[misc]
        source, table, column, problem = self.source, self.table, self.column, self.problem
        remedy = (
            f"It is the table's key, which cannot be left out: leave the table out "
            f"(sources.{source}: exclude: [{table}])"
            if self.key
            else f"Leave the column out: sources.{source}.tables.{table}: columns: "
            f"{{exclude: [{column}]}}"
        )

        def process(value: Any) -> Any:
            if value is not None and (text := problem(value)) is not None:
                raise OutOfWarehouseRange(
                    f"{source}.{table}.{column}: {text}; nothing this read found was loaded. "
                    + remedy
                )
            return parent(value) if parent is not None else value

        return process


class _TimeOfDay(_Checked, mysql.TIME):
    """MySQL's ``TIME`` holds durations from -838:59:59 to 838:59:59, which the driver returns
    as ``timedelta``; SQLAlchemy's ``TIME`` made a time of day of any of them by dropping
    whole days (``25:30:00`` loaded as 01:30, ``-01:00:00`` as 23:00), without a word."""

    def problem(self, value: Any) -> str | None:
        if isinstance(value, timedelta) and not timedelta(0) <= value < timedelta(days=1):
            return (
                f"the time {_duration(value)} is not a time of day (MySQL's TIME also holds "
                "durations, from -838:59:59 to 838:59:59), and the warehouse's time would load "
                "it as another value"
            )
        return None


class _UnsignedBigint(_Checked, mysql.BIGINT):
    """``bigint unsigned`` loads as the warehouse's ``bigint``; a value past its largest failed
    the extract with "Python int too large to convert to C long", naming nothing."""

    def problem(self, value: Any) -> str | None:
        if isinstance(value, int) and value > BIGINT_MAX:
            return f"{value} is past the warehouse's bigint (at most {BIGINT_MAX})"
        return None


def _duration(value: timedelta) -> str:
    """``timedelta`` as MySQL writes a TIME: ``25:30:00``, ``-01:00:00.5``."""
    sign, value = ("-", -value) if value < timedelta(0) else ("", value)
    minutes, seconds = divmod(value.days * 86400 + value.seconds, 60)
    fraction = f".{value.microseconds:06d}".rstrip("0") if value.microseconds else ""
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}:{seconds:02d}{fraction}"


def _checked_mysql_types(name: str, metadata: MetaData) -> None:
    """MySQL/MariaDB ``time`` and ``bigint unsigned`` columns read by their ``_Checked``
    types: a value the warehouse cannot hold stops the read, naming the column."""
    for table in metadata.tables.values():
        for column in table.columns:
            kind = column.type
            where = (name, table.name, column.name, column.primary_key)
            if isinstance(kind, mysql.TIME):
                column.type = _TimeOfDay(*where, timezone=kind.timezone, fsp=kind.fsp)
            elif isinstance(kind, mysql.BIGINT) and kind.unsigned:
                column.type = _UnsignedBigint(
                    *where, display_width=kind.display_width, unsigned=True, zerofill=kind.zerofill
                )


def _whole_table_reads(
    plans: Mapping[str, TablePlan], bulk_tables: Collection[str], cursor_limit: datetime | None
) -> Callable[..., Select]:
    """dlt's query adapter: a whole-table read (no cursor yet) leaves rows flagged deleted out
    — later reads need them, so that the warehouse deletes its copies — and for a table in
    ``bulk_tables`` keeps only its newest rows (the rest streams after the load: ``bulk``),
    newest as of ``cursor_limit``: rows stamped beyond it are read too, to be quarantined."""

    def adapt(
        query: Select, table: Table, incremental: Incremental | None = None, engine: Any = None
    ) -> Select:
        if incremental is not None and incremental.last_value is not None:
            return query
        plan = plans[table.name]
        if plan.delete_flagged and plan.soft_delete:
            query = query.where(table.c[plan.soft_delete].is_(None))
        if table.name in bulk_tables and plan.cursor:
            query = newest_rows(query, table, plan.cursor, cursor_limit)
        return query

    return adapt


def _read_columns_only(plans: Mapping[str, TablePlan], metadata: MetaData) -> None:
    """Each planned table, as reflected, keeps only its selected columns: dlt reads and types
    what the ``Table`` holds."""
    for table in metadata.tables.values():
        plan = plans.get(table.name)
        if plan is not None and plan.columns is not None:
            default_table_adapter(table, plan.columns, None)


def sql_database_source(
    name: str,
    declaration: SqlDatabaseSource,
    url: URL,
    plans: Mapping[str, TablePlan],
    metadata: MetaData,
    *,
    bulk_tables: Collection[str] = (),
    cursor_limit: datetime | None = None,
    chunk_size: int = CHUNK_SIZE,
    mask_salt: str | None = None,
) -> DltSource:
    """The planned tables as one dlt source named ``name``.

    merge: incremental on the cursor (when the table has one), merged on the key, so a re-run
    adds nothing and a changed row replaces its old copy. Each read starts ``lag`` seconds
    before the last high-water mark: a row stamped before that mark but committed after the
    read (a long transaction) is still found on the next run (dlt#2269); rows re-read inside
    the window merge onto themselves. A row whose soft-delete column is set is removed from the
    warehouse (policy delete) or kept with it set (flag); rows deleted outright are found by
    key reconciliation after the load. replace: the whole table each run. append: rows past
    the cursor, inserted.

    ``bulk_tables`` (PostgreSQL; read when the tables are extracted, so the caller may fill it
    after creating the source): tables read whole of which dlt reads only the newest rows
    (as of ``cursor_limit``, beyond which a cursor value is not trusted).

    Only a table's selected columns are read; masked ones are hashed with ``mask_salt`` as
    they are read, before any other step sees them. ``metadata``: the tables as
    ``reflect_tables`` reflected them; dlt takes them as they are instead of reflecting the
    database again (its ``MetaData.reflect`` re-read every table's catalogue: 14 queries for
    the five shop tables on PostgreSQL).
    """
    _read_columns_only(plans, metadata)
    backend = backend_for(url)
    engine = create_engine(url, poolclass=NullPool)
    database = sql_database(
        query_adapter_callback=_whole_table_reads(plans, bulk_tables, cursor_limit),
        credentials=engine,
        metadata=metadata,
        # the tables are in `metadata`: dlt neither reflects them nor lists the database's
        defer_table_reflect=True,
        schema=declaration.schema_,
        table_names=list(plans),
        backend=backend,
        chunk_size=chunk_size,
        reflection_level="full",
        detect_precision_hints=None,  # the default False only triggers dlt's deprecation warning
    ).clone(with_name=name)
    prefix = f"{declaration.schema_}." if declaration.schema_ else ""
    for table, resource in database.resources.items():
        plan = plans[table]
        hints: dict[str, Any] = {
            "write_disposition": plan.mode,
            "primary_key": plan.keys or None,
        }
        if plan.incremental:
            # A row without a cursor value is read with the whole table; no later read sees it.
            hints["incremental"] = dlt.sources.incremental(
                plan.cursor, lag=plan.lag or None, on_cursor_value_missing="include"
            )
        columns: dict[str, Any] = {}
        if backend == adbc.BACKEND:
            columns |= {
                column.name: {"name": column.name, "data_type": "text", "precision": None}
                for column in metadata.tables[prefix + table].columns
                if adbc.text_time(column.type)
            }
        if plan.mode == "merge" and plan.delete_flagged:
            columns[plan.soft_delete] = {"hard_delete": True}
        if plan.mask:
            assert mask_salt is not None
            resource.add_map(masker(plan.mask, mask_salt), insert_at=1)
            columns |= {
                column: {"name": column, "data_type": "text", "precision": None}
                for column in plan.mask
            }
        if columns:
            hints["columns"] = columns
        resource.apply_hints(**hints)
    return database
