"""The shop's operational database: customers, stores, products, orders and order items."""

from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

import dlt
from dlt.common.configuration.specs import ConnectionStringCredentials
from dlt.extract import DltResource
from dlt.extract.incremental import Incremental
from dlt.sources.sql_database import sql_database
from sqlalchemy import Select, Table, create_engine, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from ingestion.shop import adbc
from ingestion.shop.bulk import newest_rows
from ingestion.shop.settings import (
    CHUNK_SIZE,
    CURSOR_COLUMN,
    DELETED_COLUMN,
    DRIVERS,
    LAG_SECONDS,
    TABLES,
)
from tributary.settings import ConfigurationError


def database_url(credentials: ConnectionStringCredentials | str) -> URL:
    """The shop database as a SQLAlchemy URL, with the driver tributary installs for its
    dialect when the URL names none (``postgresql://`` → psycopg, ``mysql://`` → PyMySQL)."""
    url = credentials.to_url() if isinstance(credentials, ConnectionStringCredentials) else None
    url = url or make_url(credentials)
    if "+" not in url.drivername and url.drivername in DRIVERS:
        url = url.set(drivername=f"{url.drivername}+{DRIVERS[url.drivername]}")
    return url


def backend_for(url: URL) -> str:
    """ADBC's COPY-based arrow reader for PostgreSQL; dlt's arrow backend elsewhere."""
    return adbc.BACKEND if url.get_backend_name() == "postgresql" else "pyarrow"


def _whole_table_reads(
    bulk_tables: Collection[str], cursor_limit: datetime | None
) -> Callable[..., Select]:
    """dlt's query adapter: a whole-table read (no cursor yet) leaves soft-deleted rows out —
    later reads need them, so that the warehouse deletes its copies — and for a table in
    ``bulk_tables`` keeps only its newest rows (the rest streams after the load: ``bulk``),
    newest as of ``cursor_limit``: rows stamped beyond it are read too, to be quarantined."""

    def adapt(
        query: Select, table: Table, incremental: Incremental | None = None, engine: Any = None
    ) -> Select:
        if incremental is not None and incremental.last_value is not None:
            return query
        if DELETED_COLUMN in table.c:
            query = query.where(table.c[DELETED_COLUMN].is_(None))
        if table.name in bulk_tables:
            query = newest_rows(query, table, cursor_limit)
        return query

    return adapt


@dlt.source(name="shop", parallelized=True)
def shop(
    credentials: ConnectionStringCredentials | str = dlt.secrets.value,
    tables: Sequence[str] = TABLES,
    chunk_size: int = CHUNK_SIZE,
    lag_seconds: float = LAG_SECONDS,
    bulk_tables: Collection[str] = (),
    cursor_limit: datetime | None = None,
) -> Iterable[DltResource]:
    """Every listed table, read as arrow batches (tables in parallel), incremental on
    ``updated_at`` and merged on the table's primary key, so a re-run adds nothing and a changed
    row replaces its old copy.

    Each read starts ``lag_seconds`` before the last high-water mark: a row whose ``updated_at``
    was stamped before that mark but committed after the read (a long transaction) is still
    found on the next run (dlt#2269). Rows re-read inside the window merge onto themselves.
    A row whose ``deleted_at`` is set is removed from the warehouse (a soft delete becomes a
    hard one); rows deleted outright are found by key reconciliation after the load.

    ``bulk_tables`` (PostgreSQL; read when the tables are extracted, so the caller may fill it
    after creating the source): tables read whole of which dlt reads only the newest rows
    (as of ``cursor_limit``, beyond which a cursor value is not trusted).

    A table without a primary key has nothing to merge on: it is read whole and replaces its
    warehouse copy on every run (merging it would append the rows re-read in the lag window
    again and again).
    """
    url = database_url(credentials)
    # No pool: a connection closes after each use, so none outlives a failed run.
    engine = create_engine(url, poolclass=NullPool)
    missing = sorted(set(tables) - set(inspect(engine).get_table_names()))
    if missing:
        raise ConfigurationError(
            f"TRIBUTARY_SHOP_TABLES / [sources.shop] tables: no table {', '.join(missing)} in "
            f"the shop database {url.render_as_string(hide_password=True)}"
        )
    database = sql_database(
        query_adapter_callback=_whole_table_reads(bulk_tables, cursor_limit),
        credentials=engine,
        table_names=list(tables),
        backend=backend_for(url),
        chunk_size=chunk_size,
        reflection_level="full",
        detect_precision_hints=None,  # the default False only triggers dlt's deprecation warning
    )
    for resource in database.resources.values():
        columns = resource.compute_table_schema()["columns"]
        if not any(column.get("primary_key") for column in columns.values()):
            resource.apply_hints(write_disposition="replace")
            yield resource
            continue
        resource.apply_hints(
            write_disposition="merge",
            # A row without a cursor value is read with the whole table; no later read sees it.
            incremental=dlt.sources.incremental(
                CURSOR_COLUMN, lag=lag_seconds or None, on_cursor_value_missing="include"
            ),
            columns={DELETED_COLUMN: {"hard_delete": True}} if DELETED_COLUMN in columns else None,
        )
        yield resource
