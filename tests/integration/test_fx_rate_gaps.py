"""Exchange rates with gaps, on the real path: the demo API serves rates with a long weekend and
a stalled week missing, and the `elt` flow converts every payment at the latest rate on or before
its day (checked against Python), warns about rates older than `fx_max_rate_age_days`, and fails
the build for a payment older than every rate of its currency."""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from demo.generate import generate
from demo.paths import shop_url
from flows.elt import StepFailed, elt
from tests.integration.sources import RateBook, fetch_payments, fetch_rates
from tests.integration.stack import serving
from tests.integration.test_elt_flow import Shop, assert_marts_match, assert_no_duplicate_keys
from tributary.report import RunReport
from tributary.settings import DBT_PROJECT_DIR, Settings

pytestmark = pytest.mark.integration

ORDERS = 400
SEED = 5
END = datetime(2026, 6, 1, 12, 0, 0)
SATURDAY, TUESDAY = 5, 1  # date.weekday()
STALLED_DAYS = 6
MAX_AGE = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())["vars"][
    "fx_max_rate_age_days"
]
AGE_TEST = "payment_exchange_rate_is_at_most_fx_max_rate_age_days_old"
GAP_UNIT_TEST = (
    "unit_test.tributary.int_payments_converted."
    "test_payments_in_a_rate_gap_convert_at_the_latest_earlier_rate"
)


@dataclass(frozen=True)
class Gaps:
    """Days whose rates the API no longer serves."""

    long_weekend: list[date]  # Saturday, Sunday and a holiday Monday: Friday's rate covers them
    stalled: list[date]  # six days in a row from a Tuesday: older than fx_max_rate_age_days


def _foreign_payment_days(api_db: Path) -> dict[date, int]:
    """Day → EUR and GBP payments made that day, from the API's own store."""
    with sqlite3.connect(api_db) as connection:
        rows = connection.execute(
            "select substr(created_at, 1, 10), count(*) from payments"
            " where currency != 'USD' group by 1"
        ).fetchall()
    return {date.fromisoformat(day): count for day, count in rows}


def _delete_rates(api_db: Path, days: list[date]) -> int:
    with sqlite3.connect(api_db) as connection:
        return connection.executemany(
            "delete from exchange_rates where date = ?", [(day.isoformat(),) for day in days]
        ).rowcount


def _choose_gaps(api_db: Path) -> Gaps:
    """The long weekend with the most foreign payments, and a stalled week in another month
    with the most foreign payments on its days beyond the allowed age."""
    paid = _foreign_payment_days(api_db)
    days = sorted(paid)
    saturdays = [day for day in days if day.weekday() == SATURDAY and day > days[0]]
    saturday = max(saturdays, key=lambda d: sum(paid.get(d + timedelta(i), 0) for i in range(3)))
    tuesdays = [
        day
        for day in days
        if day.weekday() == TUESDAY and day > days[0] and abs((day - saturday).days) > 30
    ]
    tuesday = max(
        tuesdays,
        key=lambda d: sum(paid.get(d + timedelta(i), 0) for i in range(MAX_AGE, STALLED_DAYS)),
    )
    return Gaps(
        long_weekend=[saturday + timedelta(i) for i in range(3)],
        stalled=[tuesday + timedelta(i) for i in range(STALLED_DAYS)],
    )


@contextmanager
def _serving(settings: Settings) -> Iterator[Shop]:
    """The demo API over the settings' store, and the environment the `elt` flow reads."""
    with serving(settings.data_dir, secrets.token_urlsafe(16)) as served:
        yield Shop(settings=served.settings, api_url=served.api_url, token=served.token)


@pytest.fixture(scope="module")
def gapped(
    tmp_path_factory: pytest.TempPathFactory, prefect_server: None
) -> Iterator[tuple[Shop, Gaps, RunReport]]:
    """A shop whose rate feed skipped a long weekend and stalled for six days, loaded once."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("fx-gaps"))
    generate(shop_url(settings), settings.demo_api_db, orders=ORDERS, seed=SEED, end=END)
    gaps = _choose_gaps(settings.demo_api_db)
    deleted = _delete_rates(settings.demo_api_db, gaps.long_weekend + gaps.stalled)
    assert deleted == 2 * (len(gaps.long_weekend) + len(gaps.stalled))  # EUR and GBP
    with _serving(settings) as shop:
        yield shop, gaps, elt()


@pytest.fixture(scope="module")
def rates_start_late(
    tmp_path_factory: pytest.TempPathFactory, prefect_server: None
) -> Iterator[tuple[Shop, list[dict[str, Any]], StepFailed]]:
    """A shop whose first foreign payments are older than every rate the API serves."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("fx-late"))
    generate(shop_url(settings), settings.demo_api_db, orders=100, seed=SEED, end=END)
    first = min(_foreign_payment_days(settings.demo_api_db))
    with sqlite3.connect(settings.demo_api_db) as connection:
        connection.execute("delete from exchange_rates where date <= ?", (first.isoformat(),))
    with _serving(settings) as shop:
        rates = RateBook(fetch_rates(shop.api_url))
        unconvertible = [
            payment
            for payment in fetch_payments(shop.api_url, shop.token)
            if payment["currency"] != "USD" and _no_rate(rates, payment)
        ]
        with pytest.raises(StepFailed) as failure:
            elt()
        yield shop, unconvertible, failure.value


