"""How the shop source reaches a real server: a read-only role, TLS settings, credentials kept
out of errors and logs, and time zones that survive from PostgreSQL to DuckDB."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC

import duckdb
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from demo.generate import generate
from demo.simulate import simulate
from ingestion.pipeline import run_source
from ingestion.sql_database import adbc, database_url
from tests.servers import throwaway_database
from tests.sourcefiles import scratch_settings
from tributary.errors import causes
from tributary.settings import ConfigurationError, Settings

pytestmark = pytest.mark.integration

SHOP_TABLES = ("customers", "stores", "products", "orders", "order_items")

GRANTS = {
    "postgresql": (
        "create role {user} login password '{password}'",
        "grant select on all tables in schema public to {user}",
    ),
    "mariadb": (
        "create user '{user}'@'%' identified by '{password}'",
        "grant select on {database}.* to '{user}'@'%'",
    ),
}
REVOKES = {
    "postgresql": ("drop owned by {user}", "drop role {user}"),
    "mariadb": ("drop user '{user}'@'%'",),
}


@pytest.fixture(params=sorted(GRANTS))
def server(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def shop_url(server: str) -> Iterator[str]:
    with throwaway_database(server) as url:
        yield url


@contextmanager
def read_only_user(server: str, admin_url: str) -> Iterator[tuple[str, str]]:
    """A new login that may only read the shop's tables: (its URL, its password)."""
    user, password = f"reader_{secrets.token_hex(3)}", secrets.token_hex(12)
    url = make_url(admin_url)
    names = {"user": user, "password": password, "database": url.database}
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            for statement in GRANTS[server]:
                connection.execute(text(statement.format(**names)))
        yield url.set(username=user, password=password).render_as_string(False), password
    finally:
        with admin.connect() as connection:
            for statement in REVOKES[server]:
                connection.execute(text(statement.format(**names)))
        admin.dispose()


