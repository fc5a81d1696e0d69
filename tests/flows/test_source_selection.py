"""Runs follow the sources file: sources by name or tag, and dbt builds only the models
downstream of what was loaded — a newly declared source with no models loads, reports, and
builds nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
import yaml
from pydantic import ValidationError

from flows.elt import EltParameters, elt
from tributary.dbt import dbt_sources
from tributary.settings import DBT_PROJECT_DIR, PROJECT_ROOT, get_settings


@pytest.fixture
def with_crm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The default sources plus `crm`, a SQLite database no dbt model reads, as the process's
    sources file."""
    crm = tmp_path / "crm.sqlite"
    with sqlite3.connect(crm) as connection:
        connection.executescript(
            "create table contacts (contact_id integer primary key, email text not null,"
            " updated_at timestamp not null);"
            "insert into contacts values (1, 'a@example.com', '2026-01-01 00:00:00'),"
            " (2, 'b@example.com', '2026-01-02 00:00:00'), (3, 'c@example.com', '2026-01-03');"
        )
    data = yaml.safe_load((PROJECT_ROOT / "sources.yml").read_text())
    data["sources"]["crm"] = {
        "type": "sql_database",
        "credentials": f"sqlite:///{crm}",
        "tags": ["crm", "intraday"],
        "defaults": {"cursor": "updated_at"},
        "tables": {"contacts": None},
    }
    path = tmp_path / "sources.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("TRIBUTARY_SOURCES_FILE", str(path))
    monkeypatch.setenv("TRIBUTARY_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield crm
    get_settings.cache_clear()


def test_the_dbt_project_knows_the_sample_sources() -> None:
    assert dbt_sources(DBT_PROJECT_DIR) == {"shop", "payments", "fx"}


def test_tags_select_the_sources_that_carry_them(with_crm: Path) -> None:
    assert EltParameters(tags=["intraday"]).selected() == ["shop", "payments", "crm"]
    assert EltParameters(tags=["crm"]).selected() == ["crm"]
    assert EltParameters().selected() == ["shop", "payments", "fx", "crm"]
    with pytest.raises(ValidationError, match=r"no declared source is tagged weekly; the tags"
                       r" in .*sources.yml are crm, intraday"):  # fmt: skip
        EltParameters(tags=["weekly"])


def test_dbt_builds_what_is_downstream_of_the_loaded_sources(with_crm: Path) -> None:
    params = EltParameters()
    assert params.dbt_args(["shop", "payments"]) == [
        "build",
        "--select",
        "source:shop+",
        "source:payments+",
    ]
    assert params.dbt_args(["crm"]) is None  # no models read it
    assert params.dbt_args(["crm", "fx"]) == ["build", "--select", "source:fx+"]
    assert EltParameters(dbt="all").dbt_args(["crm"]) == ["build"]
    assert EltParameters(dbt="skip").dbt_args(["shop"]) is None
    assert EltParameters(dbt="skip", dbt_select=["fct_orders"]).dbt_args(["crm"]) == [
        "build",
        "--select",
        "fct_orders",
    ]


def test_a_source_without_models_loads_and_reports(with_crm: Path, prefect_server: None) -> None:
    report = elt(EltParameters(sources=["crm"]))
    [load] = report.loads
    assert (load.source, load.dataset) == ("crm", "raw_crm")
    assert [(t.table, t.loaded, t.new) for t in load.tables] == [("contacts", 3, 3)]
    assert report.dbt is None and report.published is None
    warehouse = get_settings().warehouse
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        rows = connection.execute(
            "select contact_id, email from raw_crm.contacts order by 1"
        ).fetchall()
        runs = connection.execute("select status from ops.pipeline_runs").fetchall()
    assert rows == [(1, "a@example.com"), (2, "b@example.com"), (3, "c@example.com")]
    assert runs == [("completed",)]
