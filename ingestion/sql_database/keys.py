"""What the shop holds of a table's keys, for key reconciliation: the warehouse deletes the rows
whose key the source no longer has (rows deleted outright, which no cursor can see).

Reading every key costs a key-only scan of the table and memory for the keys. For a single
integer key on PostgreSQL only checksums travel: per bucket of 4,096 consecutive keys, the
count and the sums of the keys' offsets and of their squares, aggregated by the server. The
warehouse computes the same; only the buckets that disagree are read key by key. A bucket
that disagrees because rows arrived after the extraction has nothing to delete and costs one
small read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from ingestion.sql_database import adbc

BUCKET_BITS = 12
# More disagreeing buckets than this: read every key instead.
MAX_BUCKET_READS = 256


@dataclass(frozen=True)
class KeySnapshot:
    """A table's keys as the source holds them, read after extraction: every key, or (one
    integer key on PostgreSQL) per-bucket checksums."""

    url: URL
    table: str
    key_columns: list[str]
    keys: pa.Table | None = None
    buckets: pa.Table | None = None
    schema: str | None = None
    raw_table: str = ""  # the warehouse's name for the table; key_columns are raw names too
    source_columns: list[str] = field(default_factory=list)  # the key as the source names it

    def quoted_name(self) -> str:
        preparer = _quoted(self.url)
        name = preparer.quote(self.table)
        return f"{preparer.quote_schema(self.schema)}.{name}" if self.schema else name


def _checksums(key: str) -> str:
    """Per bucket: the count, and the sums of the keys' offsets in the bucket and of their
    squares — small integers, so the server sums them in machine words, not in numeric."""
    offset = f"cast({key} & {(1 << BUCKET_BITS) - 1} as integer)"
    return (
        f"{key} >> {BUCKET_BITS} as bucket, count(*) as n, "
        f"sum({offset}) as s, sum({offset} * {offset}) as q"
    )


def _read(url: URL, query: str) -> pa.Table:
    """One query's result as arrow: a COPY on PostgreSQL, a plain select elsewhere."""
    if url.get_backend_name() == "postgresql":
        with adbc.record_batches(url, query) as reader:
            return reader.read_all()
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            result = connection.execute(text(query))
            columns, rows = list(result.keys()), result.fetchall()
    finally:
        engine.dispose()
    return pa.table({column: [row[i] for row in rows] for i, column in enumerate(columns)})


def _quoted(url: URL) -> Any:
    return create_engine(url, poolclass=NullPool).dialect.identifier_preparer


def snapshot(
    url: URL,
    table: str,
    key_columns: Sequence[str],
    integer_key: bool,
    schema: str | None = None,
    *,
    raw_table: str | None = None,
    raw_keys: Sequence[str] | None = None,
) -> KeySnapshot:
    """The source's keys of ``table`` (``key_columns`` as the source names them), labelled
    with the warehouse's names (``raw_keys``, default the same) for comparing with
    ``raw_table``."""
    preparer = _quoted(url)
    raw = list(raw_keys or key_columns)
    shape = KeySnapshot(
        url,
        table,
        raw,
        schema=schema,
        raw_table=raw_table or table,
        source_columns=list(key_columns),
    )
    name = shape.quoted_name()
    columns = [preparer.quote(column) for column in key_columns]
    labelled = [
        f"{column} as {preparer.quote(label)}" for column, label in zip(columns, raw, strict=True)
    ]
    if integer_key and len(columns) == 1 and url.get_backend_name() == "postgresql":
        buckets = _read(url, f"select {_checksums(columns[0])} from {name} group by 1")
        return replace(shape, buckets=buckets)
    keys = _read(url, f"select {', '.join(labelled)} from {name}")
    return replace(shape, keys=keys)


def missing_keys(connection: Any, raw_table: str, snap: KeySnapshot) -> pa.Table:
    """The rows of ``raw_table`` (on a DuckDB connection) whose key the snapshot does not
    hold, as their ``rowid``s: what reconciliation would delete."""
    key_list = ", ".join(snap.key_columns)
    where, keys = "", snap.keys
    if snap.buckets is not None:
        [key] = snap.key_columns
        connection.register("tributary_source_buckets", snap.buckets)
        try:
            differing = connection.execute(
                f"""
                with warehouse as (select {_checksums(key)} from {raw_table} group by 1)
                select w.bucket from warehouse w
                left join tributary_source_buckets s on s.bucket = w.bucket
                where s.bucket is null or s.n <> w.n or s.s <> w.s or s.q <> w.q
                """
            ).fetchall()
        finally:
            connection.unregister("tributary_source_buckets")
        if not differing:
            return pa.table({"rowid": pa.array([], pa.int64())})
        buckets = [int(bucket) for (bucket,) in differing]
        preparer = _quoted(snap.url)
        [source_key] = snap.source_columns
        quoted, name = preparer.quote(source_key), snap.quoted_name()
        if len(buckets) <= MAX_BUCKET_READS:
            ranges = " or ".join(
                f"({quoted} >= {low} and {quoted} < {low + (1 << BUCKET_BITS)})"
                for low in (bucket << BUCKET_BITS for bucket in buckets)
            )
            keys = _read(
                snap.url, f"select {quoted} as {preparer.quote(key)} from {name} where {ranges}"
            )
            listed = ", ".join(map(str, buckets))
            where = f"and (cast(r.{key} as bigint) >> {BUCKET_BITS}) in ({listed})"
        else:
            keys = _read(snap.url, f"select {quoted} as {preparer.quote(key)} from {name}")
    connection.register("tributary_source_keys", keys)
    try:
        return connection.execute(
            f"select r.rowid as rowid from {raw_table} r "
            f"anti join tributary_source_keys using ({key_list}) where true {where}"
        ).fetch_arrow_table()
    finally:
        connection.unregister("tributary_source_keys")


def delete_missing(connection: Any, raw_table: str, gone: pa.Table) -> int:
    """Deletes the rows ``missing_keys`` found. Returns the rows deleted."""
    if gone.num_rows == 0:
        return 0
    connection.register("tributary_gone_rows", gone)
    try:
        [(count,)] = connection.execute(
            f"delete from {raw_table} where rowid in (select rowid from tributary_gone_rows)"
        ).fetchall()
    finally:
        connection.unregister("tributary_gone_rows")
    return int(count)
