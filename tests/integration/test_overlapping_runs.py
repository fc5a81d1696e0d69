"""Two `elt` runs at once against one warehouse both complete — the second waits for the
warehouse lock instead of failing on DuckDB's file lock — and every row is there once."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
from filelock import FileLock

from demo.api import serve_in_background
from demo.generate import generate
from demo.paths import shop_sqlite_path, shop_url
from tests.integration.sources import expected_marts
from tributary.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration
# The first run waits for the warehouse; the second for the first (its shop pipeline, then the
# warehouse): each says so in its log.
WAITING = "Waiting for the "


def test_two_overlapping_local_runs_both_complete(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    generate(shop_url(settings), settings.demo_api_db, orders=300, seed=21)
    token = secrets.token_urlsafe(12)
    with serve_in_background(settings.demo_api_db, token) as api_url:
        env = {
            **os.environ,
            "TRIBUTARY_DATA_DIR": str(tmp_path),
            "TRIBUTARY_PAYMENTS_API_URL": api_url,
            "TRIBUTARY_FX_API_URL": api_url,
            "SOURCES__PAYMENTS__TOKEN": token,
            "PREFECT_HOME": str(tmp_path / "prefect"),
        }
        env.pop("PREFECT_API_URL", None)  # no server: the lock file serialises the writers
        # Another writer holds the warehouse while both runs start: they must wait for it, not
        # fail with DuckDB's "could not set lock".
        with FileLock(f"{settings.warehouse}.lock"), duckdb.connect(str(settings.warehouse)):
            runs = [
                subprocess.Popen(
                    [sys.executable, "-m", "flows.elt"],
                    cwd=PROJECT_ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for _ in range(2)
            ]
            outputs: list[list[str]] = [[], []]
            readers = [
                threading.Thread(target=lambda r=run, o=out: o.extend(r.stdout), daemon=True)
                for run, out in zip(runs, outputs, strict=True)
            ]
            for reader in readers:
                reader.start()
            deadline = time.monotonic() + 300
            while not all(any(WAITING in line for line in out) for out in outputs):
                failed = [run.returncode for run in runs if run.poll() is not None]
                assert not failed, "".join(outputs[0] + outputs[1])[-3000:]
                assert time.monotonic() < deadline, "the runs never waited for a lock"
                time.sleep(0.5)
        for run, reader in zip(runs, readers, strict=True):
            run.wait(timeout=600)
            reader.join(timeout=10)
        for run, lines in zip(runs, outputs, strict=True):
            output = "".join(lines)
            assert run.returncode == 0, output[-3000:]
            assert "Finished in state Completed()" in output
        expected = expected_marts(shop_sqlite_path(settings), api_url, token)

    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        for table, key in [
            ("raw_shop.orders", "order_id"),
            ("raw_payments.payments", "payment_id"),
            ("marts.fct_orders", "order_id"),
            ("marts.dim_customers", "customer_id"),
        ]:
            rows, keys = warehouse.sql(
                f"select count(*), count(distinct {key}) from {table}"
            ).fetchone()
            assert rows == keys, table
        [(orders,)] = warehouse.sql("select count(*) from marts.fct_orders").fetchall()
        revenue = warehouse.sql("select sum(revenue) from marts.fct_daily_revenue").fetchone()[0]
    assert orders == len(expected.fct_orders) == 300
    assert revenue == sum(day["revenue"] for day in expected.fct_daily_revenue.values())
