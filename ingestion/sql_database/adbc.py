"""An ``adbc`` backend for dlt's ``sql_database``: PostgreSQL tables streamed as arrow.

The ADBC PostgreSQL driver reads with ``COPY (query) TO STDOUT (FORMAT binary)`` and decodes
the stream into arrow record batches in C, so extraction runs close to the speed of the COPY
itself, in batches of a bounded size (memory stays flat however large the table). dlt still
owns everything else: reflection, the incremental ``where`` clause (lag included), hints and
state. Registered under the name ``adbc`` on import.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from typing import Any
from uuid import UUID

import adbc_driver_postgresql
import adbc_driver_postgresql.dbapi as adbc_postgresql
import pyarrow as pa
import pyarrow.compute as pc
from adbc_driver_manager import AdbcConnection
from adbc_driver_manager.dbapi import _SharedDatabase  # the dbapi's own refcounted holder
from dlt.sources.sql_database.helpers import BaseTableLoader, register_table_loader_backend
from sqlalchemy import Select, cast, func
from sqlalchemy.dialects.postgresql import INET, MONEY
from sqlalchemy.engine import URL
from sqlalchemy.sql import sqltypes

from ingestion.guards import INFINITY
from ingestion.sql_database.helpers import MAX_DECIMAL_DIGITS, exact_decimal

BACKEND = "adbc"
# Bytes of COPY data decoded into one record batch (the driver's default is 16 MiB).
BATCH_BYTES = 16 * 1024 * 1024


def libpq_url(url: URL) -> str:
    """The SQLAlchemy URL as a libpq connection URI: the driver suffix goes, libpq's own query
    options (``sslmode``, ``sslrootcert``, ``options``, …) pass through unchanged."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@cache
def _database(uri: str) -> Any:
    """One ADBC database per server and process. Making one connects to read the server's
    types (~30 ms here); a connection from it costs ~2 ms — and a run reads each source a few
    times (extract, key snapshot, bulk stream). Never closed: the process's end closes it."""
    return _SharedDatabase(adbc_driver_postgresql.connect(uri))


def connect(url: URL) -> Any:
    database = _database(libpq_url(url))
    # What adbc_driver_postgresql.dbapi.connect does, from the shared database.
    return adbc_postgresql.Connection(database, AdbcConnection(database._db))


@contextmanager
def record_batches(url: URL, query: str, batch_bytes: int = BATCH_BYTES) -> Iterator[Any]:
    """``query``'s result as a stream of arrow record batches of about ``batch_bytes``,
    open while the block runs."""
    with connect(url) as connection, connection.cursor() as cursor:
        cursor.adbc_statement.set_options(
            **{"adbc.postgresql.batch_size_hint_bytes": str(batch_bytes)}
        )
        cursor.execute(query)
        yield cursor.fetch_record_batch()


# Column types ADBC hands over as values dlt and DuckDB load (uuid, json and numeric as arrow
# extension types, made plain by `plain_batch`). Any other — inet, cidr, macaddr, interval,
# bit, tsvector, ranges, … — ADBC gives in the server's binary form or as a type dlt cannot
# load: those are read as the server's text for them, and so is time with time zone
# (`text_time`).
_READ_AS_IS = (
    sqltypes.Integer,
    sqltypes.Numeric,
    sqltypes.Float,  # not a Numeric since SQLAlchemy 2.1
    sqltypes.Boolean,
    sqltypes.String,  # enums, char(n) too
    sqltypes.Date,
    sqltypes.DateTime,
    sqltypes.Time,
    sqltypes._Binary,
    sqltypes.Uuid,
    sqltypes.JSON,
    sqltypes.ARRAY,
)
# dlt's decimal for a numeric column declared without precision (DuckDB's DECIMAL(38, 9)).
_UNCONSTRAINED = (38, 9)


def text_time(kind: Any) -> bool:
    """Whether a reflected type is ``time with time zone``: ADBC gives it in the server's binary
    form (the load then failed, "Unimplemented type for cast (BLOB -> TIME)"), and the
    warehouse's ``time`` has no offset. It is read, and typed, as the server's text
    (``24:00:00+02``)."""
    return isinstance(kind, sqltypes.Time) and bool(kind.timezone)


