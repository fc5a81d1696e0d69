"""A dbt failure names the failing test, and the same run retried resumes with `dbt retry`:
only the failed test and the models it held back run again."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from demo.api import serve_in_background
from demo.generate import generate
from ingestion import registry
from ingestion.pipeline import run_source
from tests.sourcefiles import scratch_settings
from tributary.dbt import run_dbt_resumable
from tributary.settings import DBT_PROJECT_DIR, Settings

pytestmark = pytest.mark.integration


def test_failed_build_names_the_test_and_the_retry_resumes(
    tmp_path: Path, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = tmp_path / "shop.sqlite"
    settings = Settings(data_dir=tmp_path)
    generate(f"sqlite:///{shop}", settings.demo_api_db, orders=80, seed=3)
    with serve_in_background(settings.demo_api_db, "token") as api_url:
        monkeypatch.setenv("SOURCES__PAYMENTS__TOKEN", "token")
        settings = scratch_settings(tmp_path, shop=shop, api=api_url)
        for source in registry.source_names(settings):
            run_source(source, settings)

    def set_status(status: str) -> None:
        with duckdb.connect(str(settings.warehouse)) as warehouse:
            warehouse.execute(
                "update raw_shop.orders set status = ? "
                "where order_id = (select min(order_id) from raw_shop.orders)",
                [status],
            )

    set_status("lost")  # not an accepted order status
    with pytest.raises(ValueError) as failure:
        run_dbt_resumable(["build"], settings, run_key="run-1")
    assert "accepted_values_stg_shop__orders_status" in str(failure.value)

    set_status("completed")
    resumed = run_dbt_resumable(["build"], settings, run_key="run-1")
    assert resumed.command == "retry"
    rerun = {node.unique_id.split(".")[2] for node in resumed.nodes}
    assert any(name.startswith("accepted_values_stg_shop__orders_status") for name in rerun)
    assert {"fct_orders", "dim_customers", "fct_daily_revenue"} <= rerun
    assert "stg_shop__customers" not in rerun  # built fine the first time: not rebuilt
    assert all(node.status in {"success", "pass"} for node in resumed.nodes)

    # dbt builds as many models at once as the settings say (default: half the machine's CPUs)
    monkeypatch.setenv("TRIBUTARY_DBT_THREADS", "3")
    settings = settings.model_copy(update={"dbt_threads": Settings().dbt_threads})
    full = run_dbt_resumable(["build"], settings, run_key="run-2")
    assert full.command == "build"
    log = (DBT_PROJECT_DIR / "logs" / "dbt.log").read_text(errors="replace")
    assert re.findall(r"Concurrency: (\d+) threads", log)[-1] == "3"
    assert len(full.nodes) > len(resumed.nodes)
    assert not (tmp_path / "dbt-retry" / "run-1.json").exists()
