"""Flow parameter models: bad combinations fail with a message that names the parameter."""

from __future__ import annotations

from datetime import date

import pytest
from pydantic import ValidationError

from flows.dbt_build import DbtBuildParameters
from flows.elt import EltParameters
from tributary.settings import PROJECT_ROOT

SOURCES_FILE = PROJECT_ROOT / "sources.yml"


def test_defaults_ingest_every_source_and_build_everything() -> None:
    params = EltParameters()
    assert params.sources == []
    assert params.selected() == ["shop", "payments", "fx"]
    assert params.window() is None
    # every sample source has models: auto builds what is downstream of all three
    assert params.dbt_args(params.selected()) == [
        "build",
        "--select",
        "source:shop+",
        "source:payments+",
        "source:fx+",
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"window_start": "2026-01-01"}, "window_start and window_end: give both or neither"),
        (
            {"window_start": "2026-02-01", "window_end": "2026-01-01"},
            "window_start (2026-02-01) must be before window_end (2026-01-01)",
        ),
        ({"full_refresh": ["shop.orders"]}, "set confirm_full_refresh to true"),
        (
            {"sources": ["payments"], "full_refresh": ["shop"], "confirm_full_refresh": True},
            "full_refresh: 'shop' is not in a source this run ingests (payments)",
        ),
        (
            {"sources": ["nowhere"]},
            f"sources: no source nowhere in {SOURCES_FILE}; the sources are shop, payments, fx",
        ),
        (
            {"tags": ["hourly"]},
            f"tags: no declared source is tagged hourly; the tags in {SOURCES_FILE} are intraday",
        ),
        ({"dbt_selec": ["x"]}, "dbt_selec"),
    ],
)
def test_bad_parameters_are_refused_with_a_reason(values: dict, message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        EltParameters.model_validate(values)
    assert message in str(raised.value)


def test_tags_select_the_declared_sources_that_carry_them() -> None:
    assert EltParameters(tags=["intraday"]).selected() == ["shop", "payments"]
    assert EltParameters(sources=["fx"], tags=["intraday"]).selected() == ["fx"]


def test_refresh_and_window_are_split_per_source() -> None:
    params = EltParameters(
        window_start=date(2026, 1, 1),
        window_end=date(2026, 2, 1),
        full_refresh=["shop.orders", "shop.order_items", "fx"],
        confirm_full_refresh=True,
        dbt_select=["fct_orders+"],
        dbt_exclude=["dim_customers"],
    )
    assert params.refresh_of("shop") == (False, ["orders", "order_items"])
    assert params.refresh_of("fx") == (True, [])
    assert params.refresh_of("payments") == (False, [])
    assert params.window() == (date(2026, 1, 1), date(2026, 2, 1))
    assert params.dbt_args(["shop"]) == [
        "build",
        "--select",
        "fct_orders+",
        "--exclude",
        "dim_customers",
    ]


def test_dbt_build_parameters() -> None:
    params = DbtBuildParameters(select=["stg_shop__orders+"], full_refresh=True)
    assert params.dbt_args() == ["build", "--select", "stg_shop__orders+", "--full-refresh"]
