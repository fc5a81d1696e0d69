"""A REST API declared in a sources file and loaded with no Python: the test CRM (``tests.apis``)
over real HTTP — API-key and basic auth, offset, ``Link`` header, JSON link and page-number
pages, a child resource, nested records, a timestamp and a date cursor. The warehouse is
compared with the API's own data after a first load, after changes (only they load, merged), and
after backfill windows; a wrong key fails without showing it, a page served twice duplicates
nothing, and `tributary sources check` shows each resource."""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from ingestion.pipeline import PipelineFailed, run_source
from ingestion.results import SourceLoad
from tests.apis import Crm, iso, sample_crm, serve_crm
from tests.sourcefiles import scratch_settings
from tributary.cli import app
from tributary.errors import is_transient
from tributary.settings import Settings, get_settings

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
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
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
    # a nested table has no load id of its own: its rows count with their deal's
    assert loaded(load)["deals__tags"] == len(want["deals__tags"])
    assert {row[1] for row in want["contacts"]} < set(api.crm.accounts), (
        "an account without contacts"
    )
    # every page was read: the API answered each paginator's requests to the end
    assert [q.get("offset") for q in api.crm.requested("/accounts")] == ["0", "3", "6"]
    assert len(api.crm.requested("/deals")) == 3
    assert len(api.crm.requested("/daily-usage")) == -(-len(api.crm.usage) // 25)
    assert len(api.crm.requested("/users")) == 4  # three pages, then the empty one


def change(crm: Crm) -> dict[str, set[Any]]:
    """Changes as the CRM makes them, each moving its record's cursor on; returns the keys of
    the records changed or added per incremental resource."""
    at = datetime(2026, 3, 20, 10, 0, tzinfo=UTC)
    crm.accounts[2] |= {"name": "Account 2 (renamed)", "updated_at": at}
    crm.accounts[8] = {
        "id": 8,
        "name": "Account 8",
        "plan": "team",
        "address": {"city": "Porto", "country": "PT"},
        "updated_at": at,
    }
    crm.contacts[3] |= {"email": "new@account2.example", "updated_at": at}
    for contact_id, account_id in ((13, 4), (14, 8)):  # account 4 had no contacts
        crm.contacts[contact_id] = {
            "id": contact_id,
            "account_id": account_id,
            "name": f"Contact {contact_id}",
            "email": f"c{contact_id}@account{account_id}.example",
            "updated_at": at + timedelta(hours=contact_id),
        }
    crm.deals[5] |= {
        "stage": "won",
        "amount": {"value": 9999, "currency": "EUR"},
        "tags": ["vip"],
        "updated_at": at + timedelta(days=1),
    }
    crm.deals[7] |= {"tags": [], "updated_at": at + timedelta(days=1, minutes=1)}
    crm.deals[26] = {
        "id": 26,
        "account_id": 8,
        "stage": "open",
        "amount": {"value": 50, "currency": "USD"},
        "tags": ["new", "inbound"],
        "updated_at": at + timedelta(days=2),
    }
    # the last day loaded was still counting: its usage grew after the first run
    crm.usage[(1, date(2026, 2, 10))]["calls"] += 100
    new_days = [date(2026, 2, 11), date(2026, 2, 12)]
    for day in new_days:
        for account_id in (1, 2, 3):
            crm.usage[(account_id, day)] = {"account_id": account_id, "day": day, "calls": 7}
    return {
        "contacts": {3, 13, 14},
        "deals": {5, 7, 26},
        "daily_usage": {(a, day) for a in (1, 2, 3) for day in new_days},
    }


def newest(crm: Crm, table: str) -> str:
    rows = crm.contacts if table == "contacts" else crm.deals
    return iso(max(row["updated_at"] for row in rows.values()))


def test_second_run_loads_only_the_changes_and_merges_them(api: Api) -> None:
    run_source("crm", api.settings)
    cursors = {table: newest(api.crm, table) for table in ("contacts", "deals")}
    last_day = max(day for _, day in api.crm.usage).isoformat()
    load_ids = dict(sql(api.settings, "select id, _dlt_load_id from raw_crm.deals"))
    changed = change(api.crm)
    api.crm.requests.clear()

    second = run_source("crm", api.settings)

    assert_equals_api(api)
    by_table = {table.table: table for table in second.tables}
    # incremental resources: only the changed records came, each once
    assert by_table["contacts"].loaded == len(changed["contacts"])
    assert (by_table["contacts"].new, by_table["contacts"].updated) == (2, 1)
    assert by_table["deals"].loaded == len(changed["deals"])
    assert (by_table["deals"].new, by_table["deals"].updated) == (1, 2)
    # a date cursor reads its last day again (its usage may have grown), merged
    last_day_rows = sum(1 for _, day in api.crm.usage if day.isoformat() == last_day)
    assert by_table["daily_usage"].loaded == len(changed["daily_usage"]) + last_day_rows
    assert (by_table["daily_usage"].new, by_table["daily_usage"].updated) == (
        len(changed["daily_usage"]),
        1,
    )
    # accounts have no cursor: read whole, merged (one new, one changed)
    assert by_table["accounts"].loaded == len(api.crm.accounts)
    assert (by_table["accounts"].new, by_table["accounts"].updated) == (1, 1)
    # each request asked from where the first run ended, for every parent alike
    assert {q["updated_since"] for q in api.crm.requested("/deals")} == {cursors["deals"]}
    contact_requests = [q for p, q in api.crm.requests if p.endswith("/contacts")]
    assert len(contact_requests) >= len(api.crm.accounts)
    assert {q["updated_since"] for q in contact_requests} == {cursors["contacts"]}
    assert {q["start_date"] for q in api.crm.requested("/daily-usage")} == {last_day}
    assert not any("updated_until" in q or "end_date" in q for _, q in api.crm.requests)
    # deals not changed kept the load that wrote them
    after = dict(sql(api.settings, "select id, _dlt_load_id from raw_crm.deals"))
    assert {i: after[i] for i in load_ids if i not in changed["deals"]} == {
        i: load_ids[i] for i in load_ids if i not in changed["deals"]
    }

    third = run_source("crm", api.settings)  # nothing changed: only the last day again
    assert {t.table: t.loaded for t in third.tables if t.table in changed} == {
        "contacts": 0,
        "deals": 0,
        "daily_usage": 3,
    }
    assert all(t.new == t.updated == 0 for t in third.tables)
    assert_equals_api(api)


WINDOW = ("2026-01-01", "2026-02-01")
WINDOW_START = datetime(2026, 1, 1, tzinfo=UTC)
WINDOW_END = datetime(2026, 2, 1, tzinfo=UTC)


def in_window(crm: Crm) -> dict[str, set[Any]]:
    """The keys of the records whose cursor lies in [start, end) of ``WINDOW``."""
    return {
        "contacts": {
            c["id"] for c in crm.contacts.values() if WINDOW_START <= c["updated_at"] < WINDOW_END
        },
        "deals": {
            d["id"] for d in crm.deals.values() if WINDOW_START <= d["updated_at"] < WINDOW_END
        },
        "daily_usage": {
            key for key in crm.usage if WINDOW_START.date() <= key[1] < WINDOW_END.date()
        },
    }


def test_window_reloads_exactly_the_window_for_timestamp_and_date_cursors(api: Api) -> None:
    # records exactly on the window's edges: the start is in, the end is out
    api.crm.deals[8]["updated_at"] = WINDOW_START
    api.crm.deals[9]["updated_at"] = WINDOW_END
    api.crm.contacts[1]["updated_at"] = WINDOW_START
    api.crm.contacts[12]["updated_at"] = WINDOW_END
    run_source("crm", api.settings)
    window = in_window(api.crm)
    assert {8, 9} & window["deals"] == {8} and {1, 12} & window["contacts"] == {1}
    assert len(window["daily_usage"]) == 31 * 3
    cursors = {table: newest(api.crm, table) for table in ("contacts", "deals")}
    # Corrections the API made without moving their cursor, and rows lost from the warehouse:
    # a normal run cannot see either.
    deal, contact, usage = min(window["deals"]), min(window["contacts"]), (2, date(2026, 1, 15))
    api.crm.deals[deal]["amount"] = {"value": 1, "currency": "USD"}
    api.crm.contacts[contact]["email"] = "corrected@example.com"
    api.crm.usage[usage]["calls"] = 123_456
    with duckdb.connect(str(api.settings.warehouse)) as connection:
        connection.execute("delete from raw_crm.deals where id = ?", [max(window["deals"])])
        connection.execute("delete from raw_crm.contacts where id = ?", [max(window["contacts"])])
        connection.execute("delete from raw_crm.daily_usage where day = '2026-01-20'")
    run_source("crm", api.settings)
    assert warehouse(api.settings) != expected(api.crm)
    before = {
        table: dict(sql(api.settings, f"select {KEYS[table]}, _dlt_load_id from raw_crm.{table}"))
        for table in ("contacts", "deals")
    }
    api.crm.requests.clear()

    load = run_source("crm", api.settings, window=WINDOW)

    [load_id] = load.load_ids
    assert_equals_api(api)
    assert {t.table: t.loaded for t in load.tables if t.table in window} == {
        table: len(keys) for table, keys in window.items()
    }
    reloaded = {
        "contacts": {r[0] for r in sql(api.settings, _of_load("contacts", "id", load_id))},
        "deals": {r[0] for r in sql(api.settings, _of_load("deals", "id", load_id))},
        "daily_usage": set(sql(api.settings, _of_load("daily_usage", "account_id, day", load_id))),
    }
    assert reloaded == window
    # every request was bounded by the window, the child's for each account alike
    start, end = (f"{day}T00:00:00Z" for day in WINDOW)
    contact_requests = [q for p, q in api.crm.requests if p.endswith("/contacts")]
    assert len(contact_requests) >= len(api.crm.accounts)
    for query in [*contact_requests, *api.crm.requested("/deals")]:
        assert (query["updated_since"], query["updated_until"]) == (start, end)
    for query in api.crm.requested("/daily-usage"):
        assert (query["start_date"], query["end_date"]) == WINDOW
    # records outside the window were not touched
    for table in ("contacts", "deals"):
        now = dict(sql(api.settings, f"select id, _dlt_load_id from raw_crm.{table}"))
        assert {k: v for k, v in now.items() if k not in window[table]} == {
            k: v for k, v in before[table].items() if k not in window[table]
        }

    # the window left the incremental state alone: the next run goes on from where it was
    api.crm.requests.clear()
    after = run_source("crm", api.settings)
    assert {t.table: t.loaded for t in after.tables if t.table in ("contacts", "deals")} == {
        "contacts": 0,
        "deals": 0,
    }
    assert {q["updated_since"] for q in api.crm.requested("/deals")} == {cursors["deals"]}
    assert {q["updated_since"] for p, q in api.crm.requests if p.endswith("/contacts")} == {
        cursors["contacts"]
    }
    assert_equals_api(api)


def _of_load(table: str, columns: str, load_id: str) -> str:
    return f"select {columns} from raw_crm.{table} where _dlt_load_id = '{load_id}'"


@pytest.mark.parametrize(
    ("variable", "where", "secret"),
    [
        (KEY_VAR, "sources.crm.client.auth", "sources.crm.api_key"),
        (PASSWORD_VAR, "sources.crm.resources.users.endpoint.auth", "sources.crm.password"),
    ],
)
def test_wrong_credentials_fail_clearly_without_showing_them(
    api: Api, monkeypatch: pytest.MonkeyPatch, variable: str, where: str, secret: str
) -> None:
    wrong = f"wrong-{secrets.token_hex(10)}"
    monkeypatch.setenv(variable, wrong)
    with pytest.raises(PipelineFailed) as failure:
        run_source("crm", api.settings)
    message = str(failure.value)
    assert "the API refused the credentials (HTTP 401 Unauthorized" in message
    assert f"check {where}" in message and f"dlt secret {secret}" in message
    for value in (wrong, api.crm.api_key, api.crm.password):
        assert value[-12:] not in message  # nor a piece of it
    assert not is_transient(failure.value)  # a retry would be refused again

    monkeypatch.setenv(variable, api.crm.api_key if variable == KEY_VAR else api.crm.password)
    run_source("crm", api.settings)  # the failed run left nothing half-done behind
    assert_equals_api(api)


def test_a_page_served_twice_duplicates_nothing(api: Api) -> None:
    api.crm.repeat |= {"/deals", "/accounts/3/contacts"}
    load = run_source("crm", api.settings)
    # the API did serve a page twice: page 2 of the deals, and of account 3's contacts
    assert [q.get("page") for q in api.crm.requested("/deals")] == [None, "2", "2", "3"]
    assert [q.get("page") for q in api.crm.requested("/accounts/3/contacts")] == [None, "2", "2"]
    assert_equals_api(api)  # each record once, its tags once, nothing quarantined
    assert {t.table: t.new for t in load.tables if t.table in KEYS} == {
        table: len(rows) for table, rows in expected(api.crm).items() if table in KEYS
    }


def test_sources_check_shows_each_resource_and_reads_its_first_page(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIBUTARY_SOURCES_FILE", str(api.settings.sources_path))
    monkeypatch.setenv("TRIBUTARY_DATA_DIR", str(api.settings.data_dir))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["sources", "check"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        rows = {
            cells[0]: cells[1:]
            for line in result.output.splitlines()
            if (cells := [c.strip() for c in line.strip("│ ").split("│")]) and len(cells) >= 5
        }
        shown = {
            name: (mode, set(key.split(", ")), cursor)
            for name, (mode, key, cursor, *_) in rows.items()
            if name != "table"
        }
        assert shown == {
            "accounts": ("merge", {"id"}, "—"),
            "contacts": ("merge", {"id"}, "updated_at"),
            "deals": ("merge", {"id"}, "updated_at"),
            "daily_usage": ("merge", {"account_id", "day"}, "day"),
            "users": ("merge", {"id"}, "—"),
        }
        for name in ("accounts", "deals", "daily_usage", "users"):
            assert "first page read" in rows[name][-1], name
        assert "1 source(s) ready." in result.output
        assert api.crm.requested("/users") and api.crm.requested("/daily-usage")

        monkeypatch.setenv(KEY_VAR, "wrong-key-0123456789")
        get_settings.cache_clear()
        result = CliRunner().invoke(app, ["sources", "check"], env={"COLUMNS": "200"})
        assert result.exit_code == 1
        assert "sources.crm.resources.deals: " in result.output
        assert "the API refused the credentials (HTTP 401" in result.output
        assert "0123456789" not in result.output
    finally:
        get_settings.cache_clear()


def test_a_date_cursor_without_a_column_hint_sends_dates(api: Api, tmp_path: Path) -> None:
    """Declared the short way — no column hint, ``initial_value`` an unquoted YAML date — the
    cursor is still a date: its initial value says so (a timestamp sent to a date parameter
    is refused, and YAML's date compares with no text)."""
    declaration = copy.deepcopy(CRM)
    [usage] = [r for r in declaration["resources"] if r["name"] == "daily_usage"]
    usage["columns"] = {"calls": {"data_type": "bigint", "nullable": False}}
    usage["endpoint"]["incremental"]["initial_value"] = date(2025, 1, 1)
    settings = scratch_settings(tmp_path / "short", extra={"crm": declaration}, only=["crm"])
    assert "initial_value: 2025-01-01\n" in settings.sources_path.read_text()
    want = sorted((a, day.isoformat(), calls) for a, day, calls in expected(api.crm)["daily_usage"])
    usage_query = "select account_id, day, calls from raw_crm.daily_usage"

    run_source("crm", settings)
    assert sorted(sql(settings, usage_query)) == want  # a date without a hint loads as text
    assert {q["start_date"] for q in api.crm.requested("/daily-usage")} == {"2025-01-01"}

    api.crm.requests.clear()
    load = run_source("crm", settings, window=WINDOW)
    [daily] = [t for t in load.tables if t.table == "daily_usage"]
    assert daily.loaded == len(in_window(api.crm)["daily_usage"])
    for query in api.crm.requested("/daily-usage"):
        assert (query["start_date"], query["end_date"]) == WINDOW
    assert sorted(sql(settings, usage_query)) == want


def test_a_child_of_a_child_with_a_cursor_reads_every_record_of_it(
    api: Api, tmp_path: Path
) -> None:
    """``peers``: for each contact, the contacts of its account (a path from the contact's
    ``_accounts_id``). Its parent, read with its cursor bound once, hands it each contact once."""
    declaration = copy.deepcopy(CRM)
    declaration["resources"].append(
        {
            "name": "peers",
            "primary_key": ["id", "_contacts_id"],
            "include_from_parent": ["id"],
            "endpoint": {
                "path": "accounts/{resources.contacts._accounts_id}/contacts",
                "paginator": {"type": "header_link"},
            },
        }
    )
    settings = scratch_settings(tmp_path / "peers", extra={"crm": declaration}, only=["crm"])
    run_source("crm", settings)
    contacts = api.crm.contacts.values()
    want = sorted(
        (peer["id"], contact["id"])
        for contact in contacts
        for peer in contacts
        if peer["account_id"] == contact["account_id"]
    )
    assert sorted(sql(settings, "select id, _contacts_id from raw_crm.peers")) == want
    # the contacts were read once: one request per account and further page
    contact_pages = [q for p, q in api.crm.requests if p.endswith("/contacts") and "limit" in q]
    assert len(contact_pages) == len(api.crm.accounts) + 2  # accounts 3 and 7 have two pages


def test_records_breaking_the_contract_are_quarantined_a_childs_too(api: Api) -> None:
    """A deal in a stage outside ``accepted_values`` and a contact (a child's record) stamped in
    the future are quarantined; neither reaches raw, and the future stamp moves no cursor."""
    api.crm.deals[4]["stage"] = "maybe"
    api.crm.contacts[5]["updated_at"] = datetime(2099, 1, 1, tzinfo=UTC)
    run_source("crm", api.settings)
    reasons = dict(quarantined(api.settings))
    assert set(reasons) == {"deals", "contacts"}
    assert "stage 'maybe' is not one of open, won, lost" in reasons["deals"]
    assert "cursor updated_at 2099-01-01T00:00:00Z is beyond now" in reasons["contacts"]
    assert {row[0] for row in warehouse(api.settings)["deals"]} == set(api.crm.deals) - {4}
    assert {row[0] for row in warehouse(api.settings)["contacts"]} == set(api.crm.contacts) - {5}

    del api.crm.contacts[5]
    cursor = newest(api.crm, "contacts")
    api.crm.requests.clear()
    run_source("crm", api.settings)
    assert {q["updated_since"] for p, q in api.crm.requests if p.endswith("/contacts")} == {cursor}