def as_read(column: Any) -> Any:
    """``column`` itself, or its text when its type is outside ``_READ_AS_IS``. ``money`` is
    read as a number: its binary form is a count of the smallest unit, which loaded as that
    integer ($12.34 as 1234). ``inet`` is read as PostgreSQL shows it (``abbrev``): a cast to
    text always adds the netmask, ``/32`` to a single address."""
    kind = column.type
    if text_time(kind):
        return cast(column, sqltypes.Text)
    if isinstance(kind, MONEY):
        return cast(column, sqltypes.Numeric())
    if isinstance(kind, INET):
        return func.abbrev(column)
    return column if isinstance(kind, _READ_AS_IS) else cast(column, sqltypes.Text)


def readable(query: Select) -> Select:
    """``query`` with each column of a type outside ``_READ_AS_IS`` read as its text, under
    its own name (dlt types such a column text)."""
    columns = []
    for column in query.selected_columns:
        read = as_read(column)
        columns.append(column if read is column else read.label(column.name))
    return query.with_only_columns(*columns)


def decimal_types(columns: Iterable[Any]) -> dict[str, pa.Decimal128Type]:
    """The arrow decimal of each exact numeric column (SQLAlchemy columns), by name: its
    declared precision and scale, dlt's default where it has none."""
    decimals = {}
    for column in columns:
        kind = column.type
        if exact_decimal(kind):
            precision, scale = (
                (kind.precision, kind.scale or 0) if kind.precision else _UNCONSTRAINED
            )
            decimals[column.name] = pa.decimal128(min(precision, MAX_DECIMAL_DIGITS), scale)
    return decimals


