"""What a trial checks once a run has completed after its fault, from outside the product: SQL
on the sources and on the warehouse and published files, the files dlt leaves, and Prefect's
own database. Each check counts what it finds and says it in words; none raises."""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from tests.faults.stack import Stack
from tests.integration.sources import CENT, ExpectedMarts, expected_marts

# raw table → (where its source is: the shop database or the API's store, table, key columns)
RAW_TABLES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "raw_shop.customers": ("shop", "customers", ("customer_id",)),
    "raw_shop.stores": ("shop", "stores", ("store_id",)),
    "raw_shop.products": ("shop", "products", ("product_id",)),
    "raw_shop.orders": ("shop", "orders", ("order_id",)),
    "raw_shop.order_items": ("shop", "order_items", ("order_item_id",)),
    "raw_payments.payments": ("store", "payments", ("payment_id",)),
    "raw_fx.exchange_rates": ("store", "exchange_rates", ("date", "quote")),
}
MART_KEYS = {
    "marts.fct_orders": ("order_id",),
    "marts.dim_customers": ("customer_id",),
    "marts.fct_daily_revenue": ("order_date", "store_id"),
}
DELETED_COLUMN = "deleted_at"  # a source row with it set is deleted from the warehouse
PENDING = ("load/new", "load/normalized", "normalize/extracted")
UNFINISHED_STATES = ("RUNNING", "PENDING", "SCHEDULED", "CANCELLING")

Key = tuple[Any, ...]


@dataclass
class Figures:
    """One trial's findings; it survived when every count is zero."""

    rows_lost: int = 0
    duplicate_keys: int = 0
    mismatches: int = 0
    stuck_runs: int = 0
    orphans: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def survived(self) -> bool:
        return not (
            self.rows_lost
            or self.duplicate_keys
            or self.mismatches
            or self.stuck_runs
            or self.orphans
        )

    def mismatch(self, problem: str, count: int = 1) -> None:
        self.mismatches += count
        self.problems.append(problem)

    def expect(self, condition: bool, problem: str) -> None:
        """A fault's expected outcome: one that does not hold is a mismatch."""
        if not condition:
            self.mismatch(problem)


# --- values as both sides hold them ------------------------------------------------------


