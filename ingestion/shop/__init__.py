"""The shop's operational database: customers, stores, products, orders and order items."""

from collections.abc import Iterable, Sequence

import dlt
from dlt.common.configuration.specs import ConnectionStringCredentials
from dlt.extract import DltResource
from dlt.sources.sql_database import sql_database

from ingestion.shop.settings import CHUNK_SIZE, CURSOR_COLUMN, TABLES


@dlt.source(name="shop")
def shop(
    credentials: ConnectionStringCredentials | str = dlt.secrets.value,
    tables: Sequence[str] = TABLES,
    chunk_size: int = CHUNK_SIZE,
) -> Iterable[DltResource]:
    """Every listed table, read as arrow batches, incremental on ``updated_at`` and merged on
    the table's primary key, so a re-run adds nothing and a changed row replaces its old copy."""
    database = sql_database(
        credentials=credentials,
        table_names=list(tables),
        backend="pyarrow",
        chunk_size=chunk_size,
        reflection_level="full",
        detect_precision_hints=None,  # the default False only triggers dlt's deprecation warning
    )
    for resource in database.resources.values():
        resource.apply_hints(
            write_disposition="merge",
            incremental=dlt.sources.incremental(CURSOR_COLUMN),
        )
        yield resource
