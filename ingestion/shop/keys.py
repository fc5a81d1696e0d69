"""The primary keys a shop table holds now: what key reconciliation compares the warehouse with."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from ingestion.shop import adbc


def source_keys(url: URL, table: str, key_columns: Sequence[str]) -> pa.Table:
    """Every key of ``table``, as arrow: one key-only COPY on PostgreSQL, a streamed select
    elsewhere."""
    engine = create_engine(url)
    try:
        preparer = engine.dialect.identifier_preparer
        columns = ", ".join(preparer.quote(column) for column in key_columns)
        query = f"select {columns} from {preparer.quote(table)}"
        if url.get_backend_name() == "postgresql":
            with adbc.connect(url) as connection, connection.cursor() as cursor:
                cursor.execute(query)
                return cursor.fetch_arrow_table()
        with engine.connect() as connection:
            rows = connection.execute(text(query)).fetchall()
    finally:
        engine.dispose()
    return pa.table({column: [row[i] for row in rows] for i, column in enumerate(key_columns)})
