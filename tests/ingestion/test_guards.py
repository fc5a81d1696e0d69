"""Guards between the sources and raw, on the real path (SQLite shop, demo API over HTTP): each
case is a failure once found on main — a poisoned cursor, a NULL key, rows breaking the API's
contract, a package that cannot be normalised, a mass delete — and what must happen instead."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from dlt.load.load import Load
from typer.testing import CliRunner

from demo.api import serve_in_background
from demo.generate import generate
from demo.simulate import simulate
from ingestion import registry
from ingestion.guards import GuardError
from ingestion.pipeline import PipelineFailed, make_pipeline, run_source
from ingestion.replay import replay_quarantined
from tests.ingestion.test_shop import SCHEMA
from tests.sourcefiles import scratch_settings
from tributary.cli import app
from tributary.settings import ConfigurationError, Settings, get_settings

NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
RECENT = (NOW - timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
LATER = (NOW - timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S")


def _query(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as connection:
        return connection.execute(sql, list(params)).fetchall()


def _quarantine(settings: Settings) -> list[tuple[Any, ...]]:
    return _query(
        settings,
        "select table_name, reason, row_key, payload, times_seen, first_seen_at "
        "from quarantine.rows order by table_name, row_key",
    )


@pytest.fixture
def shop(tmp_path: Path) -> Settings:
    with sqlite3.connect(tmp_path / "shop.sqlite") as connection:
        connection.executescript(SCHEMA)
    return scratch_settings(tmp_path, shop=tmp_path / "shop.sqlite")


def _shop_path(settings: Settings) -> Path:
    return settings.data_dir / "shop.sqlite"


def _shop(settings: Settings, sql: str) -> None:
    with sqlite3.connect(_shop_path(settings)) as connection:
        connection.executescript(sql)


def _cursor(settings: Settings, table: str) -> Any:
    state = make_pipeline("shop", settings).state["sources"]["shop"]["resources"]
    return state[table]["incremental"]["updated_at"]["last_value"]


def test_a_cursor_from_the_future_is_quarantined_and_later_changes_keep_arriving(
    shop: Settings,
) -> None:
    run_source("shop", shop)
    # One row stamped in 2099 (a bad clock, a typo) among ordinary changes.
    _shop(
        shop,
        "update orders set status = 'shipped', updated_at = '2099-01-01 00:00:00' "
        "where order_id = 1;"
        f"insert into orders values (2, 2, 1, '{RECENT}', 'placed', 500, 50, 550, '{RECENT}');",
    )
    load = run_source("shop", shop)
    [count] = load.quarantined
    assert (count.table, count.rows, count.new_rows) == ("orders", 1, 1)
    assert "2099-01-01" in count.reason and "beyond now" in count.reason
    assert count.example_keys == ('{"order_id":1}',)
    assert {t.table: t.quarantined for t in load.tables}["orders"] == 1
    # The cursor stays with the real data; the poisoned row never reached raw.
    assert _cursor(shop, "orders") == datetime.fromisoformat(RECENT)
    assert _query(shop, "select order_id, status from raw_shop.orders order by 1") == [
        (1, "completed"),
        (2, "placed"),
    ]

    # Later changes keep arriving; the row, still poisoned, is counted again, not repeated.
    _shop(
        shop,
        f"insert into orders values (3, 1, 1, '{LATER}', 'placed', 700, 70, 770, '{LATER}');"
        f"update orders set status = 'cancelled', updated_at = '{LATER}' where order_id = 2;",
    )
    again = run_source("shop", shop)
    assert [(c.rows, c.new_rows) for c in again.quarantined] == [(1, 0)]
    assert _query(shop, "select order_id, status from raw_shop.orders order by 1") == [
        (1, "completed"),
        (2, "cancelled"),
        (3, "placed"),
    ]
    [(table, _, key, payload, times_seen, _)] = _quarantine(shop)
    assert (table, key, times_seen) == ("orders", '{"order_id":1}', 2)
    assert json.loads(payload)["status"] == "shipped"

    # Fixed at the source (a real timestamp): it arrives like any change.
    _shop(shop, f"update orders set updated_at = '{LATER}' where order_id = 1;")
    run_source("shop", shop)
    assert _query(shop, "select status from raw_shop.orders where order_id = 1") == [("shipped",)]


def test_a_cursor_from_the_future_on_a_first_load_never_sets_the_cursor(shop: Settings) -> None:
    _shop(shop, "update customers set updated_at = '2099-06-01 00:00:00' where customer_id = 2;")
    load = run_source("shop", shop)
    assert [(c.table, c.rows) for c in load.quarantined] == [("customers", 1)]
    assert _cursor(shop, "customers") == datetime(2026, 1, 1, 10, 0)
    assert _query(shop, "select customer_id from raw_shop.customers") == [(1,)]


NULL_KEY_ITEMS = """
drop table order_items;
create table order_items(order_item_id bigint primary key, order_id integer,
  product_id integer, quantity integer, unit_price_cents integer, updated_at datetime);
