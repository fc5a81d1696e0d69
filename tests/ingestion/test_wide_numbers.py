"""A number wider than the warehouse's widest decimal, from MariaDB: ``decimal(65, 30)``
(DuckDB's decimal holds 38 digits). Its load failed in DuckDB ("Width must be between 1 and
38", a schema update dlt calls transient), and the package it left pending failed again on
every later run. Now the run is refused before anything is read, naming the column, and the
table loads once the declaration leaves the column out. And ``bigint unsigned`` past the
warehouse's ``bigint``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from ingestion.pipeline import PipelineFailed, make_pipeline, run_source
from tests.servers import database_with, declared, query, run_sql
from tributary.settings import ConfigurationError, Settings

pytestmark = pytest.mark.integration

TABLE = """
create table ledger (
    id integer primary key, amount decimal(30, 10), huge decimal(65, 30),
    updated_at datetime(6) not null
)
"""
ROWS = """
insert into ledger values
    (1, 1.5, 12345678901234567890.123456789012345678901234567890, '2026-01-01 00:00:00.000001'),
    (2, -0.0000000001, null, '2026-01-02 00:00:00'),
    (3, null, 1, '2026-01-03 00:00:00')
"""


@pytest.fixture
def mariadb() -> Iterator[str]:
    with database_with("mariadb", TABLE, ROWS) as url:
        yield url


def test_a_decimal_wider_than_the_warehouse_is_refused_by_name(
    mariadb: str, tmp_path: Path
) -> None:
    everything = declared(tmp_path / "everything", "books", mariadb, {"ledger": None})
    for _ in range(2):  # and again: nothing was left pending to fail on
        with pytest.raises(ConfigurationError) as refused:
            run_source("books", everything)
        message = str(refused.value)
        assert "sources.books.tables.ledger: huge (DECIMAL(65, 30))" in message
        assert "columns: {exclude: [...]}" in message
        assert not everything.warehouse.exists()
        assert not make_pipeline("books", everything).has_pending_data

    settings = declared(
        tmp_path / "left_out", "books", mariadb, {"ledger": {"columns": {"exclude": ["huge"]}}}
    )
    first = run_source("books", settings)
    assert [(t.table, t.new) for t in first.tables] == [("ledger", 3)]
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        raw = warehouse.execute("select id, amount from raw_books.ledger order by id").fetchall()
        columns = {name for (name, *_) in warehouse.execute("describe raw_books.ledger").fetchall()}
    assert "huge" not in columns
    assert raw == query(mariadb, "select id, amount from ledger order by id")


COUNTERS = """
create table counters (
    id bigint unsigned primary key, n bigint unsigned, updated_at datetime(6) not null
)
"""


def _counters(settings: Settings) -> list[tuple[int, int | None]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        return warehouse.execute("select id, n from raw_books.counters order by id").fetchall()


def test_an_unsigned_bigint_past_the_warehouses_is_refused_by_name(tmp_path: Path) -> None:
    """``bigint unsigned`` loads as the warehouse's ``bigint``; a value past 2^63 - 1 failed the
    extract with "Python int too large to convert to C long", naming nothing. Now the run
    stops naming the column and the value (for a key: the table, which must be left out),
    loading nothing of that read."""
    with database_with(
        "mariadb",
        COUNTERS,
        "insert into counters values (1, 9223372036854775807, '2026-01-01'), "
        "(2, 0, '2026-01-01'), (3, null, '2026-01-01')",
    ) as url:
        settings = declared(tmp_path, "books", url, {"counters": None})
        run_source("books", settings)
        loaded = _counters(settings)
        assert loaded == query(url, "select id, n from counters order by id")

        cases = [
            (
                "insert into counters values (4, 18446744073709551615, '2026-01-02')",
                "books.counters.n: 18446744073709551615 is past the warehouse's bigint "
                "(at most 9223372036854775807)",
                "sources.books.tables.counters: columns: {exclude: [n]}",
            ),
            (
                "update counters set id = 9223372036854775808, n = 1 where id = 4",
                "books.counters.id: 9223372036854775808 is past the warehouse's bigint",
                "It is the table's key, which cannot be left out: leave the table out "
                "(sources.books: exclude: [counters])",
            ),
        ]
        for change, problem, remedy in cases:
            run_sql(url, change)
            with pytest.raises(PipelineFailed) as refused:
                run_source("books", settings)
            assert problem in str(refused.value) and remedy in str(refused.value)
            assert _counters(settings) == loaded
            assert not make_pipeline("books", settings).has_pending_data
