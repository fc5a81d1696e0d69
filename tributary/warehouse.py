"""The working warehouse file, checked once before a step writes it.

DuckDB's own errors mislead here: dlt reports a truncated file as "check credentials … internet
connection may be down", and a notebook holding the file open as a bare "Conflicting lock is
held". Opening and closing the file once (milliseconds) lets each step fail first with an error
that names the setting, the file and the way out.
"""

from __future__ import annotations

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
    path = settings.warehouse
    if not path.exists():
        return path
    try:
        duckdb.connect(str(path)).close()
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
    return path
