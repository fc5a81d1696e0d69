"""An ``adbc`` backend for dlt's ``sql_database``: PostgreSQL tables streamed as arrow.

The ADBC PostgreSQL driver reads with ``COPY (query) TO STDOUT (FORMAT binary)`` and decodes
the stream into arrow record batches in C, so extraction runs close to the speed of the COPY
itself, in batches of a bounded size (memory stays flat however large the table). dlt still
owns everything else: reflection, the incremental ``where`` clause (lag included), hints and
state. Registered under the name ``adbc`` on import.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import adbc_driver_postgresql
import adbc_driver_postgresql.dbapi as adbc_postgresql
import pyarrow as pa
from adbc_driver_manager import AdbcConnection
from adbc_driver_manager.dbapi import _SharedDatabase  # the dbapi's own refcounted holder
from dlt.sources.sql_database.helpers import BaseTableLoader, register_table_loader_backend
from sqlalchemy.engine import URL

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


class AdbcTableLoader(BaseTableLoader):
    """Runs dlt's compiled table query through ADBC and yields one arrow table per batch."""

    def load_rows(self, backend_kwargs: dict[str, Any] | None = None) -> Iterator[pa.Table]:
        options = dict(backend_kwargs or {})
        batch_bytes = int(options.pop("batch_bytes", BATCH_BYTES))
        query = self.compile_query(self.make_query())
        with record_batches(self.engine.url, query, batch_bytes) as reader:
            # COPY says nothing of NOT NULL: take nullability from the reflected columns, so
            # arrow and dlt schemas agree (else dlt warns on every batch).
            schema = pa.schema(
                field.with_nullable(self.columns.get(field.name, {}).get("nullable", True))
                for field in reader.schema
            )
            for batch in reader:
                if batch.num_rows:
                    yield pa.Table.from_batches([batch]).cast(schema)


register_table_loader_backend(BACKEND, AdbcTableLoader)
