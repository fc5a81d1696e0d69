"""The demo API over real HTTP on loopback: auth, complete pagination, updated_since, faults."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from demo.api import Faults, serve_in_background
from demo.generate import generate

TOKEN = "test-token"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("api")
    generate(
        f"sqlite:///{folder / 'shop.sqlite'}",
        folder / "api.sqlite",
        orders=500,
        seed=3,
        end=datetime(2026, 5, 1),
    )
    with serve_in_background(folder / "api.sqlite", TOKEN) as url:
        yield url, folder / "api.sqlite"


def _all_payments(url: str, **params: str) -> list[dict]:
    rows, query = [], {"limit": "37", **params}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        while True:
            page = client.get("/payments", params=query).raise_for_status().json()
            rows += page["data"]
            if page["next_cursor"] is None:
                return rows
            query["cursor"] = page["next_cursor"]


def test_payments_need_the_bearer_token(api: tuple[str, Path]) -> None:
    url, _ = api
    assert httpx.get(f"{url}/payments").status_code == 401
    wrong = httpx.get(f"{url}/payments", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_cursor_pages_return_every_payment_once(api: tuple[str, Path]) -> None:
    url, store = api
    rows = _all_payments(url)
    with sqlite3.connect(store) as connection:
        expected = {r[0] for r in connection.execute("select payment_id from payments")}
    ids = [row["payment_id"] for row in rows]
    assert len(ids) == len(set(ids)) == len(expected)
    assert set(ids) == expected
    assert all(row["updated_at"].endswith("Z") for row in rows)


def test_updated_since_is_inclusive(api: tuple[str, Path]) -> None:
    url, store = api
    since = "2026-04-20T00:00:00Z"
    with sqlite3.connect(store) as connection:
        expected = {
            r[0]
            for r in connection.execute(
                "select payment_id from payments where updated_at >= '2026-04-20 00:00:00'"
            )
        }
    assert expected
    assert {row["payment_id"] for row in _all_payments(url, updated_since=since)} == expected


def test_exchange_rate_pages_cover_every_day_once(api: tuple[str, Path]) -> None:
    url, store = api
    rows, page = [], 1
    while True:
        body = httpx.get(f"{url}/exchange-rates", params={"page": page, "page_size": 50}).json()
        rows += body["data"]
        if page >= body["total_pages"]:
            break
        page += 1
    with sqlite3.connect(store) as connection:
        [(count,)] = connection.execute("select count(*) from exchange_rates").fetchall()
    assert len(rows) == len({(r["date"], r["quote"]) for r in rows}) == count == body["total"]


def test_fault_knobs_answer_503_and_429(api: tuple[str, Path]) -> None:
    _, store = api
    with serve_in_background(store, TOKEN, faults=Faults(error_rate=1.0)) as url:
        assert httpx.get(f"{url}/exchange-rates").status_code == 503
    with serve_in_background(store, TOKEN, faults=Faults(rate_limit_rate=1.0)) as url:
        response = httpx.get(f"{url}/exchange-rates")
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1"


def test_fault_knobs_spoil_answers_on_the_way_out(api: tuple[str, Path]) -> None:
    _, store = api
    headers = {"Authorization": f"Bearer {TOKEN}"}
    faults = Faults(truncate_rate=1.0)
    with serve_in_background(store, TOKEN, faults=faults) as url:
        response = httpx.get(f"{url}/payments", headers=headers)
        assert response.status_code == 200
        with pytest.raises(ValueError):
            response.json()
        faults.truncate_rate, faults.disconnect_rate = 0.0, 1.0
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"{url}/payments", headers=headers)
        faults.disconnect_rate, faults.rate_limit_rate, faults.retry_after_seconds = 0.0, 1.0, 7
        assert httpx.get(f"{url}/payments", headers=headers).headers["Retry-After"] == "7"


def test_fault_knobs_cap_pages_and_repeat_them(api: tuple[str, Path]) -> None:
    _, store = api
    headers = {"Authorization": f"Bearer {TOKEN}"}
    faults = Faults(max_page_size=10, repeat_page_rate=1.0)
    with serve_in_background(store, TOKEN, faults=faults) as url:
        first = httpx.get(f"{url}/payments", headers=headers, params={"limit": 100}).json()
        assert len(first["data"]) == 10
        again = httpx.get(
            f"{url}/payments",
            headers=headers,
            params={"limit": 100, "cursor": first["next_cursor"]},
        ).json()
        assert again["data"] == first["data"]
        rates = httpx.get(f"{url}/exchange-rates", params={"page_size": 100}).json()
        assert len(rates["data"]) == rates["page_size"] == 10
