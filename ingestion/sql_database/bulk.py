"""Whole-table reads from PostgreSQL, streamed straight into DuckDB.

A table read whole (its first load, or a refresh) is mostly not worth dlt's staging: every
row would be written to parquet, read back and inserted. Instead dlt reads only the table's
newest rows (those at the highest cursor value), which gives it everything it keeps — the
table and its schema, the load id, the incremental cursor, exactly as a whole read would have
set it — and, under the same warehouse lock, right after dlt's load, the rest of the table
(cursor below that mark) streams into the raw table, stamped with the same load id: read by
DuckDB's own PostgreSQL scanner (``scanner``) where the table's column types allow, else from
ADBC's COPY reader. A row that changes in between has a newer cursor value and arrives
with the next incremental read; a late-committed older one is in the stream.

The plan is written to a file next to the pipeline before the load and removed after the
stream commits; a run that finds one (the process died in between) streams again first. Rows
whose key the raw table already holds are skipped, so that is safe however far it got.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, Select, Table, create_engine, func, inspect, or_, select, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from ingestion.sql_database import adbc, scanner
from ingestion.sql_database.masking import masked_batches


def newest_rows(query: Select, table: Table, cursor: str, limit: datetime | None = None) -> Select:
    """The whole-table query narrowed to its rows at the highest ``cursor`` not beyond
    ``limit`` (of the rows the query keeps), and to those beyond it (which the row guard
    quarantines, so that they never set the cursor)."""
    column = table.c[cursor]
    highest = select(func.max(column)).select_from(table)
    if query.whereclause is not None:
        highest = highest.where(query.whereclause)
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        python_type = None
    moments = isinstance(python_type, type) and issubclass(python_type, date)  # datetimes too
    if limit is None or not moments:  # only a day or a point in time can lie in the future
        return query.where(column == highest.scalar_subquery())
    if not issubclass(python_type, datetime):
        limit = limit.astimezone(UTC).date()  # type: ignore[assignment]  # a day: the limit's
    elif not getattr(column.type, "timezone", False):
        limit = limit.astimezone(UTC).replace(tzinfo=None)  # naive columns hold UTC
    highest = highest.where(column <= limit)
    return query.where(or_(column == highest.scalar_subquery(), column > limit))


@dataclass(frozen=True)
class BulkRead:
    """The rest of one table, to be streamed after dlt's load of its newest rows."""

    table: str
    load_id: str
    below: str  # ISO cursor value: rows under it are streamed
    keys: list[str]  # raw names
    cursor: str
    soft_delete: str | None = None  # rows with it set are left out
    schema: str | None = None
    raw_table: str = ""  # the warehouse's name for the table
    labels: dict[str, str] = field(default_factory=dict)  # source column → its raw name
    mask: list[str] = field(default_factory=list)  # raw names, hashed with the source's salt


def plan_path(pipelines_dir: Path, pipeline_name: str) -> Path:
    return pipelines_dir / f"{pipeline_name}.bulk.json"


def write_plan(path: Path, reads: Sequence[BulkRead]) -> None:
    path.write_text(json.dumps([asdict(read) for read in reads]))


def read_plan(path: Path) -> list[BulkRead]:
    if not path.is_file():
        return []
    return [BulkRead(**read) for read in json.loads(path.read_text())]


def cursor_value(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime | date) else str(value)


