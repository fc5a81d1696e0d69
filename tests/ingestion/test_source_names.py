"""Names that are not lower-case identifiers — `Order Lines`, `CustomerID`, a column called
`Select` — load and stay addressable on every supported database: the cursor, the keys, soft
deletes, key reconciliation and PostgreSQL's bulk stream use the source's real names, the
warehouse dlt's normalised ones (order_lines.order_line_id)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
import yaml
from sqlalchemy import create_engine, text

from ingestion.pipeline import run_source
from tests.servers import throwaway_database
from tributary.settings import Settings

CREATE = {
    "postgresql": [
        'create table "Order Lines" ("OrderLineID" bigint primary key, "Select" text,'
        ' "UpdatedAt" timestamp not null, "DeletedAt" timestamp)',
        'create table "Customer" ("CustomerID" integer primary key, "Full Name" text)',
    ],
    "mariadb": [
        "create table `Order Lines` (`OrderLineID` bigint primary key, `Select` text,"
        " `UpdatedAt` datetime(6) not null, `DeletedAt` datetime(6))",
        "create table `Customer` (`CustomerID` integer primary key, `Full Name` text)",
    ],
}
CREATE["sqlite"] = [
    statement.replace("`", '"').replace("datetime(6)", "datetime")
    for statement in CREATE["mariadb"]
]


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "names.sqlite"
        sqlite3.connect(path).close()
        yield f"sqlite:///{path}"
        return
    with throwaway_database(request.param) as url:
        yield url


def _quote(url: str, name: str) -> str:
    return f"`{name}`" if url.startswith("mysql") else f'"{name}"'


def _execute(url: str, *statements: str, rows: list[dict] | None = None) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement), rows) if rows else connection.execute(
                    text(statement)
                )
    finally:
        engine.dispose()


def _source(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return sorted(tuple(row) for row in connection.execute(text(sql)))
    finally:
        engine.dispose()


def test_mixed_case_spaced_and_reserved_names_load_and_follow_changes(
    database: str, tmp_path: Path
) -> None:
    q = lambda name: _quote(database, name)  # noqa: E731
    backend = "mariadb" if database.startswith("mysql") else database.split(":")[0].split("+")[0]
    _execute(database, *CREATE[backend])
    lines = f"{q('Order Lines')}"
    _execute(
        database,
        f"insert into {lines} ({q('OrderLineID')}, {q('Select')}, {q('UpdatedAt')})"
        " values (:id, :value, :at)",
        rows=[
            {"id": i, "value": f"line {i}", "at": datetime(2026, 1, 1, 0, 0, i % 60, tzinfo=UTC)}
            for i in range(1, 121)
        ],
    )
    _execute(
        database,
        f"insert into {q('Customer')} values (:id, :name)",
        rows=[{"id": i, "name": f"customer {i}"} for i in range(1, 11)],
    )
    path = tmp_path / "sources.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "sources": {
                    "names": {
                        "type": "sql_database",
                        "credentials": database,
                        "defaults": {
                            "cursor": "UpdatedAt",
                            "lag": 0,
                            "soft_delete": {"column": "DeletedAt"},
                        },
                        "tables": {"Order Lines": None, "Customer": None},
                    }
                }
            }
        )
    )
    settings = Settings(data_dir=tmp_path / "data", sources_file=path)

    def assert_equal() -> None:
        with duckdb.connect(str(settings.warehouse), read_only=True) as connection:
            loaded_lines = sorted(
                connection.execute(
                    'select order_line_id, "select" from raw_names.order_lines'
                ).fetchall()
            )
            loaded_customers = sorted(
                connection.execute(
                    "select customer_id, full_name from raw_names.customer"
                ).fetchall()
            )
            duplicates = connection.execute(
                "select order_line_id from raw_names.order_lines group by 1 having count(*) > 1"
            ).fetchall()
        assert duplicates == []
        assert loaded_lines == _source(
            database,
            f"select {q('OrderLineID')}, {q('Select')} from {lines} where {q('DeletedAt')} is null",
        )
        assert loaded_customers == _source(database, f"select * from {q('Customer')}")

    first = run_source("names", settings)
    assert {t.table: t.new for t in first.tables} == {"order_lines": 120, "customer": 10}
    assert_equal()
    now = datetime.now(UTC).replace(tzinfo=None)
    _execute(
        database,
        f"update {lines} set {q('Select')} = 'edited', {q('UpdatedAt')} = :now"
        f" where {q('OrderLineID')} <= 3",
        f"update {lines} set {q('DeletedAt')} = :now, {q('UpdatedAt')} = :now"
        f" where {q('OrderLineID')} = 50",
        f"delete from {lines} where {q('OrderLineID')} = 60",
        f"delete from {q('Customer')} where {q('CustomerID')} = 1",
        rows=[{"now": now}],
    )
    second = run_source("names", settings)
    by_table = {t.table: t for t in second.tables}
    assert by_table["order_lines"].updated == 3
    assert by_table["order_lines"].deleted == 2  # one flagged, one gone
    assert by_table["customer"].deleted == 1
    assert_equal()
