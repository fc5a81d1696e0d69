"""A SQLite database whose schema came from MySQL: timestamps declared ``datetime(6)`` and
``datetime(3)`` (fractional seconds; SQLAlchemy reads the number as a time zone flag, which dlt
refused). Loaded from a sources file, then followed through an update and an insert: the
warehouse equals the source's own text parsed here, microseconds included, each key once."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

import duckdb
import yaml

from ingestion.pipeline import run_source
from tributary.settings import Settings

SCHEMA = """
create table readings (
    reading_id integer primary key,
    sensor varchar(20) not null,
    taken_at datetime(3),
    updated_at datetime(6) not null
)
"""
ROWS = [
    (1, "north", "2024-01-02 03:04:05.123", "2024-01-02 03:04:05.123456"),
    (2, "south", None, "2024-01-03 00:00:00.000001"),
    (3, "east", "1969-12-31 23:59:59.999", "2024-01-03 12:00:00"),
]


def _source(path: Path) -> dict[int, tuple[str, datetime | None, datetime]]:
    """Every row as the source holds it, its timestamp text parsed by Python."""
    with sqlite3.connect(path) as connection:
        rows = connection.execute("select * from readings").fetchall()
    return {
        key: (
            sensor,
            datetime.fromisoformat(taken) if taken else None,
            datetime.fromisoformat(updated),
        )
        for key, sensor, taken, updated in rows
    }


def _warehouse(settings: Settings) -> dict[int, tuple[str, datetime | None, datetime]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        rows = warehouse.sql(
            "select reading_id, sensor, taken_at, updated_at from raw_lab.readings"
        ).fetchall()
        [(count, keys)] = warehouse.sql(
            "select count(*), count(distinct reading_id) from raw_lab.readings"
        ).fetchall()
    assert count == keys, "duplicate keys"
    return {key: (sensor, taken, updated) for key, sensor, taken, updated in rows}


def test_mysql_style_timestamp_precision_loads_and_follows_changes(tmp_path: Path) -> None:
    database = tmp_path / "lab.sqlite"
    with sqlite3.connect(database) as connection:
        connection.execute(SCHEMA)
        connection.executemany("insert into readings values (?, ?, ?, ?)", ROWS)
    sources = tmp_path / "sources.yml"
    lab = {
        "type": "sql_database",
        "credentials": f"sqlite:///{database}",
        "defaults": {"mode": "merge", "cursor": "updated_at"},
        "tables": {"readings": None},
    }
    sources.write_text(yaml.safe_dump({"sources": {"lab": lab}}))
    settings = Settings(data_dir=tmp_path / "data", sources_file=sources)

    first = run_source("lab", settings)
    assert [(t.table, t.new) for t in first.tables] == [("readings", 3)]
    assert _warehouse(settings) == _source(database)

    with sqlite3.connect(database) as connection:
        connection.execute(
            "update readings set sensor = 'west', updated_at = '2024-02-01 00:00:00.654321' "
            "where reading_id = 2"
        )
        connection.execute(
            "insert into readings values (4, 'up', '2024-02-01 00:00:01.5', "
            "'2024-02-01 00:00:01.000002')"
        )
    second = run_source("lab", settings)
    [readings] = second.tables
    assert (readings.new, readings.updated, readings.deleted) == (1, 1, 0)
    assert _warehouse(settings) == _source(database)
