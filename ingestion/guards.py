"""Guards between a source and the warehouse: nothing a source sends is trusted blindly.

- ``RowGuard``, a step of every resource placed before dlt's incremental step, rejects rows
  whose key is missing, whose cursor lies beyond now plus a tolerance (one such row would move
  the cursor there and every later change would be skipped), or that break the columns the
  source declares (type, required, accepted values). Rejected rows go to the quarantine
  journal; the incremental step never sees them, so the cursor never moves past real data.
- ``duplicate_keys`` finds keys that occur more than once in what one run extracted, and
  ``remove_keys`` takes their rows out of the package's files.
- ``check_deletes`` stops a run that would delete an unusual share of a table.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, ClassVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dlt.common.data_types import coerce_value, py_type_to_sc_type
from dlt.extract import DltResource
from dlt.extract.incremental import Incremental, IncrementalResourceWrapper
from dlt.extract.items_transform import BaseItemTransform, ItemTransform

from ingestion.quarantine import Journal, Rejected
from tributary.settings import Settings
from tributary.warehouse import sql_string


class GuardError(RuntimeError):
    """A guard stopped a load: the message names the table, the numbers and what to do.
    ``load`` is what the source did before it stopped, when it loaded anything."""

    def __init__(self, message: str, load: Any = None) -> None:
        super().__init__(message)
        self.load = load

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.load))


class DeletesStopped(GuardError):
    """A load would have deleted more of a table than the delete guard allows; nothing was
    deleted. Running again with ``confirm_deletes`` goes ahead."""


BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
# DuckDB's 'infinity' for a timestamp (int64 storage) and a date (int32): the type's largest
# value; '-infinity' is its negation.
INFINITY = {pa.int64(): BIGINT_MAX, pa.int32(): 2**31 - 1}
# The same words every run, so that a row sent again is counted, not quarantined anew.
FUTURE = "is beyond now plus the tolerance (TRIBUTARY_CURSOR_FUTURE_TOLERANCE_SECONDS)"


def cursor_column(resource: DltResource) -> str | None:
    """The column dlt's incremental step reads on ``resource``, if it has one: set as a hint,
    or (``rest_api``) passed to the resource function, where dlt finds it only when it runs."""
    incremental = resource.incremental
    if isinstance(incremental, IncrementalResourceWrapper):
        incremental = incremental.incremental
    if not isinstance(incremental, Incremental):
        bound = [arg for arg in resource.explicit_args.values() if isinstance(arg, Incremental)]
        incremental = bound[0] if bound else None
    return incremental.cursor_path if incremental is not None else None


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass
class Contract:
    """What the rows of one table must satisfy."""

    table: str
    keys: Sequence[str] = ()
    cursor: str | None = None
    cursor_limit: datetime | None = None  # UTC; a cursor value beyond it is rejected
    # Declared column types and nullability (dlt column hints); checked on dict rows only —
    # arrow rows come from a database that enforces its own types.
    columns: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    accepted_values: Mapping[str, Collection[Any]] = field(default_factory=dict)


def _is_beyond(value: Any, limit: datetime) -> bool | None:
    """True when a cursor value lies beyond ``limit``; None when it is not a point in time."""
    if isinstance(value, datetime):
        return _as_utc(value) > limit
    if isinstance(value, date):
        return value > limit.date()
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        if len(value) <= 10:  # a date
            return parsed.date() > limit.date()
        return _as_utc(parsed) > limit
    return False  # an integer cursor: no notion of the future


def value_reasons(contract: Contract, row: Mapping[str, Any]) -> list[str]:
    """Why a row (a mapping) breaks ``contract``; empty when it does not."""
    reasons = []
    for key in contract.keys:
        if row.get(key) is None:
            reasons.append(f"primary key {key} is missing")
    if contract.cursor is not None and contract.cursor_limit is not None:
        value = row.get(contract.cursor)
        if value is None:
            reasons.append(f"cursor {contract.cursor} is missing")
        else:
            beyond = _is_beyond(value, contract.cursor_limit)
            if beyond is None:
                reasons.append(f"cursor {contract.cursor} {value!r} is not a date or time")
            elif beyond:
                reasons.append(f"cursor {contract.cursor} {value} {FUTURE}")
    for name, column in contract.columns.items():
        value = row.get(name)
        if value is None:
            if column.get("nullable") is False and name not in contract.keys:
                reasons.append(f"{name} is missing")
            continue
        data_type = column.get("data_type")
        if data_type and data_type != "json":
            try:
                coerced = coerce_value(data_type, py_type_to_sc_type(type(value)), value)
            except (ValueError, TypeError):
                coerced = None
            if coerced is None or (
                data_type == "bigint" and not BIGINT_MIN <= coerced <= BIGINT_MAX
            ):
                reasons.append(f"{name} {value!r} is not a {data_type}")
    for name, allowed in contract.accepted_values.items():
        value = row.get(name)
        if value is not None and value not in allowed:
            reasons.append(f"{name} {value!r} is not one of {', '.join(map(str, allowed))}")
    return reasons


def _pylist(table: pa.Table) -> list[dict[str, Any]]:
    """``table.to_pylist()``, but a timestamp or date Python cannot hold — PostgreSQL's
    infinities, which load as DuckDB's (the largest value and its negation) — as
    ``'infinity'`` or ``'-infinity'`` (another, as its count from 1970)."""
    try:
        return table.to_pylist()
    except (ValueError, OverflowError):
        pass
    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        values = []
        for scalar in column:
            try:
                values.append(scalar.as_py())
            except (ValueError, OverflowError):
                wide = pa.types.is_timestamp(scalar.type) or pa.types.is_date64(scalar.type)
                storage = pa.int64() if wide else pa.int32()
                count, largest = scalar.cast(storage).as_py(), INFINITY[storage]
                values.append({largest: "infinity", -largest: "-infinity"}.get(count, str(count)))
        columns[name] = values
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _arrow_checks(contract: Contract, table: pa.Table) -> tuple[pa.Array, list[str]]:
    """Which rows of an arrow batch are rejected (a boolean mask), and why (one text per
    rejected row, in order). Vectorised: a clean batch costs a few compute kernels."""
    checks: list[tuple[pa.Array, Any]] = []  # (mask, reason: text or function of the row)
    for key in contract.keys:
        if key in table.column_names:
            checks.append((pc.is_null(table[key]), f"primary key {key} is missing"))
    cursor = contract.cursor
    limit = contract.cursor_limit
    if cursor and limit is not None and cursor in table.column_names:
        kind = table[cursor].type
        bound: Any = None
        if pa.types.is_timestamp(kind):
            bound = pa.scalar(limit if kind.tz else limit.replace(tzinfo=None), type=kind)
        elif pa.types.is_date(kind):
            bound = pa.scalar(limit.date(), type=kind)
        if bound is not None:
            checks.append(
                (
                    pc.greater(table[cursor], bound),
                    lambda row: f"cursor {cursor} {row[cursor]} {FUTURE}",
                )
            )
    for name, allowed in contract.accepted_values.items():
        if name in table.column_names:
            column = table[name]
            kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
            outside = pc.invert(pc.is_in(column, value_set=pa.array(list(allowed), kind)))
            checks.append(
                (
                    pc.and_(outside, pc.is_valid(column)),
                    lambda row, name=name, allowed=allowed: (
                        f"{name} {row[name]!r} is not one of {', '.join(map(str, allowed))}"
                    ),
                )
            )
    masks = [pc.fill_null(mask, False) for mask, _ in checks]
    if not masks:
        return pa.array([False] * table.num_rows), []
    rejected = masks[0]
    for mask in masks[1:]:
        rejected = pc.or_(rejected, mask)
    if not pc.any(rejected).as_py():
        return rejected, []
    rows = _pylist(table.filter(rejected))
    hits = [mask.filter(rejected).to_pylist() for mask in masks]
    reasons = [
        "; ".join(
            reason(row) if callable(reason) else reason
            for (_, reason), hit in zip(checks, (column[index] for column in hits), strict=True)
            if hit
        )
        for index, row in enumerate(rows)
    ]
    return rejected, reasons


class RowGuard(ItemTransform[Any, dict[str, Any]]):
    """Rejects the rows that break ``contract`` into the quarantine journal; passes the rest.
    Placed before dlt's incremental step (placement affinity below its 1)."""

    placement_affinity: ClassVar[float] = 0.5

    def __init__(self, contract: Contract, journal: Journal) -> None:
        BaseItemTransform.__init__(self)
        self.contract = contract
        self.journal = journal
        self.rejected = 0

    def _reject(self, rows: list[Rejected]) -> None:
        self.rejected += len(rows)
        self.journal.append(rows)

    def _key(self, row: Mapping[str, Any]) -> dict[str, Any] | None:
        return {key: row.get(key) for key in self.contract.keys} or None

    def _check_arrow(self, table: pa.Table) -> pa.Table | None:
        rejected, reasons = _arrow_checks(self.contract, table)
        if not reasons:
            return table
        bad = _pylist(table.filter(rejected))
        self._reject(
            [
                Rejected(self.contract.table, reason, row, self._key(row))
                for row, reason in zip(bad, reasons, strict=True)
            ]
        )
        kept = table.filter(pc.invert(rejected))
        return kept if kept.num_rows else None

    def _check_rows(self, rows: list[Any]) -> list[Any]:
        kept, bad = [], []
        for row in rows:
            reasons = value_reasons(self.contract, row) if isinstance(row, Mapping) else []
            if reasons:
                bad.append(Rejected(self.contract.table, "; ".join(reasons), row, self._key(row)))
            else:
                kept.append(row)
        self._reject(bad)
        return kept

    def __call__(self, item: Any, meta: Any = None) -> Any:
        if isinstance(item, pa.Table):
            return self._check_arrow(item)
        if isinstance(item, pa.RecordBatch):
            checked = self._check_arrow(pa.Table.from_batches([item]))
            return checked.combine_chunks().to_batches()[0] if checked is not None else None
        if isinstance(item, list):
            if not item:
                return item
            kept = self._check_rows(item)
            return kept or None
        kept = self._check_rows([item])
        return kept[0] if kept else None


