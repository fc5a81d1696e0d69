"""The integration modules' shared set-up: the small shop after one `elt` run, made once."""

from __future__ import annotations

import pytest

from demo.generate import generate
from demo.paths import shop_url
from flows.elt import elt
from tests.integration.stack import END, ORDERS, SEED, Loaded, serving
from tributary.settings import Settings


@pytest.fixture(scope="session")
def loaded_shop(tmp_path_factory: pytest.TempPathFactory, prefect_server: None) -> Loaded:
    """Generated and loaded once per session; modules copy its folder (``Loaded.copy``) and
    never write it."""
    data_dir = tmp_path_factory.mktemp("loaded-shop")
    settings = Settings(data_dir=data_dir)
    generate(shop_url(settings), settings.demo_api_db, orders=ORDERS, seed=SEED, end=END)
    with serving(data_dir):
        report = elt()
    return Loaded(data_dir, report)