insert into order_items values (1, 1, 1, 2, 500, '{at}'), (2, 1, 1, 1, 500, '{at}');
"""


def test_a_null_key_is_quarantined_and_nothing_loaded_is_deleted(shop: Settings) -> None:
    # SQLite lets a non-integer primary key hold NULL, as a table without constraints would.
    _shop(shop, NULL_KEY_ITEMS.format(at=RECENT))
    run_source("shop", shop)
    _shop(shop, f"insert into order_items values (null, 1, 1, 5, 500, '{RECENT}');")

    load = run_source("shop", shop)
    items = {t.table: t for t in load.tables}["order_items"]
    assert (items.deleted, items.quarantined) == (0, 1)
    [(table, reason, _, payload, _, _)] = _quarantine(shop)
    assert (table, reason) == ("order_items", "primary key order_item_id is missing")
    assert json.loads(payload)["quantity"] == 5
    # The rows re-read in the lag window are all still there.
    assert _query(shop, "select order_item_id from raw_shop.order_items order by 1") == [(1,), (2,)]

    # Nothing wedged: the next run works, and a fixed row arrives.
    run_source("shop", shop)
    _shop(
        shop,
        "delete from order_items where order_item_id is null;"
        f"insert into order_items values (3, 1, 1, 5, 500, '{LATER}');",
    )
    run_source("shop", shop)
    assert _query(shop, "select order_item_id from raw_shop.order_items order by 1") == [
        (1,),
        (2,),
        (3,),
    ]


def test_a_table_without_a_primary_key_is_replaced_not_appended_again(shop: Settings) -> None:
    _shop(
        shop,
        "create table visits(customer_id integer, page varchar(20), updated_at datetime);"
        f"insert into visits values (1, 'home', '{RECENT}'), (1, 'home', '{RECENT}'),"
        f" (2, 'cart', '{RECENT}');",
    )
    # Merged on no key, rows re-read in the lag window would pile up: refused until declared.
    unkeyed = scratch_settings(shop.data_dir, shop=_shop_path(shop), tables=["visits"])
    with pytest.raises(
        ConfigurationError,
        match=r"^sources\.shop\.tables\.visits: mode merge needs a primary_key and visits has "
        r"none; declare `primary_key` \(the columns that identify a row\) or use `mode: replace`$",
    ):
        run_source("shop", unkeyed)
    assert not unkeyed.warehouse.exists()
    settings = scratch_settings(
        shop.data_dir,
        shop=_shop_path(shop),
        shop_options={"tables": {"visits": {"mode": "replace"}}},
    )
    run_source("shop", settings)
    run_source("shop", settings)
    _shop(shop, f"insert into visits values (3, 'pay', '{LATER}');")
    run_source("shop", settings)
    assert _query(settings, "select customer_id, page from raw_shop.visits order by 1") == [
        (1, "home"),
        (1, "home"),
        (2, "cart"),
        (3, "pay"),
    ]


# --- the payments API: rows that break its contract -------------------------------------------

BAD_PAYMENTS = [
    # (payment_id, amount, currency, updated_at), each wrong in one way
    ("p-text", "twelve", "USD", "2026-10-01 00:00:00"),
    ("p-null", None, "USD", "2026-10-01 00:00:00"),
    ("p-xyz", 1200, "XYZ", "2026-10-01 00:00:00"),
    (None, 1200, "USD", "2026-10-01 00:00:00"),
    ("p-huge", 1e30, "USD", "2026-10-01 00:00:00"),
    ("p-future", 1200, "USD", "2099-01-01 00:00:00"),
]
REASONS = {
    '{"payment_id":"p-text"}': "amount 'twelve' is not a bigint",
    '{"payment_id":"p-null"}': "amount is missing",
    '{"payment_id":"p-xyz"}': "currency 'XYZ' is not one of USD, EUR, GBP",
    '{"payment_id":null}': "primary key payment_id is missing",
    '{"payment_id":"p-huge"}': "amount 1e+30 is not a bigint",
    '{"payment_id":"p-future"}': "cursor updated_at 2099-01-01T00:00:00Z is beyond now plus",
}
# The demo store enforces what a real provider's API may not: loosen it to serve bad rows.
LOOSE_PAYMENTS = """
create table loose as select * from payments;
drop table payments;
create table payments (payment_id, order_id, method, currency, amount, amount_refunded, status,
  created_at, updated_at);
