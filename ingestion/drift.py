"""Schema drift: a source's columns that changed since the last load, told as drift.

A database source is compared before anything is read: its reflected columns against the
columns the pipeline's schema holds from earlier loads. An API source can only be compared
after its rows are normalised: fields it sent for the first time, and variant columns (a
field that arrived with another type). Under a source's contract mode ``evolve`` the load
goes on and the changes are reported; under ``freeze`` nothing of that run loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

ContractMode = Literal["evolve", "freeze"]
Columns = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class SchemaChange:
    """One column of one table that is not what earlier loads saw."""

    table: str
    column: str
    change: Literal["added", "removed", "renamed", "type changed"]
    detail: str
    previous: str | None = None  # a renamed column's old name

    def describe(self) -> str:
        return f"{self.table}.{self.column} {self.change} ({self.detail})"


# Marks a column in the pipeline's schema that the source no longer has (reported once).
GONE = "x-tributary-gone"


def _data_columns(columns: Columns) -> dict[str, Mapping[str, Any]]:
    return {
        name: column
        for name, column in columns.items()
        if not name.startswith("_dlt") and not column.get("variant") and not column.get(GONE)
    }


def stored_columns(
    schema_tables: Mapping[str, Mapping[str, Any]], *, variants: bool = False
) -> dict[str, dict[str, Any]]:
    """The data columns per table of a dlt schema's tables, for the tables that hold data;
    ``variants``: with dlt's variant columns (a field that arrived with another type)."""
    return {
        name: {
            column: hints
            for column, hints in table.get("columns", {}).items()
            if column in _data_columns(table["columns"]) or (variants and hints.get("variant"))
        }
        for name, table in schema_tables.items()
        if not name.startswith("_dlt") and table.get("columns")
    }


def reflected_changes(table: str, stored: Columns, current: Columns) -> list[SchemaChange]:
    """A database table's columns now (reflected) against those earlier loads stored. A
    column removed and another added with the same type are reported as a rename."""
    stored, current = _data_columns(stored), _data_columns(current)
    removed = [name for name in stored if name not in current]
    added = [name for name in current if name not in stored]
    changes = []
    for name in list(removed):
        kind = stored[name].get("data_type")
        twins = [other for other in added if current[other].get("data_type") == kind]
        if (
            kind
            and len(twins) == 1
            and sum(stored[other].get("data_type") == kind for other in removed) == 1
        ):
            [new_name] = twins
            removed.remove(name)
            added.remove(new_name)
            changes.append(
                SchemaChange(table, new_name, "renamed", f"was {name}, both {kind}", name)
            )
    changes += [
        SchemaChange(table, name, "removed", f"was {stored[name].get('data_type', 'untyped')}")
        for name in removed
    ]
    changes += [
        SchemaChange(table, name, "added", current[name].get("data_type") or "untyped")
        for name in added
    ]
    for name in stored.keys() & current.keys():
        before, after = stored[name].get("data_type"), current[name].get("data_type")
        if before and after and before != after:
            changes.append(SchemaChange(table, name, "type changed", f"{before} → {after}"))
    return sorted(changes, key=lambda change: (change.table, change.column))


def normalized_changes(table: str, stored: Columns, current: Columns) -> list[SchemaChange]:
    """An API table's columns after this run's rows were normalised against those before:
    fields sent for the first time, and fields that arrived with another type (dlt stores
    those in a variant column, ``<field>__v_<type>``)."""
    changes = []
    for name, column in current.items():
        if name.startswith("_dlt") or name in stored:
            continue
        if column.get("variant"):
            field, _, kind = name.partition("__v_")
            changes.append(
                SchemaChange(table, field, "type changed", f"now also {kind}, kept in {name}")
            )
        else:
            changes.append(SchemaChange(table, name, "added", column.get("data_type") or "untyped"))
    return sorted(changes, key=lambda change: (change.table, change.column))


def reload_instruction(source: str, tables: Iterable[str]) -> str:
    """How to reload ``tables`` of ``source`` whole: the ``elt`` flow's full refresh."""
    listed = ", ".join(f'"{source}.{table}"' for table in dict.fromkeys(tables))
    return f"the elt flow with full_refresh [{listed}] and confirm_full_refresh: true"


def retyped_message(source: str, dataset: str, changes: list[SchemaChange]) -> str:
    """A database column whose type changed: its warehouse column keeps the old type, and dlt
    would convert every new value to it (5.75 into a bigint column loads as 6), whatever the
    contract. The table has to be reloaded to take the new type."""
    listed = "; ".join(f"{dataset}.{change.describe()}" for change in changes)
    reload = reload_instruction(source, (change.table for change in changes))
    return (
        f"{source}: a column's type changed in the source — {listed}. Its warehouse column "
        "keeps the old type, which would convert the new values (and could round them), so "
        f"nothing of this run was loaded. Reload the table to take the new type: {reload}."
    )


def frozen_message(source: str, dataset: str, changes: list[SchemaChange]) -> str:
    listed = "; ".join(f"{dataset}.{change.describe()}" for change in changes)
    return (
        f"{source}: the source's columns changed — {listed}. Its schema contract is freeze "
        "(TRIBUTARY_SCHEMA_CONTRACT), so nothing of this run was loaded. Update the models "
        "that read these columns, then set the contract to evolve for one run (or for good)."
    )