def _decimals(values: pa.Array, kind: pa.Decimal128Type, where: str) -> pa.Array:
    """PostgreSQL numerics (their text) as ``kind``, rounded half to even to its scale; NaN and
    infinities, which a decimal cannot hold, are an error naming ``where``."""
    try:
        return pc.cast(values, kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    step = Decimal(1).scaleb(-kind.scale)
    exact = []
    for text in values.to_pylist():
        if text is None:
            exact.append(None)
            continue
        value = Decimal(text)
        if not value.is_finite():
            raise ValueError(
                f"{where}: numeric {text!r} has no decimal value in the warehouse (correct the "
                "row, or leave the column out: `columns: {exclude: [...]}` in the sources file)"
            )
        exact.append(value.quantize(step, rounding=ROUND_HALF_EVEN))
    try:
        return pa.array(exact, type=kind)
    except (pa.ArrowInvalid, OverflowError) as exc:
        raise ValueError(f"{where}: a numeric does not fit {kind}: {exc}") from None


# ADBC moves PostgreSQL's timestamps and dates from the server's epoch (2000-01-01) to arrow's
# (1970) without checking for overflow: 'infinity' and '-infinity' (the server's largest and
# smallest int64 / int32) wrap around to the most negative values, and loaded as dates some
# 290,000 (timestamps) or 5.9 million (dates) years BC, both alike. DuckDB holds infinities as
# the largest value and its negation (`INFINITY`); a timestamp past 294247-01-10, DuckDB's
# last, wraps too.
_SHIFTS = {pa.int64(): (946_684_800_000_000, 64), pa.int32(): (10_957, 32)}  # and bit widths
_WRAPPED_INFINITIES = {
    storage: {
        INFINITY[storage] + shift - 2**bits: INFINITY[storage],
        -INFINITY[storage] - 1 + shift: -INFINITY[storage],
    }
    for storage, (shift, bits) in _SHIFTS.items()
}
# PostgreSQL's first timestamp and date (4714-11-24 BC) on arrow's scale: below, a value wrapped.
_FIRST = {pa.int64(): -210_866_803_200_000_000, pa.int32(): -2_440_588}


def _infinities(values: pa.Array, where: str) -> pa.Array:
    """A timestamp or date column with PostgreSQL's infinities as DuckDB's; a timestamp past
    DuckDB's last is an error naming ``where``."""
    if pa.types.is_timestamp(values.type) and values.type.unit != "us":
        return values  # ADBC reads PostgreSQL's at microseconds
    storage = pa.int64() if pa.types.is_timestamp(values.type) else pa.int32()
    raw = values.view(storage)
    lowest = pc.min(raw).as_py()
    if lowest is None or lowest >= _FIRST[storage]:
        return values
    wrapped = _WRAPPED_INFINITIES[storage]
    numbers = raw.to_pylist()
    for index, number in enumerate(numbers):
        if number is None or number >= _FIRST[storage]:
            continue
        if number not in wrapped:
            raise ValueError(
                f"{where}: a timestamp after 294247-01-10, the warehouse's last (correct the "
                "row, or leave the column out: `columns: {exclude: [...]}` in the sources file)"
            )
        numbers[index] = wrapped[number]
    return pa.array(numbers, type=storage).view(values.type)


def _temporal(kind: pa.DataType) -> bool:
    return pa.types.is_timestamp(kind) or pa.types.is_date32(kind)


def _to_make_plain(schema: pa.Schema) -> bool:
    """Whether ``plain_batch`` has anything to do for batches of ``schema``: an arrow
    extension type, or a timestamp or date (its infinities)."""
    return any(
        isinstance(field.type, pa.BaseExtensionType) or _temporal(field.type) for field in schema
    )


def plain_batch(
    batch: pa.RecordBatch, decimals: Mapping[str, pa.Decimal128Type], table: str
) -> pa.RecordBatch:
    """``batch`` without arrow extension types: uuid as its text, json as its text, numeric
    as the column's decimal (``decimals``); timestamps and dates with PostgreSQL's
    infinities as DuckDB's (``_infinities``)."""
    if not _to_make_plain(batch.schema):
        return batch
    arrays = []
    for field, array in zip(batch.schema, batch.columns, strict=True):
        kind = field.type
        if _temporal(kind):
            array = _infinities(array, f"{table}.{field.name}")
        elif isinstance(kind, pa.UuidType):
            array = pa.array(
                [
                    None if raw is None else str(UUID(bytes=raw))
                    for raw in array.storage.to_pylist()
                ],
                type=pa.string(),
            )
        elif isinstance(kind, pa.OpaqueType) and kind.type_name == "numeric":
            where = f"{table}.{field.name}"
            kind = decimals.get(field.name, pa.decimal128(*_UNCONSTRAINED))
            array = _decimals(array.storage, kind, where)
        elif isinstance(kind, pa.BaseExtensionType):  # json; any other keeps its storage
            array = array.storage
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def plain_batches(
    reader: pa.RecordBatchReader, decimals: Mapping[str, pa.Decimal128Type], table: str
) -> pa.RecordBatchReader:
    """``plain_batch`` over a stream."""
    if not _to_make_plain(reader.schema):
        return reader
    first = next(iter(reader), None)
    if first is None:
        empty = pa.RecordBatch.from_pylist([], schema=reader.schema)
        schema = plain_batch(empty, decimals, table).schema
        return pa.RecordBatchReader.from_batches(schema, [])
    head = plain_batch(first, decimals, table)

    def batches() -> Iterator[pa.RecordBatch]:
        yield head
        for batch in reader:
            yield plain_batch(batch, decimals, table)

    return pa.RecordBatchReader.from_batches(head.schema, batches())


class AdbcTableLoader(BaseTableLoader):
    """Runs dlt's compiled table query through ADBC and yields one arrow table per batch."""

    def load_rows(self, backend_kwargs: dict[str, Any] | None = None) -> Iterator[pa.Table]:
        options = dict(backend_kwargs or {})
        batch_bytes = int(options.pop("batch_bytes", BATCH_BYTES))
        query = self.compile_query(readable(self.make_query()))
        decimals = decimal_types(self.table.columns)
        with record_batches(self.engine.url, query, batch_bytes) as reader:
            schema = None
            for batch in reader:
                if not batch.num_rows:
                    continue
                batch = plain_batch(batch, decimals, self.table.name)
                if schema is None:
                    # COPY says nothing of NOT NULL: take nullability from the reflected
                    # columns, so arrow and dlt schemas agree (else dlt warns on every batch).
                    schema = pa.schema(
                        field.with_nullable(self.columns.get(field.name, {}).get("nullable", True))
                        for field in batch.schema
                    )
                yield pa.Table.from_batches([batch]).cast(schema)


register_table_loader_backend(BACKEND, AdbcTableLoader)
