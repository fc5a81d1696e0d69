"""MariaDB's ``time`` holds durations (-838:59:59 to 838:59:59), the warehouse's ``time`` a
time of day. SQLAlchemy's MySQL ``TIME`` dropped whole days on the way (``25:30:00`` loaded as
01:30, ``-01:00:00`` as 23:00, ``838:59:59`` as 22:59:59) and the run said it completed. Now a
value outside a day stops the read, naming the column, the value and the setting that leaves
the column out; nothing of it loads, nothing stays pending, and times of day load exactly."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import time, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ingestion.pipeline import PipelineFailed, make_pipeline, run_source
from tests.servers import database_with, declared, query, run_sql
from tributary.settings import Settings

pytestmark = pytest.mark.integration

TABLE = """
create table shifts (
    id integer primary key, length time, starts time(3), updated_at datetime(6) not null
)
"""
ROWS = """
insert into shifts values
    (1, '08:00:00', '06:30:00.250', '2026-01-01 00:00:00'),
    (2, '23:59:59', '00:00:00', '2026-01-01 00:00:01'),
    (3, null, '23:59:59.999', '2026-01-01 00:00:02')
"""


@pytest.fixture
def mariadb() -> Iterator[str]:
    with database_with("mariadb", TABLE, ROWS) as url:
        yield url


def _time_of_day(value: timedelta | None) -> time | None:
    """What a time of day from MariaDB (a ``timedelta`` from its driver) must load as."""
    if value is None:
        return None
    assert timedelta(0) <= value < timedelta(days=1)
    minutes, seconds = divmod(value.seconds, 60)
    return time(minutes // 60, minutes % 60, seconds, value.microseconds)


def _source(url: str, columns: str) -> list[tuple[Any, ...]]:
    return [
        (row[0], *(_time_of_day(value) for value in row[1:]))
        for row in query(url, f"select id, {columns} from shifts order by id")
    ]


def _warehouse(settings: Settings, columns: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        return warehouse.execute(f"select id, {columns} from raw_hr.shifts order by id").fetchall()


def _refused(settings: Settings, column: str, value: str) -> None:
    with pytest.raises(PipelineFailed) as refused:
        run_source("hr", settings)
    message = str(refused.value)
    assert f"hr.shifts.{column}: the time {value} is not a time of day" in message
    assert f"sources.hr.tables.shifts: columns: {{exclude: [{column}]}}" in message
    assert not make_pipeline("hr", settings).has_pending_data


def test_times_of_day_load_exactly_and_a_duration_stops_the_read(
    mariadb: str, tmp_path: Path
) -> None:
    settings = declared(tmp_path / "all", "hr", mariadb, {"shifts": None})
    first = run_source("hr", settings)
    assert [(t.table, t.new) for t in first.tables] == [("shifts", 3)]
    loaded = _warehouse(settings, "length, starts")
    assert loaded == _source(mariadb, "length, starts")
    assert loaded[0][1:] == (time(8), time(6, 30, 0, 250000))

    run_sql(mariadb, "insert into shifts values (4, '25:30:00', '07:00:00', '2026-01-02')")
    for _ in range(2):  # and again: the failed read left nothing to load or to fail on
        _refused(settings, "length", "25:30:00")
        assert _warehouse(settings, "length, starts") == loaded

    run_sql(mariadb, "update shifts set length = '-00:00:01' where id = 4")
    _refused(settings, "length", "-00:00:01")
    run_sql(mariadb, "update shifts set length = '838:59:59' where id = 4")
    _refused(settings, "length", "838:59:59")
    run_sql(mariadb, "update shifts set length = '24:00:00' where id = 4")
    _refused(settings, "length", "24:00:00")
    run_sql(mariadb, "update shifts set length = '01:00:00', starts = '-00:00:00.25' where id = 4")
    _refused(settings, "starts", "-00:00:00.25")
    assert _warehouse(settings, "length, starts") == loaded

    run_sql(mariadb, "update shifts set length = '25:30:00', starts = '07:00:00' where id = 4")
    left_out = declared(
        tmp_path / "left_out", "hr", mariadb, {"shifts": {"columns": {"exclude": ["length"]}}}
    )
    again = run_source("hr", left_out)
    assert [(t.table, t.new) for t in again.tables] == [("shifts", 4)]
    assert _warehouse(left_out, "starts") == _source(mariadb, "starts")
