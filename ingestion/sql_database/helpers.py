"""Private logic of the sql_database kind: which tables a declaration selects and how each
one loads."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlt.common.configuration.specs import ConnectionStringCredentials
from dlt.common.normalizers.naming.snake_case import NamingConvention
from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import MONEY
from sqlalchemy.engine import URL, make_url
from sqlalchemy.sql import sqltypes

from ingestion.declared import SqlDatabaseSource, matches
from ingestion.sql_database.settings import DRIVERS
from tributary.settings import ConfigurationError

# dlt's naming in the warehouse: `Order Lines` → order_lines, `CustomerID` → customer_id.
NAMING = NamingConvention()


# DuckDB's widest DECIMAL.
MAX_DECIMAL_DIGITS = 38


def exact_decimal(kind: Any) -> bool:
    """Whether a reflected type is an exact decimal (``numeric``, ``decimal``): SQLAlchemy
    types floats and integers as ``Numeric`` too."""
    return (
        isinstance(kind, sqltypes.Numeric)
        and bool(kind.asdecimal)
        and not isinstance(kind, sqltypes.Float | sqltypes.Integer)
    )


@dataclass(frozen=True)
class TablePlan:
    """How one table loads, every default applied and checked against the database."""

    table: str
    mode: str  # merge | replace | append
    keys: list[str]
    cursor: str | None
    lag: float | None
    soft_delete: str | None  # the column
    delete_flagged: bool  # policy delete: a flagged row is deleted from the warehouse
    reconcile_deletes: bool
    accepted_values: dict[str, tuple[str, ...]]
    columns: list[str] | None = None  # the columns read; None: all
    mask: tuple[str, ...] = ()
    raw_table: str = ""  # the warehouse's name for it (dlt's naming: snake_case)
    raw_columns: dict[str, str] = field(default_factory=dict)  # every column read → its raw name
    money: tuple[str, ...] = ()  # PostgreSQL money columns read: they load as amounts

    def raw(self, column: str) -> str:
        return self.raw_columns[column]

    @property
    def incremental(self) -> bool:
        return self.cursor is not None and self.mode != "replace"


def database_url(credentials: ConnectionStringCredentials | str) -> URL:
    """The database as a SQLAlchemy URL, with the driver tributary installs for its dialect
    when the URL names none (``postgresql://`` → psycopg, ``mysql://`` → PyMySQL)."""
    url = credentials.to_url() if isinstance(credentials, ConnectionStringCredentials) else None
    url = url or make_url(credentials)
    if "+" not in url.drivername and url.drivername in DRIVERS:
        url = url.set(drivername=f"{url.drivername}+{DRIVERS[url.drivername]}")
    return url


def check_sqlite_file(name: str, url: URL) -> None:
    """A SQLite URL must name a file that exists: connecting would create an empty one, and
    the source would then report every table missing instead of the file."""
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    if url.query.get("uri") or Path(database).is_file():
        return
    raise ConfigurationError(
        f"sources.{name}.credentials: no SQLite database at {Path(database).resolve()}; "
        "create it there or point the source at another database"
    )


def select_tables(name: str, declaration: SqlDatabaseSource, available: Sequence[str]) -> list[str]:
    """The database's tables the declaration selects, in the database's order: each named
    table must exist and each wildcard match one, or the error lists what the database has."""
    where = f"sources.{name}.tables"
    problems = []
    for pattern in declaration.tables:
        if not any(matches(pattern, table) for table in available):
            problems.append(
                f"{where}.{pattern}: "
                + ("matches no table" if "*" in pattern or "?" in pattern else "no such table")
            )
    if problems:
        listed = ", ".join(available) or "none"
        schema = f" (schema {declaration.schema_})" if declaration.schema_ else ""
        raise ConfigurationError("; ".join(problems) + f"; the database{schema} has: {listed}")
    return [
        table
        for table in available
        if any(matches(pattern, table) for pattern in declaration.tables)
        and not any(matches(pattern, table) for pattern in declaration.exclude)
    ]


def plan_table(name: str, declaration: SqlDatabaseSource, reflected_table: Table) -> TablePlan:
    """The table's options checked against its columns (as reflected): every named column
    exists, a merge has a key (declared or the table's own), an append has a cursor."""
    table = reflected_table.name
    options = declaration.options(table)
    where = f"sources.{name}.tables.{table}"
    columns = [column.name for column in reflected_table.columns]
    reflected = [column.name for column in reflected_table.primary_key.columns]
    declared = options.primary_key
    keys = ([declared] if isinstance(declared, str) else list(declared)) if declared else reflected
    mode = options.mode or "merge"

    def missing(what: str, names: Collection[str]) -> None:
        absent = [column for column in names if column not in columns]
        if absent:
            raise ConfigurationError(
                f"{where}: {what} {', '.join(absent)}: no such column in {table}; its columns "
                f"are {', '.join(columns)}"
            )

    missing("primary_key", keys)
    if mode == "merge" and not keys:
        raise ConfigurationError(
            f"{where}: mode merge needs a primary_key and {table} has none; declare "
            "`primary_key` (the columns that identify a row) or use `mode: replace`"
        )
    cursor = options.cursor
    # A cursor named in the defaults applies to the tables that have the column; one named
    # for the table itself must exist.
    table_entry = next((declaration.tables[p] for p in declaration.tables if p == table), None)
    if cursor and cursor not in columns and not (table_entry and table_entry.cursor):
        cursor = None
    if cursor:
        missing("cursor", [cursor])
    if mode == "append" and not cursor:
        raise ConfigurationError(
            f"{where}: mode append needs a cursor (a column that grows with each new row, e.g. "
            "an identity or created_at), or every run would append the whole table again"
        )
    soft = options.soft_delete
    soft_column = soft.column if soft and soft.column in columns else None
    if soft and not soft_column and table_entry and table_entry.soft_delete:
        missing("soft_delete.column", [soft.column])
    accepted = options.accepted_values or {}
    missing("accepted_values", list(accepted))
    selection = options.columns
    read = columns
    if selection is not None:
        missing("columns.include", selection.include or [])
        missing("columns.exclude", selection.exclude)
        read = [
            column
            for column in columns
            if (selection.include is None or column in selection.include)
            and column not in selection.exclude
        ]
        needed = [*keys, *([cursor] if cursor else []), *([soft_column] if soft_column else [])]
        left_out = [column for column in needed if column not in read]
        if left_out:
            raise ConfigurationError(
                f"{where}: columns leaves out {', '.join(left_out)}, which the table's key, "
                "cursor or soft delete needs"
            )
    mask = list(options.mask or [])
    missing("mask", mask)
    too_wide = [
        f"{column.name} ({column.type})"
        for column in reflected_table.columns
        if column.name in read
        and column.name not in mask
        and exact_decimal(column.type)
        and (column.type.precision or 0) > MAX_DECIMAL_DIGITS
    ]
    if too_wide:
        raise ConfigurationError(
            f"{where}: {', '.join(too_wide)}: more digits than the warehouse's widest decimal "
            f"({MAX_DECIMAL_DIGITS}); its load would fail, and fail again on every later run. "
            f"Leave the column out (`columns: {{exclude: [...]}}`) or mask it."
        )
    if mask:
        protected = [c for c in mask if c in keys or c in (cursor, soft_column)]
        if protected:
            raise ConfigurationError(
                f"{where}: mask {', '.join(protected)}: a key, cursor or soft-delete column "
                "cannot be masked (loads and deletes match on its value)"
            )
        if declaration.mask_salt is None:
            raise ConfigurationError(
                f"sources.{name}.mask_salt: {table} masks {', '.join(mask)} and no salt is "
                "declared; add mask_salt: {secret: sources." + name + ".mask_salt}"
            )
    return TablePlan(
        table=table,
        mode=mode,
        keys=keys,
        cursor=cursor if mode != "replace" else None,
        lag=options.lag if mode == "merge" else None,
        soft_delete=soft_column,
        delete_flagged=bool(soft_column) and soft is not None and soft.policy == "delete",
        reconcile_deletes=mode == "merge" and options.reconcile_deletes is not False,
        accepted_values={column: tuple(values) for column, values in accepted.items()},
        columns=read if selection is not None else None,
        mask=tuple(column for column in mask if column in read),
        raw_table=NAMING.normalize_table_identifier(table),
        raw_columns={column: NAMING.normalize_identifier(column) for column in read},
        money=tuple(
            column.name
            for column in reflected_table.columns
            if column.name in read and isinstance(column.type, MONEY)
        ),
    )
