"""The warehouse destination resolves the configuration its capabilities read once per
pipeline (dlt resolves it on every call, about eight times a run), and a new pipeline — each
run makes one — sees a setting changed since."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestion.pipeline import make_pipeline
from tributary.settings import Settings


def test_capabilities_resolve_once_per_pipeline_and_a_new_one_sees_a_changed_setting(
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

    monkeypatch.setenv("DESTINATION__DUCKDB__CREATE_INDEXES", "true")
    again = make_pipeline("shop", settings).destination
    assert again.configuration(again.spec(), accept_partial=True).create_indexes is True
    # a client's configuration (its credentials, its connection) is resolved each time
    initial = destination.spec()
    initial.dataset_name = "raw_shop"
    assert destination.configuration(initial).create_indexes is True