def _paid_on(payment: dict[str, Any]) -> date:
    return date.fromisoformat(payment["created_at"][:10])


def _no_rate(rates: RateBook, payment: dict[str, Any]) -> bool:
    try:
        rates.on_or_before(_paid_on(payment), payment["currency"])
    except LookupError:
        return True
    return False


def _nodes(report: RunReport) -> dict[str, Any]:
    assert report.dbt is not None
    return {node.unique_id: node for node in report.dbt.nodes}


def test_payments_in_the_gaps_convert_at_the_latest_earlier_rate(
    gapped: tuple[Shop, Gaps, RunReport],
) -> None:
    shop, gaps, _ = gapped
    served = fetch_rates(shop.api_url)
    missing = gaps.long_weekend + gaps.stalled
    assert not {day for day, _ in served} & set(missing)
    [(loaded,)] = shop.query(
        "select count(*) from raw_fx.exchange_rates where date in ("
        + ", ".join(f"date '{day}'" for day in missing)
        + ")"
    )
    assert loaded == 0
    rates = RateBook(served)
    in_gaps = [
        payment
        for payment in fetch_payments(shop.api_url, shop.token)
        if payment["currency"] != "USD" and _paid_on(payment) in missing
    ]
    # the gaps hold foreign payments, each converting at a rate of an earlier day
    assert {_paid_on(p) for p in in_gaps} & set(gaps.long_weekend)
    assert {_paid_on(p) for p in in_gaps} & set(gaps.stalled[MAX_AGE:])
    friday = gaps.long_weekend[0] - timedelta(days=1)
    for payment in in_gaps:
        rate_day, _ = rates.on_or_before(_paid_on(payment), payment["currency"])
        assert rate_day == (
            friday
            if _paid_on(payment) in gaps.long_weekend
            else gaps.stalled[0] - timedelta(days=1)
        )

    assert_marts_match(shop, shop.expected())
    assert_no_duplicate_keys(shop)


def test_rates_older_than_the_setting_warn_and_the_run_completes(
    gapped: tuple[Shop, Gaps, RunReport],
) -> None:
    shop, _, report = gapped
    rates = RateBook(fetch_rates(shop.api_url))
    stale = 0
    for payment in fetch_payments(shop.api_url, shop.token):
        if payment["currency"] != "USD":
            rate_day, _ = rates.on_or_before(_paid_on(payment), payment["currency"])
            stale += (_paid_on(payment) - rate_day).days > MAX_AGE
    assert stale > 0

    nodes = _nodes(report)
    [warning] = [node for node in nodes.values() if node.unique_id.split(".")[2] == AGE_TEST]
    assert warning.status == "warn"
    assert re.match(rf"Got {stale} results?, configured to warn", warning.message or "")
    assert {node.status for node in nodes.values() if node is not warning} <= {"success", "pass"}
    [(status,)] = shop.query(
        "select status from ops.pipeline_runs order by started_at desc limit 1"
    )
    assert status == "completed"


def test_dbt_build_runs_the_rate_gap_unit_tests(gapped: tuple[Shop, Gaps, RunReport]) -> None:
    nodes = _nodes(gapped[2])
    unit_tests = {
        unique_id: node.status
        for unique_id, node in nodes.items()
        if unique_id.startswith("unit_test.tributary.int_payments_converted.")
    }
    assert unit_tests.get(GAP_UNIT_TEST) == "pass"
    assert len(unit_tests) >= 2 and set(unit_tests.values()) == {"pass"}


def test_the_allowed_age_is_a_dbt_var(gapped: tuple[Shop, Gaps, RunReport], tmp_path: Path) -> None:
    """`--vars` overrides the default: six days allowed, the stalled week no longer warns."""
    shop = gapped[0]

    def age_test_status(*args: str) -> str:
        target = tmp_path / f"target{len(args)}"
        subprocess.run(
            [
                str(Path(sys.executable).parent / "dbt"),
                "test",
                "--select",
                AGE_TEST,
                "--project-dir",
                str(DBT_PROJECT_DIR),
                "--profiles-dir",
                str(DBT_PROJECT_DIR),
                "--target-path",
                str(target),
                "--log-path",
                str(tmp_path / "logs"),
                *args,
            ],
            env={
                **os.environ,
                "TRIBUTARY_DBT_TARGET": "prod",
                "TRIBUTARY_WAREHOUSE_PATH": str(shop.settings.warehouse),
            },
            check=True,
            capture_output=True,
        )
        [result] = json.loads((target / "run_results.json").read_text())["results"]
        return result["status"]

    assert age_test_status() == "warn"
    assert age_test_status("--vars", f"{{fx_max_rate_age_days: {STALLED_DAYS}}}") == "pass"


def test_a_payment_older_than_every_rate_fails_the_build(
    rates_start_late: tuple[Shop, list[dict[str, Any]], StepFailed],
) -> None:
    _, unconvertible, failure = rates_start_late
    assert unconvertible
    assert failure.step == "dbt build"
    assert re.search(
        rf"not_null_int_payments_converted_units_per_usd failed with message: "
        rf"\W*Got {len(unconvertible)} results?, configured to fail",
        str(failure),
    ), str(failure)
