"""Masked columns: values replaced by a salted SHA-256 before they reach the warehouse, so PII
(an e-mail, a phone number) is never stored in clear yet still joins and counts: the same value
always gives the same hash under the same salt. NULL stays NULL."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa


def hash_value(salt: str, value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return hashlib.sha256((salt + text).encode()).hexdigest()


def _masked_array(salt: str, column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return pa.array([hash_value(salt, value) for value in column.to_pylist()], pa.string())


def mask_arrow(table: pa.Table | pa.RecordBatch, columns: Sequence[str], salt: str) -> Any:
    for name in columns:
        index = table.schema.get_field_index(name)
        if index >= 0:
            masked = _masked_array(salt, table.column(index))
            if isinstance(table, pa.RecordBatch):
                arrays = list(table.columns)
                arrays[index] = masked
                schema = table.schema.set(index, pa.field(name, pa.string()))
                table = pa.RecordBatch.from_arrays(arrays, schema=schema)
            else:
                table = table.set_column(index, pa.field(name, pa.string()), masked)
    return table


def masker(columns: Sequence[str], salt: str) -> Callable[[Any], Any]:
    """A dlt map step that masks ``columns`` in arrow tables and in rows."""

    def mask(item: Any) -> Any:
        if isinstance(item, pa.Table | pa.RecordBatch):
            return mask_arrow(item, columns, salt)
        rows = item if isinstance(item, list) else [item]
        for row in rows:
            for name in columns:
                if name in row:
                    row[name] = hash_value(salt, row[name])
        return item

    return mask


def masked_batches(
    reader: pa.RecordBatchReader, columns: Sequence[str], salt: str
) -> pa.RecordBatchReader:
    """``reader`` with ``columns`` masked batch by batch (the bulk stream's path)."""
    schema = reader.schema
    for name in columns:
        index = schema.get_field_index(name)
        if index >= 0:
            schema = schema.set(index, pa.field(name, pa.string()))

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            yield pa.RecordBatch.from_arrays(
                [
                    _masked_array(salt, batch.column(i))
                    if field.name in columns
                    else batch.column(i)
                    for i, field in enumerate(batch.schema)
                ],
                schema=schema,
            )

    return pa.RecordBatchReader.from_batches(schema, batches())