def guard(resource: DltResource, contract: Contract, journal: Journal) -> RowGuard:
    """Add a ``RowGuard`` for ``contract`` to ``resource``, before its incremental step."""
    step = RowGuard(contract, journal)
    resource.add_step(step)
    return step


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def duplicate_keys(
    paths: Sequence[str], keys: Sequence[str], *, collapse_identical: bool
) -> pa.Table:
    """The keys that occur more than once in the parquet files, with ``copies``: how many
    rows share each. ``collapse_identical`` leaves out keys whose rows agree in every column
    but dlt's own."""
    files = ", ".join(sql_string(path) for path in paths)
    key_list = ", ".join(_quoted(key) for key in keys)
    with duckdb.connect() as connection:
        relation = connection.sql(f"select * from read_parquet([{files}], union_by_name = true)")
        columns = [_quoted(c) for c in relation.columns if not c.startswith("_dlt_")]
        having = "count(*) > 1"
        if collapse_identical:
            having += f" and count(distinct hash({', '.join(columns)})) > 1"
        return connection.sql(
            f"select {key_list}, count(*) as copies from relation group by {key_list} "
            f"having {having}"
        ).to_arrow_table()


def _key_text(table: pa.Table, keys: Sequence[str]) -> pa.ChunkedArray:
    """One text value per row for the row's key (several columns joined by a separator)."""
    parts = [pc.cast(table[key], pa.string()) for key in keys]
    return parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "\x1f")