def _reflect(url: URL, read: BulkRead) -> tuple[Table, Any, str, str | None]:
    """The source table, the mark as a value of its cursor's type, the table's schema and its
    kind (PostgreSQL's ``relkind``: ``r`` a plain table, ``p`` partitioned, ``v`` a view…)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        table = Table(read.table, MetaData(), schema=read.schema, autoload_with=engine)
        schema = read.schema or inspect(engine).default_schema_name
        with engine.connect() as connection:
            kind = connection.execute(
                text(
                    "select c.relkind from pg_class c join pg_namespace n "
                    "on n.oid = c.relnamespace where n.nspname = :schema and c.relname = :name"
                ),
                {"schema": schema, "name": read.table},
            ).scalar()
    finally:
        engine.dispose()
    cursor = table.c[read.cursor]
    kind_of = cursor.type.python_type
    # The mark as a value of the cursor's type: the scanner compares with it as given.
    parse = getattr(kind_of, "fromisoformat", None) or (
        kind_of if kind_of in (int, float) else None
    )
    below = parse(read.below) if parse else read.below
    if isinstance(below, datetime) and below.tzinfo and not cursor.type.timezone:
        below = below.replace(tzinfo=None)  # naive columns hold UTC
    return table, below, schema, kind


def _rest_query(url: URL, read: BulkRead, table: Table, below: Any) -> str:
    # The source's names, labelled with the warehouse's: the rows insert by name.
    cursor = table.c[read.cursor]
    selected = select(
        *(adbc.as_read(table.c[column]).label(raw) for column, raw in read.labels.items())
    )
    query = selected.where(or_(cursor < below, cursor.is_(None)))
    if read.soft_delete:
        query = query.where(table.c[read.soft_delete].is_(None))
    dialect = url.get_dialect()()
    return str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def stream_rest(
    connection: Any, raw_table: str, url: URL, read: BulkRead, mask_salt: str | None = None
) -> int:
    """Streams the rows below the mark into ``raw_table`` (a DuckDB connection's table), the
    ones whose key it does not hold yet, masked columns hashed on the way. Returns the rows
    inserted. DuckDB's scanner reads the table where it gives the same values as dlt's read
    (no masked columns, every column of a type in ``scanner.SCANNED_TYPES``); the ADBC stream
    reads the others."""
    table, below, schema, kind = _reflect(url, read)
    # An anti join, not `not exists`: DuckDB runs the correlated form far slower on a stream
    # (5M rows: ~1.7 s more, bench/README). The same rows either way, NULL keys included.
    on = " and ".join(f"r.{key} = s.{key}" for key in read.keys)
    if not read.mask and scanner.available() and scanner.scannable(table, kind):
        return _scan_rest(connection, raw_table, url, read, table, below, schema, on)
    query = _rest_query(url, read, table, below)
    decimals = adbc.decimal_types(table.columns)
    raw_decimals = {
        raw: decimals[column] for column, raw in read.labels.items() if column in decimals
    }
    with adbc.record_batches(url, query) as stream:
        stream = adbc.plain_batches(stream, raw_decimals, read.table)
        if read.mask:
            assert mask_salt is not None, "masked columns need the source's salt"
            stream = masked_batches(stream, read.mask, mask_salt)
        connection.register("tributary_bulk_rows", stream)
        try:
            [(inserted,)] = connection.execute(
                f"insert into {raw_table} by name "
                f"select s.*, ? as _dlt_load_id from tributary_bulk_rows s "
                f"anti join {raw_table} r on {on}",
                [read.load_id],
            ).fetchall()
        finally:
            connection.unregister("tributary_bulk_rows")
    return int(inserted)


def _scan_rest(
    connection: Any,
    raw_table: str,
    url: URL,
    read: BulkRead,
    table: Table,
    below: Any,
    schema: str,
    on: str,
) -> int:
    quote = scanner.quote
    columns = ", ".join(f"{quote(column)} as {quote(raw)}" for column, raw in read.labels.items())
    cursor = quote(read.cursor)
    where = f"({cursor} < $below or {cursor} is null)"
    if read.soft_delete:
        where += f" and {quote(read.soft_delete)} is null"
    with scanner.attached(connection, url) as catalog:
        source = f"{catalog}.{quote(schema)}.{quote(table.name)}"
        [(inserted,)] = connection.execute(
            f"insert into {raw_table} by name "
            f"select s.*, $load_id as _dlt_load_id "
            f"from (select {columns} from {source} where {where}) s "
            f"anti join {raw_table} r on {on}",
            {"below": below, "load_id": read.load_id},
        ).fetchall()
    return int(inserted)
