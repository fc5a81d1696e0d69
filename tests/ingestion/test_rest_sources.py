"""A REST API declared in a sources file and loaded with no Python: the test CRM (``tests.apis``)
over real HTTP — API-key and basic auth, offset, ``Link`` header, JSON link and page-number
pages, a child resource, nested records, a timestamp and a date cursor. The warehouse is
compared with the API's own data after a first load, after changes (only they load, merged), and
after backfill windows; a wrong key fails without showing it, a page served twice duplicates
nothing, and `tributary sources check` shows each resource."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import pytest

from ingestion.pipeline import run_source
from ingestion.results import SourceLoad
from tests.apis import Crm, sample_crm, serve_crm
from tests.sourcefiles import scratch_settings
from tributary.settings import Settings

URL_VAR = "TRIBUTARY_TEST_CRM_URL"
USER_VAR = "TRIBUTARY_TEST_CRM_USER"
KEY_VAR = "SOURCES__CRM__API_KEY"  # the dlt secret sources.crm.api_key
PASSWORD_VAR = "SOURCES__CRM__PASSWORD"  # the dlt secret sources.crm.password
TIMESTAMP_CURSOR = {
    "start_param": "updated_since",
    "end_param": "updated_until",
    "cursor_path": "updated_at",
    "initial_value": "2025-01-01T00:00:00Z",
}

CRM: dict[str, Any] = {
    "type": "rest_api",
    "client": {
        "base_url": {"env": URL_VAR},
        "auth": {
            "type": "api_key",
            "name": "X-API-Key",
            "location": "header",
            "api_key": {"secret": "sources.crm.api_key"},
        },
    },
    "resource_defaults": {"primary_key": "id", "write_disposition": "merge"},
    "resources": [
        {
            "name": "accounts",
            "columns": {
                "name": {"data_type": "text", "nullable": False},
                "updated_at": {"data_type": "timestamp", "nullable": False},
            },
            "accepted_values": {"plan": ["free", "team", "enterprise"]},
            "endpoint": {
                "path": "accounts",
                "data_selector": "items",
                "paginator": {
                    "type": "offset",
                    "limit": 3,
                    "offset_param": "offset",
                    "limit_param": "limit",
                    "total_path": "total",
                },
            },
        },
        {
            "name": "contacts",
            "include_from_parent": ["id"],
            "columns": {"updated_at": {"data_type": "timestamp", "nullable": False}},
            "endpoint": {
                "path": "accounts/{resources.accounts.id}/contacts",
                "paginator": {"type": "header_link"},
                "params": {"limit": 2},
                "incremental": TIMESTAMP_CURSOR,
            },
        },
        {
            "name": "deals",
            "columns": {
                "stage": {"data_type": "text", "nullable": False},
                "updated_at": {"data_type": "timestamp", "nullable": False},
            },
            "accepted_values": {"stage": ["open", "won", "lost"]},
            "endpoint": {
                "path": "deals",
                "data_selector": "data",
                "paginator": {"type": "json_link", "next_url_path": "next"},
                "params": {"per_page": 10},
                "incremental": TIMESTAMP_CURSOR,
            },
        },
        {
            "name": "daily_usage",
            "primary_key": ["account_id", "day"],
            "columns": {
                "day": {"data_type": "date", "nullable": False},
                "calls": {"data_type": "bigint", "nullable": False},
            },
            "endpoint": {
                "path": "daily-usage",
                "data_selector": "data",
                "paginator": {
                    "type": "page_number",
                    "base_page": 1,
                    "page_param": "page",
                    "total_path": "total_pages",
                },
                "params": {"page_size": 25},
                "incremental": {
                    "start_param": "start_date",
                    "end_param": "end_date",
                    "cursor_path": "day",
                    "initial_value": "2025-01-01",
                },
            },
        },
        {
            "name": "users",
            "endpoint": {
                "path": "users",
                "data_selector": "users",
                "auth": {
                    "type": "http_basic",
                    "username": {"env": USER_VAR},
                    "password": {"secret": "sources.crm.password"},
                },
                "paginator": {
                    "type": "page_number",
                    "base_page": 1,
                    "page_param": "page",
                    "total_path": None,
                },
                "params": {"page_size": 2},
            },
        },
    ],
}


@dataclass
class Api:
    crm: Crm
    url: str
    settings: Settings


@pytest.fixture
def api(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    crm = sample_crm(
        api_key=f"key-{secrets.token_hex(10)}",
        username="loader",
        password=f"pw-{secrets.token_hex(10)}",
    )
    with serve_crm(crm) as url:
        monkeypatch.setenv(URL_VAR, url)
        monkeypatch.setenv(USER_VAR, crm.username)
        monkeypatch.setenv(KEY_VAR, crm.api_key)
        monkeypatch.setenv(PASSWORD_VAR, crm.password)
        yield Api(crm, url, scratch_settings(tmp_path, extra={"crm": CRM}, only=["crm"]))


# --- what the warehouse must hold, from the API's own data ---------------------------------


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def expected(crm: Crm) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, sorted, as the warehouse must hold them."""
    tables = {
        "accounts": [
            (
                a["id"],
                a["name"],
                a["plan"],
                a["address"]["city"],
                a["address"]["country"],
                _naive(a["updated_at"]),
            )
            for a in crm.accounts.values()
        ],
        "contacts": [
            (c["id"], c["account_id"], c["name"], c["email"], _naive(c["updated_at"]))
            for c in crm.contacts.values()
        ],
        "deals": [
            (
                d["id"],
                d["account_id"],
                d["stage"],
                d["amount"]["value"],
                d["amount"]["currency"],
                _naive(d["updated_at"]),
            )
            for d in crm.deals.values()
        ],
        "deals__tags": [
            (d["id"], index, tag) for d in crm.deals.values() for index, tag in enumerate(d["tags"])
        ],
        "daily_usage": [(u["account_id"], u["day"], u["calls"]) for u in crm.usage.values()],
        "users": [(u["id"], u["login"], u["role"]) for u in crm.users.values()],
    }
    return {table: sorted(rows) for table, rows in tables.items()}