def remove_keys(paths: Sequence[str], keys: pa.Table) -> list[dict[str, Any]]:
    """Rewrites each parquet file without the rows whose key is in ``keys`` (same schema,
    same file). Returns the rows removed."""
    removed: list[dict[str, Any]] = []
    names = keys.column_names
    for path in paths:
        table = pq.read_table(path)
        if keys.num_rows == 0 or table.num_rows == 0:
            continue
        # the keys in the file's own types, so that their text forms compare
        typed = keys.cast(pa.schema([table.schema.field(name) for name in names]))
        wanted = _key_text(typed, names).combine_chunks()
        hit = pc.fill_null(pc.is_in(_key_text(table, names), value_set=wanted), False)
        if not pc.any(hit).as_py():
            continue
        removed += table.filter(hit).to_pylist()
        temporary = f"{path}.tmp"
        pq.write_table(table.filter(pc.invert(hit)), temporary)
        os.replace(temporary, path)
    return removed


def check_deletes(table: str, deleting: int, rows: int, settings: Settings) -> str | None:
    """Why deleting ``deleting`` of a table's ``rows`` must wait for a confirmation, or None:
    more than ``TRIBUTARY_DELETE_MAX_SHARE`` of them (beyond ``TRIBUTARY_DELETE_MIN_ROWS``),
    or every row of a table that has any."""
    if deleting <= 0:
        return None
    share = deleting / rows if rows else 1.0
    emptied = deleting >= rows > 0
    if not emptied and (deleting <= settings.delete_min_rows or share <= settings.delete_max_share):
        return None
    return (
        f"{table}: this run would delete {deleting:,} of its {rows:,} rows ({share:.0%}), "
        f"more than TRIBUTARY_DELETE_MAX_SHARE ({settings.delete_max_share:.0%}); nothing was "
        "deleted. If the source really lost these rows, run again with confirm_deletes "
        "(elt parameter confirm_deletes: true)"
    )
