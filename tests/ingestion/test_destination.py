"""The warehouse destination resolves its configuration once per pipeline — the partial one
its capabilities read, and each client's per dataset and schema (dlt resolves both on every
call, some forty times a run) — and a new pipeline, which each run makes, sees a setting
changed since."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ingestion.pipeline import make_pipeline
from tributary.settings import Settings


def _bound(destination: Any, dataset: str) -> Any:
    """A client's configuration, as dlt asks for it: bound to a dataset."""
    initial = destination.spec()
    initial._bind_dataset_name(dataset)
    return destination.configuration(initial)


def test_configuration_resolves_once_per_pipeline_and_a_new_one_sees_a_changed_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path)
    destination = make_pipeline("shop", settings).destination
    # dlt's own name and type: its configuration sections and the pipeline's state stay duckdb's
    assert (destination.destination_type, destination.destination_name) == (
        "dlt.destinations.duckdb",
        "duckdb",
    )
    destination.capabilities()
    first = destination.configuration(destination.spec(), accept_partial=True)
    destination.capabilities()
    assert destination.configuration(destination.spec(), accept_partial=True) is first
    assert first.create_indexes is False
    # A client's: once per dataset (and schema) bound, the same object — credentials and DuckDB
    # connection pool — for each of the pipeline's clients.
    shop = _bound(destination, "raw_shop")
    assert _bound(destination, "raw_shop") is shop
    api = _bound(destination, "raw_api")
    assert api is not shop and (api.dataset_name, shop.dataset_name) == ("raw_api", "raw_shop")

    monkeypatch.setenv("DESTINATION__DUCKDB__CREATE_INDEXES", "true")
    assert _bound(destination, "raw_shop").create_indexes is False  # this run keeps its own
    again = make_pipeline("shop", settings).destination  # the next run
    assert again.configuration(again.spec(), accept_partial=True).create_indexes is True
    assert _bound(again, "raw_shop").create_indexes is True


def test_a_runs_sql_clients_share_one_configuration_and_connection_pool(tmp_path: Path) -> None:
    pipeline = make_pipeline("shop", Settings(data_dir=tmp_path))
    with pipeline.sql_client() as first:
        first.execute_sql("create schema if not exists raw_shop")
        first.execute_sql("create table raw_shop.t as select 1 as x")
        with pipeline.sql_client() as second:
            assert second.credentials is first.credentials
            assert second.execute_sql("select x from raw_shop.t") == [(1,)]
    with pipeline.sql_client() as third:  # the last borrower closed the file; it reopens
        assert third.execute_sql("select count(*) from raw_shop.t") == [(1,)]