def _moment(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(sep=" ")


def normal(column: str, value: Any) -> Any:
    """One value as comparable text or number, whatever the database returned it as: SQLite
    text timestamps, PostgreSQL datetimes, DuckDB timestamps with time zone, decimals."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return _moment(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and column.endswith("_at"):
        try:
            return _moment(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, bool):
        return int(value)
    return value


def _read_source(stack: Stack, kind: str, table: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A source table's columns and rows: the shop database, or the API provider's store."""
    if kind == "shop":
        return stack.shop_table(table)
    with sqlite3.connect(stack.api_db) as connection:
        cursor = connection.execute(f"select * from {table}")
        columns = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    connection.close()
    return columns, rows


def _digest(row: tuple[Any, ...], at: dict[str, int], columns: list[str]) -> str:
    """A row's hash over ``columns`` (one it lacks counts as NULL)."""
    values = tuple(normal(c, row[at[c]]) if c in at else None for c in columns)
    return hashlib.sha256(repr(values).encode()).hexdigest()


@dataclass
class TableDiff:
    lost: list[Key] = field(default_factory=list)
    extra: list[Key] = field(default_factory=list)
    differing: list[Key] = field(default_factory=list)
    duplicates: int = 0


def compare_raw(stack: Stack, excluded: dict[str, set[Key]] | None = None) -> dict[str, TableDiff]:
    """Each raw table against its source: the same keys, once each, and per key the same hash
    over every source column (a column raw lacks counts as NULL). Soft-deleted source rows
    must be gone; ``excluded`` keys (rows a fault left quarantined) are not compared."""
    diffs = {}
    for relation, (kind, table, keys) in RAW_TABLES.items():
        columns, rows = _read_source(stack, kind, table)
        skip = (excluded or {}).get(relation, set())
        position = {name: i for i, name in enumerate(columns)}
        ordered = sorted(columns)

        def digest(row: tuple[Any, ...], at: dict[str, int]) -> str:
            return _digest(row, at, ordered)  # noqa: B023 (used within the iteration)

        def key_of(row: tuple[Any, ...], at: dict[str, int]) -> Key:
            return tuple(normal(k, row[at[k]]) for k in keys)  # noqa: B023

        deleted = position.get(DELETED_COLUMN)
        expected = {
            key_of(row, position): digest(row, position)
            for row in rows
            if deleted is None or row[deleted] is None
        }
        with duckdb.connect(str(stack.warehouse), read_only=True) as warehouse:
            schema, name = relation.split(".")
            present = {
                row[0]
                for row in warehouse.execute(
                    "select column_name from information_schema.columns "
                    "where table_schema = ? and table_name = ?",
                    [schema, name],
                ).fetchall()
            }
            if not present:
                diffs[relation] = TableDiff(lost=sorted(set(expected) - skip, key=repr))
                continue
            wanted = [c for c in ordered if c in present]
            raw_rows = warehouse.execute(
                "select " + ", ".join(f'"{c}"' for c in wanted) + f" from {relation}"
            ).fetchall()
        at = {name: i for i, name in enumerate(wanted)}
        seen = Counter(key_of(row, at) for row in raw_rows)
        got = {key_of(row, at): digest(row, at) for row in raw_rows}
        diff = TableDiff(duplicates=sum(n - 1 for n in seen.values()))
        diff.lost = sorted((set(expected) - set(got)) - skip, key=repr)
        diff.extra = sorted((set(got) - set(expected)) - skip, key=repr)
        diff.differing = sorted(
            (k for k in set(expected) & set(got) if expected[k] != got[k] and k not in skip),
            key=repr,
        )
        diffs[relation] = diff
    return diffs


# --- the marts readers get ---------------------------------------------------------------


def _mart(path: Path, relation: str) -> tuple[dict[Any, dict[str, Any]], int]:
    """A mart by its key, and how many rows share a key with another."""
    keys = MART_KEYS[relation]
    with duckdb.connect(str(path), read_only=True) as connection:
        result = connection.sql(f"select * from {relation}")
        columns = result.columns
        rows = [dict(zip(columns, row, strict=True)) for row in result.fetchall()]
    by_key: dict[Any, dict[str, Any]] = {}
    for row in rows:
        key = row.pop(keys[0]) if len(keys) == 1 else tuple(row.pop(k) for k in keys)
        by_key[key] = row
    return by_key, len(rows) - len(by_key)


def compare_marts(path: Path, expected: ExpectedMarts) -> tuple[int, int, list[str]]:
    """(rows differing, lost or extra; duplicate keys; examples) of the marts in ``path``
    against the marts computed from the sources (tests/integration/sources.py)."""
    differing, duplicates, examples = 0, 0, []
    wanted = {
        "marts.fct_orders": expected.fct_orders,
        "marts.dim_customers": expected.dim_customers,
        "marts.fct_daily_revenue": expected.fct_daily_revenue,
    }
    for relation, want in wanted.items():
        got, doubled = _mart(path, relation)
        duplicates += doubled
        bad = set(want) ^ set(got)
        for key in set(want) & set(got):
            have, should = dict(got[key]), dict(want[key])
            if relation == "marts.fct_orders":
                # Converted in floating point and summed in any order: one cent either way.
                paid, should_paid = have.pop("amount_paid_usd"), should.pop("amount_paid_usd")
                fully = have.pop("is_fully_paid")
                should.pop("is_fully_paid")
                if abs(paid - should_paid) > CENT or fully != (
                    paid >= should["order_total"] - CENT
                ):
                    bad.add(key)
            if have != should:
                bad.add(key)
        differing += len(bad)
        examples += [f"{relation} {key!r}" for key in sorted(bad, key=repr)[:3]]
    return differing, duplicates, examples


def marts_agree(path: Path) -> bool:
    """The three marts of one published version tell the same number of orders."""
    with duckdb.connect(str(path), read_only=True) as connection:
        [counts] = connection.execute(
            "select (select count(*) from marts.fct_orders), "
            "(select coalesce(sum(order_count), 0) from marts.dim_customers), "
            "(select coalesce(sum(order_count), 0) from marts.fct_daily_revenue)"
        ).fetchall()
    # dim_customers leaves out orders of soft-deleted customers; never the other way round.
    return counts[0] == counts[2] >= counts[1]


# --- Prefect's own record ----------------------------------------------------------------


def prefect_flow_runs(prefect_home: Path) -> dict[str, tuple[str, str | None]]:
    """Every `elt` flow run Prefect's database holds: id → (name, state type)."""
    database = prefect_home / "prefect.db"
    if not database.exists():
        return {}
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "select r.id, r.name, r.state_type from flow_run r join flow f on f.id = r.flow_id "
            "where f.name = 'elt'"
        ).fetchall()
    connection.close()
    return {str(run_id): (name, state) for run_id, name, state in rows}


# --- the whole check ---------------------------------------------------------------------


def check(
    stack: Stack,
    figures: Figures,
    *,
    known_runs: set[str],
    excluded: dict[str, set[Key]] | None = None,
    history_from: int = 0,
    counts: bool = True,
) -> None:
    """Every check of a trial whose last run completed. ``known_runs``: Prefect flow runs
    that existed before the trial; ``history_from``: the first of the trial's runs whose
    history must be there (a fault that destroys the warehouse takes earlier ones with it);
    ``counts``: whether ops' counts must add up to the raw tables (not across a restore)."""
    stack.api_faults()  # the expected marts are read from the API
    _check_raw(stack, figures, excluded)
    _check_pending(stack, figures)
    _check_published(stack, figures)
    _check_history(stack, figures, known_runs, history_from)
    if counts:
        _check_counts(stack, figures)
    figures.stuck_runs += sum(run.stuck for run in stack.runs)
    figures.orphans += sum(len(run.orphans) for run in stack.runs)
    for run in stack.runs:
        if run.orphans:
            figures.problems.append(
                f"{run.label}: left {', '.join(p.command[:60] for p in run.orphans)}"
            )
        if run.stuck:
            figures.problems.append(f"{run.label}: still running after the timeout")


