"""A source run keeps the working warehouse open while it holds the warehouse lock (each
step's client then attaches to the open file instead of reading its catalog again), and
closes it with the lock: another process can open the file right after."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tributary.settings import Settings
from tributary.warehouse import WarehouseUnreadable, warehouse_open

OPEN_ELSEWHERE = "import duckdb, sys; duckdb.connect(sys.argv[1]).close()"


def _opens_in_another_process(path: Path) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", OPEN_ELSEWHERE, str(path)], capture_output=True, timeout=60
    )
    return done.returncode == 0


def test_the_warehouse_is_open_for_the_block_and_closed_after(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with warehouse_open(settings):  # no file yet: the first load makes it, not this
        assert not settings.warehouse.exists()
    with duckdb.connect(str(settings.warehouse)) as connection:
        connection.execute("create table t as select 42 as x")
    with warehouse_open(settings) as path:
        assert not _opens_in_another_process(path)  # held: DuckDB's lock
        with duckdb.connect(str(path)) as step:  # a step's own client in this process
            assert step.execute("select x from t").fetchall() == [(42,)]
    assert _opens_in_another_process(settings.warehouse)


def test_an_unreadable_warehouse_is_named(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    settings.warehouse.parent.mkdir(parents=True, exist_ok=True)
    settings.warehouse.write_bytes(b"not a database" * 100)
    with (
        pytest.raises(WarehouseUnreadable, match="TRIBUTARY_WAREHOUSE_PATH"),
        warehouse_open(settings),
    ):
        pass