insert into payments select * from loose;
drop table loose;
"""


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    settings = Settings(data_dir=tmp_path)
    generate(f"sqlite:///{tmp_path / 'shop.sqlite'}", settings.demo_api_db, orders=40, seed=7)
    with sqlite3.connect(settings.demo_api_db) as connection:
        connection.executescript(LOOSE_PAYMENTS)
    with serve_in_background(settings.demo_api_db, "token") as url:
        monkeypatch.setenv("SOURCES__PAYMENTS__TOKEN", "token")
        yield scratch_settings(tmp_path, api=url)


def _store(settings: Settings, sql: str, rows: list[tuple[Any, ...]] = ()) -> None:
    with sqlite3.connect(settings.demo_api_db) as connection:
        connection.executemany(sql, rows) if rows else connection.executescript(sql)


def _add_bad_payments(settings: Settings) -> None:
    _store(
        settings,
        "insert into payments values (?, 1, 'card', ?, ?, 0, 'succeeded', ?, ?)",
        [(pid, cur, amount, at, at) for pid, amount, cur, at in BAD_PAYMENTS],
    )


def _good_payment_ids(settings: Settings) -> list[str]:
    with sqlite3.connect(settings.demo_api_db) as connection:
        return [
            row[0]
            for row in connection.execute(
                "select payment_id from payments where payment_id not like 'p-%' order by 1"
            )
        ]


def test_rows_breaking_the_api_contract_are_quarantined_and_never_reach_raw(
    api: Settings,
) -> None:
    _add_bad_payments(api)
    load = run_source("payments", api)
    quarantined = {key: (table, reason) for table, reason, key, *_ in _quarantine(api)}
    assert quarantined.keys() == REASONS.keys()
    for key, (table, reason) in quarantined.items():
        assert table == "payments" and reason.startswith(REASONS[key]), (key, reason)
    assert load.rows_quarantined == len(BAD_PAYMENTS)

    raw = [row[0] for row in _query(api, "select payment_id from raw_payments.payments order by 1")]
    assert raw == _good_payment_ids(api)
    columns = [row[0] for row in _query(api, "describe raw_payments.payments")]
    assert not [column for column in columns if "__v_" in column]  # no variant columns

    # Not stuck: the next run loads new payments; the bad rows are counted, not repeated.
    _store(
        api,
        "insert into payments values ('q-1', 2, 'card', 'EUR', 900, 0, 'succeeded', ?, ?)",
        [(LATER, LATER)],
    )
    again = run_source("payments", api)
    assert {t.table: t.new for t in again.tables}["payments"] == 1
    assert all(count.new_rows == 0 for count in again.quarantined)
    [(times,)] = _query(api, "select max(times_seen) from quarantine.rows")
    assert times == 2  # the future row is sent again (it is always past the cursor)


def test_too_many_quarantined_rows_fail_the_source_after_the_rest_has_loaded(
    api: Settings,
) -> None:
    _add_bad_payments(api)
    strict = api.model_copy(update={"quarantine_max_rows": 2})
    with pytest.raises(
        GuardError, match=r"raw_payments\.payments: 6 of the .* quarantined"
    ) as stop:
        run_source("payments", strict)
    assert "TRIBUTARY_QUARANTINE_MAX_SHARE" in str(stop.value)
    assert stop.value.load.rows_quarantined == len(BAD_PAYMENTS)
    [(quarantined,)] = _query(api, "select count(*) from quarantine.rows")
    assert quarantined == len(BAD_PAYMENTS)
    raw = [row[0] for row in _query(api, "select payment_id from raw_payments.payments order by 1")]
    assert raw == _good_payment_ids(api)


def test_conflicting_duplicates_are_quarantined_and_identical_ones_load_once(
    api: Settings,
) -> None:
    _store(
        api,
        "insert into payments select * from payments where payment_id = "
        "(select min(payment_id) from payments);"
        "insert into payments select payment_id, order_id, method, currency, amount + 1, "
        "amount_refunded, status, created_at, updated_at from payments where payment_id = "
        "(select max(payment_id) from payments);",
    )
    with sqlite3.connect(api.demo_api_db) as connection:
        [(first, last)] = connection.execute(
            "select min(payment_id), max(payment_id) from payments"
        ).fetchall()
    load = run_source("payments", api)
    [count] = load.quarantined
    assert (count.rows, count.reason) == (
        2,
        "duplicate key: 2 rows in one read share this payment_id",
    )
    assert count.example_keys == (f'{{"payment_id":"{last}"}}',)
    raw = _query(api, "select payment_id, count(*) from raw_payments.payments group by 1")
    assert all(n == 1 for _, n in raw)
    ids = {payment_id for payment_id, _ in raw}
    assert first in ids and last not in ids


def test_a_package_that_cannot_be_normalised_is_set_aside_with_its_rows_quarantined(
    api: Settings,
) -> None:
    run_source("payments", api)
    # A package extracted before the guards existed, holding a payment without its key (and a
    # good one): dlt fails to normalise it, and did so again on every run, forever.
    _store(
        api,
        "insert into payments values (?, 1, 'card', 'USD', 100, 0, 'succeeded', ?, ?)",
        [(None, LATER, LATER), ("q-good", LATER, LATER)],
    )
    pipeline = make_pipeline("payments", api)
    pipeline.extract(registry.build("payments", api).source)
    with pytest.raises(Exception, match="payment_id"):
        pipeline.normalize()
    [load_id] = pipeline.list_extracted_load_packages()

    with pytest.raises(GuardError, match=f"load package {load_id} could not be normalised"):
        run_source("payments", api)
    assert (api.pipelines_dir / "tributary_payments.set-aside" / load_id).is_dir()
    quarantined = _query(
        api, "select row_key, load_id from quarantine.rows where source = 'payments' order by 1"
    )
    assert ('{"payment_id":null}', load_id) in quarantined
    assert ('{"payment_id":"q-good"}', load_id) in quarantined
    assert not [row for row in quarantined if row[1] != load_id]

    # The next run starts clean: nothing pending, new payments load.
    _store(
        api,
        "insert into payments values ('q-next', 2, 'card', 'EUR', 900, 0, 'succeeded', ?, ?)",
        [(NOW.strftime("%Y-%m-%d %H:%M:%S"),) * 2],
    )
    load = run_source("payments", api)
    assert not load.resumed
    raw = {row[0] for row in _query(api, "select payment_id from raw_payments.payments")}
    assert "q-next" in raw and "q-good" not in raw and None not in raw

    # The set-aside package's good rows are replayed; the one without a key stays.
    result = replay_quarantined("payments", api)
    assert result.replayed == {"payments": 1}
    assert result.still_failing == {("payments", "primary key payment_id is missing"): 1}
    raw = {row[0] for row in _query(api, "select payment_id from raw_payments.payments")}
    assert "q-good" in raw and None not in raw


# --- deletes: a source that lost its rows must not empty the warehouse silently -----------------


@pytest.fixture
def sample(tmp_path: Path) -> Settings:
    settings = scratch_settings(tmp_path, shop=tmp_path / "shop.sqlite")
    generate(f"sqlite:///{_shop_path(settings)}", settings.demo_api_db, orders=120, seed=3)
    run_source("shop", settings)
    return settings


def _counts(settings: Settings) -> dict[str, int]:
    return {
        table: _query(settings, f"select count(*) from raw_shop.{table}")[0][0]
        for table in ("customers", "orders", "order_items")
    }


def test_a_source_table_emptied_stops_before_anything_is_deleted(sample: Settings) -> None:
    before = _counts(sample)
    _shop(sample, "delete from order_items; delete from orders;")
    with pytest.raises(GuardError) as stop:
        run_source("shop", sample)
    message = str(stop.value)
    assert f"raw_shop.orders: this run would delete {before['orders']} of its" in message
    assert f"raw_shop.order_items: this run would delete {before['order_items']} of" in message
    assert "confirm_deletes" in message and "TRIBUTARY_DELETE_MAX_SHARE" in message
    assert stop.value.load is not None  # what the run did is reported, deletes excepted
    assert _counts(sample) == before
    # Every run stops the same way until someone confirms.
    with pytest.raises(GuardError):
        run_source("shop", sample)
    confirmed = run_source("shop", sample, confirm_deletes=True)
    deleted = {t.table: t.deleted for t in confirmed.tables}
    assert (deleted["orders"], deleted["order_items"]) == (before["orders"], before["order_items"])
    assert _counts(sample) == {**before, "orders": 0, "order_items": 0}


def test_a_few_deletes_go_through_a_large_share_waits(sample: Settings) -> None:
    before = _counts(sample)
    # Orders no item and no payment refers to would be deleted by a shop; items go with them.
    _shop(
        sample,
        "delete from order_items where order_id <= 2; delete from orders where order_id <= 2;",
    )
    load = run_source("shop", sample)
    assert {t.table: t.deleted for t in load.tables}["orders"] == 2
    _shop(
        sample,
        "delete from order_items where order_id <= 40; delete from orders where order_id <= 40;",
    )
    with pytest.raises(GuardError, match=r"raw_shop\.orders: this run would delete 38 of its 118"):
        run_source("shop", sample)
    assert _counts(sample)["orders"] == before["orders"] - 2


def test_a_mass_soft_delete_stops_before_loading_and_forgets_the_package(
    sample: Settings,
) -> None:
    before = _counts(sample)
    cursor = _cursor(sample, "customers")
    _shop(sample, f"update customers set deleted_at = '{LATER}', updated_at = '{LATER}';")
    with pytest.raises(GuardError, match=r"raw_shop\.customers: this run would delete"):
        run_source("shop", sample)
    assert _counts(sample) == before
    pipeline = make_pipeline("shop", sample)
    assert not pipeline.has_pending_data  # nothing left to load behind anyone's back
    assert _cursor(sample, "customers") == cursor  # the rows will be read again

    # The source admits the mistake: the rows come back, and nothing needed confirming.
    _shop(
        sample, f"update customers set deleted_at = null, updated_at = '{NOW:%Y-%m-%d %H:%M:%S}';"
    )
    run_source("shop", sample)
    assert _counts(sample) == before


# --- counts: a run that finishes a killed run's load reports what that load changed -----------


def test_counts_after_a_resumed_load_are_exact(sample: Settings, tmp_path: Path) -> None:
    simulate(f"sqlite:///{_shop_path(sample)}", sample.demo_api_db, now=NOW, seed=4, deletes=False)
    # The same state twice: one copy loads uninterrupted, the other is killed mid-load.
    twin_dir = tmp_path.parent / f"{tmp_path.name}-twin"
    shutil.copytree(tmp_path, twin_dir)
    twin = scratch_settings(twin_dir, shop=twin_dir / "shop.sqlite")
    expected = {t.table: (t.new, t.updated, t.deleted) for t in run_source("shop", twin).tables}
    assert expected["orders"][0] > 0 and expected["orders"][1] > 0

    def killed(*args: object, **kwargs: object) -> None:
        raise SystemExit("killed after the load's jobs ran, before it completed")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Load, "complete_package", killed)
        with pytest.raises(SystemExit):
            run_source("shop", sample)
    resumed = run_source("shop", sample)
    assert resumed.resumed
    assert {t.table: (t.new, t.updated, t.deleted) for t in resumed.tables} == expected
    assert _counts(sample) == _counts(twin)


def test_a_load_the_warehouse_refuses_never_wedges_the_pipeline(sample: Settings) -> None:
    """A load job that fails terminally (here a CHECK constraint the raw table was given, as
    any row the warehouse refuses) once left its package pending, retried and failing on
    every run even after the source was fixed. Now the package is aborted and its cursors
    restored: each run reads the source again, and loads once the cause is gone."""
    _refuse_returned_orders(sample)
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}"  # after the cursor: read next run
    _shop(
        sample, f"update orders set status = 'returned', updated_at = '{stamp}' where order_id = 1;"
    )
    cursor = _cursor(sample, "orders")
    for _ in range(2):
        with pytest.raises(PipelineFailed, match="CHECK constraint failed") as failure:
            run_source("shop", sample)
        assert "`" not in str(failure.value)  # nothing pending: no command to suggest
        assert not make_pipeline("shop", sample).has_pending_data
        assert _cursor(sample, "orders") == cursor

    _shop(
        sample,
        f"update orders set status = 'completed', updated_at = '{LATER}' where order_id = 1;",
    )
    run_source("shop", sample)
    assert _query(sample, "select status from raw_shop.orders where order_id = 1") == [
        ("completed",)
    ]


def test_replay_loads_the_rows_that_pass_the_contract_now(
    api: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _add_bad_payments(api)
    run_source("payments", api)
    # The provider starts taking a new currency: the contract widens, and the rows it kept
    # out can come in. The others still fail, for the same reasons.
    declared = yaml.safe_load(api.sources_path.read_text())
    declared["sources"]["payments"]["resources"][0]["accepted_values"]["currency"].append("XYZ")
    api.sources_path.write_text(yaml.safe_dump(declared, sort_keys=False))
    # As an operator would: list, then replay, from the command line.
    monkeypatch.setenv("TRIBUTARY_DATA_DIR", str(api.data_dir))
    monkeypatch.setenv("TRIBUTARY_SOURCES_FILE", str(api.sources_path))
    get_settings.cache_clear()
    listed = CliRunner().invoke(app, ["quarantine", "list", "--source", "payments"])
    assert listed.exit_code == 0, listed.output
    assert f"Quarantined rows ({len(BAD_PAYMENTS)})" in listed.output
    assert (
        """payments.payments {"payment_id":"p-xyz"}: currency 'XYZ' is not one of USD, EUR, GBP"""
        in listed.output
    )
    replayed = CliRunner().invoke(app, ["quarantine", "replay", "payments"])
    get_settings.cache_clear()
    assert replayed.exit_code == 0, replayed.output
    assert "replayed      payments.payments: 1 row(s) loaded" in replayed.output
    assert "still failing payments.payments: 1 row(s): amount is missing" in replayed.output
    [(currency, amount)] = _query(
        api, "select currency, amount from raw_payments.payments where payment_id = 'p-xyz'"
    )
    assert (currency, amount) == ("XYZ", 1200)
    [(closed,)] = _query(api, "select count(*) from quarantine.rows where replayed_at is not null")
    assert closed == 1
    listed = CliRunner().invoke(app, ["quarantine", "list"])
    assert f"Quarantined rows ({len(BAD_PAYMENTS) - 1})" in listed.output
    # The cursor did not move: the next run reads what it would have read anyway.
    state = make_pipeline("payments", api).state["sources"]["payments"]["resources"]
    assert replay_quarantined("payments", api).replayed == {}
    assert make_pipeline("payments", api).state["sources"]["payments"]["resources"] == state


def _refuse_returned_orders(settings: Settings) -> None:
    """Give raw_shop.orders a CHECK constraint: the warehouse refuses a returned order, as it
    would refuse any row it cannot take."""
    with duckdb.connect(str(settings.warehouse)) as warehouse:
        columns = warehouse.sql("describe raw_shop.orders").fetchall()
        definition = ", ".join(f'"{name}" {kind}' for name, kind, *_ in columns)
        warehouse.execute(
            "alter table raw_shop.orders rename to orders_before;"
            f"create table raw_shop.orders ({definition}, check (status <> 'returned'));"
            "insert into raw_shop.orders select * from raw_shop.orders_before "
            "where status <> 'returned'; drop table raw_shop.orders_before;"
        )


def test_a_failed_load_explains_itself_and_its_commands_work_as_printed(
    sample: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dlt's own message is a traceback ending in commands that fail for tributary's pipelines
    (they need --pipelines-dir). Here the package is kept pending (auto-abort switched off, as
    a deployment may), and the commands the error prints are run as printed."""
    _refuse_returned_orders(sample)
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}"
    _shop(
        sample, f"update orders set status = 'returned', updated_at = '{stamp}' where order_id = 2;"
    )
    monkeypatch.setenv("LOAD__AUTO_ABORT_ON_TERMINAL_ERROR", "false")
    with pytest.raises(PipelineFailed) as failure:
        run_source("shop", sample)
    message = str(failure.value)
    assert message.startswith("tributary_shop: dlt's load step failed: ")
    assert "Constraint Error: CHECK constraint failed on table orders" in message
    assert "Traceback" not in message
    info, abort = re.findall(r"`([^`]+)`", message)
    shown = subprocess.run(info, shell=True, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    [pending] = make_pipeline("shop", sample).list_normalized_load_packages()
    assert pending in shown.stdout
    # at a terminal, as a person would (dlt asks before aborting; `script` gives it a tty)
    aborted = subprocess.run(
        ["script", "-qec", abort, "/dev/null"],
        input="y\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert aborted.returncode == 0, aborted.stdout + aborted.stderr
    assert not make_pipeline("shop", sample).has_pending_data, aborted.stdout + aborted.stderr
    # the cursors went back with the package: once the cause is gone, the row arrives
    _shop(
        sample,
        f"update orders set status = 'completed', updated_at = '{stamp}' where order_id = 2;",
    )
    run_source("shop", sample)
    assert _query(sample, "select status from raw_shop.orders where order_id = 2") == [
        ("completed",)
    ]