QUERIES = {
    "accounts": "select id, name, plan, address__city, address__country, "
    "timezone('UTC', updated_at) from raw_crm.accounts",
    # the tie to the parent is the parent's id dlt adds from the URL it resolved
    "contacts": "select id, _accounts_id, name, email, timezone('UTC', updated_at) "
    "from raw_crm.contacts",
    "deals": "select id, account_id, stage, amount__value, amount__currency, "
    "timezone('UTC', updated_at) from raw_crm.deals",
    "deals__tags": "select d.id, t._dlt_list_idx, t.value from raw_crm.deals__tags as t "
    "inner join raw_crm.deals as d on t._dlt_parent_id = d._dlt_id",
    "daily_usage": "select account_id, day, calls from raw_crm.daily_usage",
    "users": "select id, login, role from raw_crm.users",
}
KEYS = {
    "accounts": "id",
    "contacts": "id",
    "deals": "id",
    "daily_usage": "account_id, day",
    "users": "id",
}


def sql(settings: Settings, query: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        return warehouse.sql(query).fetchall()


def warehouse(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    return {table: sorted(sql(settings, query)) for table, query in QUERIES.items()}


def assert_equals_api(api: Api) -> None:
    """The warehouse holds every row of the API, once, with its values; every tag row belongs
    to a deal; nothing was quarantined."""
    want, got = expected(api.crm), warehouse(api.settings)
    for table in want:
        assert got[table] == want[table], table
    for table, key in KEYS.items():
        [(rows, keys)] = sql(
            api.settings,
            f"select count(*), count(distinct ({key})) from raw_crm.{table}",
        )
        assert rows == keys, f"{table}: duplicate keys"
    [(tags,)] = sql(api.settings, "select count(*) from raw_crm.deals__tags")
    assert tags == len(want["deals__tags"]), "tag rows without their deal"
    assert quarantined(api.settings) == []


def quarantined(settings: Settings) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as connection:
        exists = connection.sql(
            "select 1 from information_schema.tables where table_schema = 'quarantine'"
        ).fetchall()
        if not exists:
            return []
        return connection.sql(
            "select table_name, reason from quarantine.rows where source = 'crm'"
        ).fetchall()


def loaded(load: SourceLoad) -> dict[str, int]:
    return {table.table: table.loaded for table in load.tables}


# --- tests --------------------------------------------------------------------------------


def test_first_load_equals_the_api(api: Api) -> None:
    load = run_source("crm", api.settings)
    want = expected(api.crm)
    assert {table: rows for table, rows in loaded(load).items() if table in KEYS} == {
        table: len(want[table]) for table in KEYS
    }
    assert_equals_api(api)
    # nested objects became columns, the list its own table (checked above by value)
    assert len(want["deals__tags"]) > 0
    assert {row[1] for row in want["contacts"]} < set(api.crm.accounts), (
        "an account without contacts"
    )
    # every page was read: the API answered each paginator's requests to the end
    assert [q.get("offset") for q in api.crm.requested("/accounts")] == ["0", "3", "6"]
    assert len(api.crm.requested("/deals")) == 3
    assert len(api.crm.requested("/daily-usage")) == -(-len(api.crm.usage) // 25)
    assert len(api.crm.requested("/users")) == 4  # three pages, then the empty one