def test_a_read_only_role_is_all_the_pipeline_needs(
    server: str, shop_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    api_db = tmp_path_factory.mktemp("api") / "payments.sqlite"
    generate(shop_url, api_db, orders=150, seed=41)
    with read_only_user(server, shop_url) as (reader_url, _):
        settings = scratch_settings(tmp_path_factory.mktemp("warehouse"), shop=reader_url)
        first = run_source("shop", settings)
        assert {t.table: t.new for t in first.tables}["orders"] == 150
        change = simulate(shop_url, api_db, seed=42)
        second = {t.table: t for t in run_source("shop", settings).tables}
        assert second["orders"].new == len(change.new_order_ids)

        # The same credentials cannot write: the pipeline never needed to.
        reader = create_engine(reader_url)
        try:
            with pytest.raises(DBAPIError, match=r"(?i)denied"), reader.begin() as connection:
                connection.execute(text("update orders set status = 'x' where order_id = 1"))
        finally:
            reader.dispose()
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        [(count, keys)] = warehouse.sql(
            "select count(*), count(distinct order_id) from raw_shop.orders"
        ).fetchall()
    assert count == keys == 150 + len(change.new_order_ids)


def test_tls_settings_reach_both_connections(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``sslmode`` in the URL reaches libpq through SQLAlchemy (reflection) and through ADBC
    (the COPY stream). The server here has TLS off, so ``require`` must be refused by both."""
    with throwaway_database("postgresql") as url:
        generate(url, tmp_path_factory.mktemp("api") / "payments.sqlite", orders=10, seed=1)
        required = make_url(url).update_query_dict({"sslmode": "require"})
        with pytest.raises(Exception, match=r"(?i)ssl"):
            adbc.connect(required).close()
        settings = scratch_settings(
            tmp_path_factory.mktemp("warehouse"), shop=required.render_as_string(False)
        )
        with pytest.raises(Exception, match=r"(?i)ssl"):
            run_source("shop", settings)
        disabled = make_url(url).update_query_dict({"sslmode": "disable"})
        assert "sslmode=disable" in adbc.libpq_url(disabled)
        settings = scratch_settings(
            tmp_path_factory.mktemp("warehouse"), shop=disabled.render_as_string(False)
        )
        assert {t.table: t.new for t in run_source("shop", settings).tables}["orders"] == 10


def test_credentials_never_appear_in_errors_or_logs(
    server: str,
    shop_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    generate(shop_url, tmp_path_factory.mktemp("api") / "payments.sqlite", orders=10, seed=2)
    caplog.set_level(logging.DEBUG)
    with read_only_user(server, shop_url) as (reader_url, password):
        failures = []
        # a table the database does not have, and a server that is not there
        for url, tables in (
            (reader_url, ["orders", "no_such_table"]),
            (make_url(reader_url).set(port=1).render_as_string(False), None),
        ):
            settings = scratch_settings(
                tmp_path_factory.mktemp("warehouse"), shop=url, tables=tables
            )
            assert password not in repr(settings)
            assert password not in settings.sources_path.read_text()  # a reference to it
            with pytest.raises(Exception) as failure:
                run_source("shop", settings)
            failures.append(failure.value)
    for failure in failures:
        chain = list(causes(failure))
        assert all(password not in str(exc) and password not in repr(exc) for exc in chain)
    assert isinstance(failures[0], ConfigurationError)
    problem, listed = str(failures[0]).split("; the database has: ")
    assert problem == "sources.shop.tables.no_such_table: no such table"
    assert sorted(listed.split(", ")) == sorted(SHOP_TABLES)
    out, err = capfd.readouterr()
    assert password not in caplog.text + out + err


def test_time_zones_survive_end_to_end(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A server whose sessions run in New York time: ``timestamptz`` values arrive as the same
    instants, naive ``timestamp`` values unchanged, and the incremental cursor still finds a
    change made across a daylight-saving switch."""
    with throwaway_database("postgresql") as url:
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                database = make_url(url).database
                connection.execute(
                    text(f"alter database {database} set timezone to 'America/New_York'")
                )
            with engine.connect() as connection:
                connection.execute(
                    text(
                        "create table events (event_id integer primary key, "
                        "happened_at timestamptz not null, local_at timestamp not null, "
                        "updated_at timestamptz not null)"
                    )
                )
                connection.execute(
                    text(
                        "insert into events values "
                        "(1, '2026-03-08 06:59:59+00', '2026-03-08 01:59:59', "
                        " '2026-03-08 06:59:59+00'),"
                        "(2, '2026-03-08 07:00:00+00', '2026-03-08 03:00:00', "
                        " '2026-03-08 07:00:00+00'),"
                        "(3, '2026-11-01 05:30:00+00', '2026-11-01 01:30:00', "
                        " '2026-11-01 05:30:00+00')"
                    )
                )
            settings = scratch_settings(
                tmp_path_factory.mktemp("warehouse"), shop=url, tables=["events"]
            )
            run_source("shop", settings)
            assert _raw_events(settings) == _source_events(url)
            with engine.connect() as connection:
                connection.execute(
                    text(
                        "update events set local_at = '2026-11-01 01:45:00', "
                        "updated_at = '2026-11-01 06:45:00+00' where event_id = 3"
                    )
                )
            changed = {t.table: t for t in run_source("shop", settings).tables}["events"]
            assert (changed.new, changed.updated) == (0, 1)
            assert _raw_events(settings) == _source_events(url)
        finally:
            engine.dispose()


def _source_events(url: str) -> dict[int, tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("select * from events")).fetchall()
    finally:
        engine.dispose()
    assert all(row.happened_at.utcoffset() != UTC.utcoffset(None) for row in rows[:1]), (
        "the session should run in New York time"
    )
    return {
        # in UTC: Python never finds aware times in different zones equal inside a DST fold
        row.event_id: (
            row.happened_at.astimezone(UTC),
            row.local_at,
            row.updated_at.astimezone(UTC),
        )
        for row in rows
    }


def _raw_events(settings: Settings) -> dict[int, tuple]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        warehouse.execute("set timezone = 'UTC'")
        rows = warehouse.sql(
            "select event_id, happened_at, local_at, updated_at from raw_shop.events"
        ).fetchall()
    return {
        event_id: (happened.astimezone(UTC), local, updated.astimezone(UTC))
        for event_id, happened, local, updated in rows
    }


def test_a_url_without_a_driver_gets_the_installed_one() -> None:
    assert database_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert database_url("mysql://u@h/db").drivername == "mysql+pymysql"
    assert database_url("sqlite:///x.db").drivername == "sqlite"
