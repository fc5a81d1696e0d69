"""The working warehouse file, checked once before a step writes it.

DuckDB's own errors mislead here: dlt reports a truncated file as "check credentials … internet
connection may be down", and a notebook holding the file open as a bare "Conflicting lock is
held". Opening and closing the file once (milliseconds) lets each step fail first with an error
that names the setting, the file and the way out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from tributary.commands import command
from tributary.settings import ConfigurationError, Settings


def sql_string(text: str | Path) -> str:
    """``text`` as a SQL string literal: DuckDB takes file paths in ``attach`` and
    ``read_parquet`` only as literals, not as parameters."""
    return "'" + str(text).replace("'", "''") + "'"


# What DuckDB says when the bytes of a database file (or its write-ahead log) are not a
# database: truncated, overwritten, or not a DuckDB file at all.
CORRUPT_MESSAGES = (
    "not a valid duckdb database file",
    "corrupt database file",
    "could not read enough bytes",
    "corrupt wal file",
    "failure while replaying wal",
)
RESTORE_COMMAND = command("tributary", "warehouse", "restore")


class WarehouseUnreadable(ConfigurationError):
    """The working warehouse file is not a readable DuckDB database; retrying cannot help."""


class WarehouseBusy(RuntimeError):
    """Another process holds the working warehouse open. Raised from DuckDB's lock error, so
    it stays transient (retried) while the message says who should open what instead."""


def check_warehouse(settings: Settings) -> Path:
    """Open and close the working warehouse once, translating DuckDB's errors for a corrupt
    file and for a file another process holds; returns its path. A missing file passes: the
    first load makes it."""
    with warehouse_open(settings) as path:
        return path


@contextmanager
def warehouse_open(settings: Settings) -> Iterator[Path]:
    """``check_warehouse``, keeping the file open until the block ends; hold the warehouse
    lock around it. While a connection to a file is open, DuckDB keeps its instance in the
    process, so each client a step opens (a dozen a source run) attaches to it instead of
    reading the catalog again: a no-change run of a one-row table, 0.6 -> 0.4 s."""
    connection = _checked(settings)
    try:
        yield settings.warehouse
    finally:
        if connection is not None:
            connection.close()


def _checked(settings: Settings) -> duckdb.DuckDBPyConnection | None:
    path = settings.warehouse
    if not path.exists():
        return None
    try:
        return duckdb.connect(str(path))
    except duckdb.Error as exc:
        message = str(exc)
        if any(marker in message.lower() for marker in CORRUPT_MESSAGES):
            raise WarehouseUnreadable(
                f"TRIBUTARY_WAREHOUSE_PATH: {path} is not a readable DuckDB database "
                f"({message}). `{RESTORE_COMMAND}` moves it aside and makes a new working "
                "warehouse from the last published version; the next run then reloads every "
                "source."
            ) from exc
        if "conflicting lock" in message.lower() or "could not set lock" in message.lower():
            raise WarehouseBusy(
                f"TRIBUTARY_WAREHOUSE_PATH: another process holds {path} open, so no run can "
                f"write it ({message}). Only tributary's runs open the working warehouse: "
                "notebooks, BI tools and the duckdb CLI should open the published file "
                f"{settings.published} read-only instead (TRIBUTARY_PUBLISHED_PATH)."
            ) from exc
        raise
