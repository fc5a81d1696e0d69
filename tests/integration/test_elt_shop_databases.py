"""The `elt` flow end to end, dbt included, on a shop living in PostgreSQL and in MariaDB: the
raw keys equal the source's, and every mart equals values computed from the source — after the
first load and after simulated changes with deletes. A PostgreSQL shop's `int4` keys load as
INTEGER while the marts' contracts say BIGINT; staging casts them, so the marts build anyway."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from demo.generate import generate
from demo.paths import shop_url
from demo.simulate import SimulationResult, simulate
from flows.elt import elt
from tests.integration.sources import ExpectedMarts, expected_marts, read_shop
from tests.integration.stack import serving
from tests.integration.test_elt_flow import Shop, assert_marts_match, assert_no_duplicate_keys
from tests.servers import throwaway_database
from tributary.report import RunReport
from tributary.settings import Settings

pytestmark = pytest.mark.integration

ORDERS = 300
SEED = 17
END = datetime(2026, 9, 1, 12, 0, 0)
# table → (key, the rows that must reach raw): soft-deleted rows never do
SHOP_KEYS = {
    "customers": ("customer_id", "deleted_at is null"),
    "stores": ("store_id", "1 = 1"),
    "products": ("product_id", "deleted_at is null"),
    "orders": ("order_id", "1 = 1"),
    "order_items": ("order_item_id", "1 = 1"),
}


class ServerShop(Shop):
    """A shop in a database server, read through its SQLAlchemy URL."""

    def expected(self) -> ExpectedMarts:
        return expected_marts(shop_url(self.settings), self.api_url, self.token)


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def shop(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, prefect_server: None
) -> Iterator[ServerShop]:
    """A throwaway shop database on the server, its API, and the environment `elt` reads."""
    with throwaway_database(request.param) as url:
        data_dir = tmp_path_factory.mktemp(f"elt-{request.param}")
        settings = Settings(data_dir=data_dir)
        generate(url, settings.demo_api_db, orders=ORDERS, seed=SEED, end=END)
        with serving(data_dir, secrets.token_urlsafe(16), shop_url=url) as served:
            yield ServerShop(settings=served.settings, api_url=served.api_url, token=served.token)


@pytest.fixture(scope="module")
def first_run(shop: ServerShop) -> RunReport:
    return elt()


@pytest.fixture(scope="module")
def changes(shop: ServerShop, first_run: RunReport) -> SimulationResult:
    return simulate(
        shop_url(shop.settings),
        shop.settings.demo_api_db,
        now=datetime.now(UTC).replace(tzinfo=None, microsecond=0),
        seed=SEED + 1,
        deletes=True,
    )


@pytest.fixture(scope="module")
def second_run(shop: ServerShop, changes: SimulationResult) -> RunReport:
    return elt()


def assert_raw_keys_equal_the_source(shop: ServerShop) -> None:
    for table, (key, live) in SHOP_KEYS.items():
        source = read_shop(shop_url(shop.settings), f"select {key} from {table} where {live}")
        raw = shop.query(f"select {key} from raw_shop.{table}")
        assert len(raw) == len(set(raw)), table
        assert {row[0] for row in raw} == {row[0] for row in source}, table


def test_first_run_builds_every_mart_equal_to_the_source(
    shop: ServerShop, first_run: RunReport
) -> None:
    assert first_run.dbt is not None
    assert first_run.dbt.statuses.keys() <= {"success", "pass"}, first_run.dbt.statuses
    assert first_run.dbt.models_built >= 3
    assert_raw_keys_equal_the_source(shop)
    assert_marts_match(shop, shop.expected())
    assert_no_duplicate_keys(shop)


def test_mart_keys_are_bigint_whatever_the_raw_type(shop: ServerShop, first_run: RunReport) -> None:
    types = dict(
        shop.query(
            "select table_name || '.' || column_name, data_type from information_schema.columns"
            " where table_schema = 'marts' and column_name like '%\\_id' escape '\\'"
        )
    )
    assert types and set(types.values()) == {"BIGINT"}, types


def test_changes_and_deletes_reach_the_marts_exactly(
    shop: ServerShop, changes: SimulationResult, second_run: RunReport
) -> None:
    assert changes.new_order_ids and changes.hard_deleted_order_ids
    assert second_run.dbt is not None
    assert second_run.dbt.statuses.keys() <= {"success", "pass"}, second_run.dbt.statuses
    fct_orders = shop.mart("marts.fct_orders")
    assert set(changes.new_order_ids) <= set(fct_orders)
    assert not set(changes.hard_deleted_order_ids) & set(fct_orders)
    assert_raw_keys_equal_the_source(shop)
    assert_marts_match(shop, shop.expected())
    assert_no_duplicate_keys(shop)