def _check_raw(stack: Stack, figures: Figures, excluded: dict[str, set[Key]] | None) -> None:
    for relation, diff in compare_raw(stack, excluded).items():
        figures.rows_lost += len(diff.lost)
        figures.duplicate_keys += diff.duplicates
        if diff.lost:
            figures.problems.append(f"{relation}: {len(diff.lost)} lost, e.g. {diff.lost[:3]}")
        if diff.duplicates:
            figures.problems.append(f"{relation}: {diff.duplicates} duplicate keys")
        if diff.extra:
            figures.mismatch(
                f"{relation}: {len(diff.extra)} rows the source no longer has, "
                f"e.g. {diff.extra[:3]}",
                len(diff.extra),
            )
        if diff.differing:
            figures.mismatch(
                f"{relation}: {len(diff.differing)} rows differ from the source, "
                f"e.g. {diff.differing[:3]}",
                len(diff.differing),
            )


def _check_pending(stack: Stack, figures: Figures) -> None:
    pipelines = stack.data_dir / "pipelines"
    for folder in sorted(pipelines.glob("tributary_*")):
        if not folder.is_dir() or folder.name.endswith(".set-aside"):
            continue
        for place in PENDING:
            left = sorted(p.name for p in (folder / place).glob("*"))
            if left:
                figures.mismatch(f"{folder.name}/{place}: {len(left)} package(s) pending")
    for plan in pipelines.glob("*.bulk.json"):
        figures.mismatch(f"{plan.name}: a bulk-read plan left behind")


def _check_published(stack: Stack, figures: Figures) -> None:
    if stack.published_version() is None:
        figures.mismatch("nothing published after a completed run")
        return
    differing, duplicates, examples = compare_marts(
        stack.published, expected_marts(stack.shop_url, stack.api_url, stack.token)
    )
    figures.duplicate_keys += duplicates
    if duplicates:
        figures.problems.append(f"published marts: {duplicates} duplicate keys")
    if differing:
        figures.mismatch(
            f"published marts: {differing} rows differ from the source, e.g. {examples}",
            differing,
        )
    [(publisher,)] = stack.query("select flow_run_id from tributary.publication", stack.published)
    status = dict(stack.query("select flow_run_id, status from ops.pipeline_runs"))
    figures.expect(
        status.get(publisher) in ("completed", "crashed"),
        f"published by run {publisher}, which ops records as {status.get(publisher)}",
    )
    for version in sorted((stack.data_dir / "published").glob("*.duckdb")):
        figures.expect(marts_agree(version), f"{version.name}: its marts disagree")


def _check_history(stack: Stack, figures: Figures, known: set[str], history_from: int) -> None:
    recorded = dict(stack.query("select flow_run_id, status from ops.pipeline_runs"))
    flow_runs = {
        run_id: found
        for run_id, found in prefect_flow_runs(stack.prefect_home).items()
        if run_id not in known
    }
    by_name = {name: run_id for run_id, (name, _) in flow_runs.items()}
    # Every flow run of the trial, also one killed before it logged its name; after a fault
    # that destroys the warehouse, those of the runs from ``history_from`` on.
    must = (
        set(flow_runs)
        if history_from == 0
        else {
            by_name[run.flow_run_name]
            for run in stack.runs[history_from:]
            if run.flow_run_name in by_name
        }
    )
    for run_id, (name, state) in sorted(flow_runs.items()):
        if state in UNFINISHED_STATES:
            figures.mismatch(f"history: Prefect still shows flow run {name} {state}")
        if run_id in must and recorded.get(run_id) not in ("completed", "failed", "crashed"):
            figures.mismatch(f"history: flow run {name} ({state}) is not in ops.pipeline_runs")
    for run in stack.runs[history_from:]:
        run_id = by_name.get(run.flow_run_name or "")
        if run.flow_run_name and run_id is None:
            figures.mismatch(f"history: {run.label}'s flow run is not in Prefect's database")
        if run_id is None or run.killed or run.stuck:
            continue
        want = "completed" if run.completed else "failed"
        if recorded.get(run_id) != want:
            figures.mismatch(
                f"history: {run.label} exited {run.returncode}; ops says {recorded.get(run_id)}"
            )
    journal = sorted((stack.data_dir / "ops" / "runs").glob("*.json"))
    if journal:
        figures.mismatch(f"history: {len(journal)} run journal file(s) left after a completed run")


def _check_counts(stack: Stack, figures: Figures) -> None:
    """What ops.table_loads says came and went adds up to what each raw table holds: a
    resumed run counts what the run it resumed loaded, exactly once."""
    told = {
        f"{dataset}.{table}": net
        for dataset, table, net in stack.query(
            "select dataset, table_name, sum(rows_new) - sum(rows_deleted) "
            "from ops.table_loads group by all"
        )
    }
    for relation in RAW_TABLES:
        [(held,)] = stack.query(f"select count(*) from {relation}")
        if told.get(relation, 0) != held:
            figures.mismatch(
                f"counts: ops.table_loads says {relation} gained {told.get(relation, 0)} "
                f"rows net; it holds {held}"
            )
