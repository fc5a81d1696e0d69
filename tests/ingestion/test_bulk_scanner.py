"""The rest of a PostgreSQL table read whole comes through DuckDB's scanner where its column
types allow, else through the ADBC stream; either way the warehouse must hold exactly what a
run that lets dlt read the whole table holds (`bulk_reads: false`), value for value — awkward
values included (NULLs everywhere, the cursor's too, empty and non-ASCII text, NaN and
infinities, timestamps before 1970 and at microseconds) — and the source's own values where
Python can compare them."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from ingestion.pipeline import run_source
from ingestion.sql_database import adbc, bulk, scanner
from tests.servers import database_with, query, run_sql, table_with
from tributary.settings import ConfigurationError, Settings

SCHEMA = """
create table plain (
    id bigint primary key, small smallint, whole integer, flag boolean, label text,
    code varchar(12), ratio double precision, weight real, day date,
    at_utc timestamptz, at_local timestamp, updated_at timestamp
);
insert into plain
select i, (i %% 300)::smallint - 150, i * 7919 - 2000000, case i %% 3 when 0 then null
        else i %% 2 = 0 end,
    case i %% 5 when 0 then null when 1 then '' when 2 then 'Zürich — 東京 ' || i
        else 'row ' || i end,
    'c' || i, case i %% 7 when 0 then 'NaN'::float8 when 1 then '-Infinity'::float8
        when 2 then null else i / 3.0 end,
    (i / 7.0)::real, date '1961-04-12' + i, timestamptz '1969-07-20 20:17:40.123456+00'
        + i * interval '1 hour 1.000001 second',
    case when i %% 4 = 0 then null else timestamp '1999-12-31 23:59:59.999999'
        + i * interval '1 minute' end,
    case when i %% 11 = 0 then null else timestamp '2026-01-01' + i * interval '1 minute' end
from generate_series(1, 3000) as i;
create table typed (
    id integer primary key, grade char(3), opens time, blob bytea, price money,
    amount numeric(12, 2), ratio numeric, ref uuid, doc jsonb, host inet, wait interval,
    closes timetz, updated_at timestamp not null
);
insert into typed
select i, case when i %% 6 = 0 then null else 'g' || (i %% 9) end,
    time '06:30:00.5' + i * interval '7 seconds', decode(md5(i::text), 'hex'),
    (i * 1.25)::numeric::money, case when i %% 5 = 0 then null else i * 1.25 - 1000 end,
    case when i %% 7 = 0 then null else i / 3.0 ^ (i %% 4) end,
    case when i %% 8 = 0 then null else md5(i::text)::uuid end,
    case when i %% 9 = 0 then null
        else jsonb_build_object('n', i, 'tags', jsonb_build_array('ä', i %% 3)) end,
    ('10.0.' || (i %% 250) || '.' || (i %% 7) || '/' || (24 + i %% 9))::inet,
    i * interval '1 minute 1.5 seconds',
    case when i %% 10 = 0 then null when i = 1 then timetz '24:00:00+02'
        else timetz '12:00:00.25-05:30' + i * interval '1.5 second' end,
    timestamp '2026-01-01' + i * interval '1 minute'
from generate_series(1, 2000) as i;
"""
KEYS = {"plain": "id", "typed": "id"}


@pytest.fixture(scope="module")
def source() -> Iterator[str]:
    with database_with("postgresql", SCHEMA) as url:
        yield url


@pytest.fixture
def scanned(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tables whose rest DuckDB's scanner reads, in the order it reads them."""
    tables: list[str] = []
    scan_rest = bulk._scan_rest

    def spy(connection: Any, raw_table: str, url: Any, read: bulk.BulkRead, *rest: Any) -> int:
        tables.append(read.table)
        return scan_rest(connection, raw_table, url, read, *rest)

    monkeypatch.setattr(bulk, "_scan_rest", spy)
    return tables


def _settings(
    folder: Path, url: str, *, bulk_reads: bool, tables: tuple[str, ...] = tuple(KEYS)
) -> Settings:
    path = folder / "sources.yml"
    folder.mkdir(parents=True, exist_ok=True)
    declaration = {
        "type": "sql_database",
        "credentials": url,
        "bulk_reads": bulk_reads,
        "defaults": {"mode": "merge", "cursor": "updated_at", "lag": 0},
        "tables": dict.fromkeys(tables),
    }
    path.write_text(yaml.safe_dump({"sources": {"ext": declaration}}))
    return Settings(data_dir=folder, sources_file=path)


def _differences(left: Path, right: Path, table: str) -> list[tuple[Any, ...]]:
    """Rows of one warehouse's raw table missing from the other's, both ways (DuckDB compares:
    NaN equals NaN there)."""
    with duckdb.connect() as connection:
        connection.execute(f"attach '{left}' as l (read_only)")
        connection.execute(f"attach '{right}' as r (read_only)")
        columns = [
            name
            for (name,) in connection.execute(
                "select column_name from information_schema.columns where table_catalog = 'l' "
                "and table_schema = 'raw_ext' and table_name = ? and column_name not like "
                "'\\_dlt\\_%' escape '\\' order by ordinal_position",
                [table],
            ).fetchall()
        ]
        assert len(columns) > 3, columns
        listed = ", ".join(columns)
        return connection.execute(
            f"(select {listed} from l.raw_ext.{table} except all "
            f"select {listed} from r.raw_ext.{table}) union all "
            f"(select {listed} from r.raw_ext.{table} except all "
            f"select {listed} from l.raw_ext.{table})"
        ).fetchall()


def test_the_scanner_and_the_adbc_stream_load_what_dlt_would(
    source: str, tmp_path: Path, scanned: list[str]
) -> None:
    assert scanner.available(), "the duckdb-ext-postgres wheel is a dependency"
    streamed = _settings(tmp_path / "streamed", source, bulk_reads=True)
    first = run_source("ext", streamed)
    assert scanned == ["plain"]  # typed holds numeric, uuid, jsonb, inet, …: the ADBC stream
    assert {t.table: t.new for t in first.tables} == {"plain": 3000, "typed": 2000}

    whole = _settings(tmp_path / "whole", source, bulk_reads=False)
    run_source("ext", whole)
    for table in KEYS:
        assert _differences(streamed.warehouse, whole.warehouse, table) == [], table
        with duckdb.connect(str(streamed.warehouse), read_only=True) as warehouse:
            [(rows, keys, loads)] = warehouse.execute(
                f"select count(*), count(distinct id), count(distinct _dlt_load_id) "
                f"from raw_ext.{table}"
            ).fetchall()
        assert (rows, keys, loads) == (len(_source_ids(source, table)), rows, 1), table

    # The scanned table against the source itself, column by column where Python compares.
    with duckdb.connect(str(streamed.warehouse), read_only=True) as warehouse:
        raw = warehouse.execute(
            "select id, small, whole, flag, label, code, day, at_utc, at_local, updated_at "
            "from raw_ext.plain order by id"
        ).fetchall()
    assert raw == query(
        source,
        "select id, small, whole, flag, label, code, day, at_utc, at_local, updated_at "
        "from plain order by id",
    )

    # The ADBC stream's types against the source: numeric at its scale (dlt's 9 places where
    # none is declared), money as its amount (not a count of cents), uuid, jsonb, interval and
    # time with time zone (which ADBC gives in its binary form) as the server's text, inet as
    # the server shows it (a single address without /32).
    with duckdb.connect(str(streamed.warehouse), read_only=True) as warehouse:
        raw = warehouse.execute(
            "select id, amount, ratio, price, ref, doc::varchar, host, wait, closes "
            "from raw_ext.typed order by id"
        ).fetchall()
    assert raw == query(
        source,
        "select id, amount, round(ratio, 9), price::numeric, ref::text, doc::text, "
        "abbrev(host), wait::text, closes::text from typed order by id",
    )
    assert any(host.count("/") == 0 for (*_, host, _, _) in raw)  # some /32 addresses
    assert raw[0][-1] == "24:00:00+02"


def test_a_numeric_a_decimal_cannot_hold_fails_the_run_naming_its_column(
    source: str, tmp_path: Path
) -> None:
    odd = (
        "create table odd (id integer primary key, amount numeric, updated_at timestamp not null);"
        " insert into odd select i, case when i = 4 then 'NaN'::numeric else i end, "
        "timestamp '2026-01-01' + i * interval '1 minute' from generate_series(1, 10) as i"
    )
    with table_with(source, "odd", odd):
        settings = _settings(tmp_path, source, bulk_reads=False, tables=("odd",))
        with pytest.raises(Exception, match=r"(?i)odd\.amount: numeric 'nan' has no decimal value"):
            run_source("ext", settings)
        assert not settings.warehouse.exists() or _raw_tables(settings) == set()


def test_a_uuid_keyed_table_with_numerics_follows_updates_and_deletes(
    source: str, tmp_path: Path
) -> None:
    """A uuid key (DuckDB reads arrow's uuid in the key snapshot) finds deleted rows; numerics
    keep their scale through updates."""
    tokens = (
        "create table tokens (ref uuid primary key, n integer, amount numeric(8, 2), "
        "updated_at timestamp not null); insert into tokens "
        "select md5(i::text)::uuid, i, i * 0.25, timestamp '2026-01-01' "
        "+ i * interval '1 minute' from generate_series(1, 40) as i"
    )
    changes = (
        "delete from tokens where n in (3, 17); "
        "update tokens set amount = amount + 0.01, updated_at = updated_at + interval '1 day' "
        "where n = 5; "
        "insert into tokens select md5('new')::uuid, 99, 0.5, timestamp '2026-03-01'"
    )
    read = "select ref::text, n, amount, updated_at from tokens order by 1"
    with table_with(source, "tokens", tokens):
        settings = _settings(tmp_path, source, bulk_reads=True, tables=("tokens",))
        run_source("ext", settings)
        assert _raw(settings, read.replace("ref::text", "ref")) == query(source, read)
        run_sql(source, changes)
        [table] = run_source("ext", settings).tables
        assert (table.new, table.updated, table.deleted) == (1, 1, 2)
        assert _raw(settings, read.replace("ref::text", "ref")) == query(source, read)


@pytest.mark.timeout(120)
def test_a_partitioned_table_streams_through_adbc(
    source: str, tmp_path: Path, scanned: list[str]
) -> None:
    """The scanner splits a table by its pages; on a partitioned table's parent, which has
    none, it read page ranges up to 2^32 and never ended. Such a table takes the ADBC stream."""
    ev = (
        "create table ev (id bigint, region text, updated_at timestamp not null, "
        "primary key (id, region)) partition by list (region); "
        "create table ev_eu partition of ev for values in ('eu'); "
        "create table ev_us partition of ev for values in ('us'); "
        "insert into ev select i, case when i %% 3 = 0 then 'eu' else 'us' end, "
        "timestamp '2026-01-01' + i * interval '1 second' "
        "from generate_series(1, 3000) as i; analyze ev"
    )
    with table_with(source, "ev", ev):
        settings = _settings(tmp_path, source, bulk_reads=True, tables=("ev",))
        run_source("ext", settings)
        assert scanned == []
        read = "select id, region, updated_at from ev order by id"
        assert _raw(settings, read) == query(source, read)


def test_a_date_cursor_from_the_future_leaves_the_rest_of_the_table_loading(
    source: str, tmp_path: Path
) -> None:
    """dlt reads a whole table's newest rows, and those beyond now are quarantined. A date
    cursor was not bounded by now: one row dated 2099 was the newest, it was quarantined, no
    cursor was set and the rest never streamed — every run loaded nothing."""
    days = (
        "create table days (id integer primary key, d date not null, v text); "
        "insert into days select i, date '2026-01-01' + i / 50, 'v' || i "
        "from generate_series(1, 2000) as i; update days set d = '2099-01-01' where id = 77"
    )
    with table_with(source, "days", days):
        settings = _settings(tmp_path, source, bulk_reads=True, tables=("days",))
        settings.sources_file.write_text(
            settings.sources_file.read_text().replace("cursor: updated_at", "cursor: d")
        )
        [table] = run_source("ext", settings).tables
        assert (table.loaded, table.quarantined) == (1999, 1)
        read = "select id, d, v from days where id <> 77 order by id"
        assert _raw(settings, read.replace(" where id <> 77", "")) == query(source, read)
        run_source("ext", settings)  # and it goes on from its cursor
        assert _raw(settings, read.replace(" where id <> 77", "")) == query(source, read)


def test_an_integer_cursor_is_compared_as_a_number_by_the_scanner(
    source: str, tmp_path: Path
) -> None:
    """The mark travels as text in the plan; compared as text, id 400 would not be below 3000."""
    settings = _settings(tmp_path, source, bulk_reads=True, tables=("plain",))
    settings.sources_file.write_text(
        settings.sources_file.read_text().replace("cursor: updated_at", "cursor: id")
    )
    [table] = run_source("ext", settings).tables
    assert table.new == 3000
    read = "select id, label, updated_at from plain order by id"
    assert _raw(settings, read) == query(source, read)


def _raw(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        table = sql.split(" from ")[1].split()[0]
        return warehouse.execute(sql.replace(f" from {table}", f" from raw_ext.{table}")).fetchall()


def _raw_tables(settings: Settings) -> set[str]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        return {
            name
            for (name,) in warehouse.execute(
                "select table_name from information_schema.tables where table_schema = 'raw_ext'"
                " and table_name not like '\\_dlt%' escape '\\'"
            ).fetchall()
        }


def _source_ids(url: str, table: str) -> list[int]:
    return [row[0] for row in query(url, f"select id from {table}")]


def test_the_scanners_connection_string_carries_no_password() -> None:
    from sqlalchemy.engine import make_url

    url = make_url(
        "postgresql+psycopg://reader:s3cr'et@db.internal:6432/shop?sslmode=require"
        "&application_name=it's"
    )
    dsn = scanner.connection_string(url)
    assert "s3cr" not in dsn
    assert dsn == (
        "host='db.internal' port='6432' dbname='shop' user='reader' sslmode='require' "
        "application_name='it\\'s'"
    )


def test_adbc_connections_to_one_server_share_its_database(source: str) -> None:
    """Making an ADBC database reads the server's types (~30 ms); a run connects several times,
    so connections to one URL come from one database, which closing them leaves open."""
    from sqlalchemy.engine import make_url

    from ingestion.sql_database import adbc

    url = make_url(source)
    first = adbc.connect(url)
    with adbc.connect(url) as second:
        assert second._db is first._db
        with second.cursor() as cursor:
            cursor.execute("select count(*) from plain")
            assert cursor.fetchone() == (3000,)
    first.close()
    with adbc.record_batches(url, "select id from typed order by id limit 3") as reader:
        assert reader.read_all().column("id").to_pylist() == [1, 2, 3]


def test_money_loaded_as_cents_before_stops_the_run_until_the_table_is_reloaded(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier release read money as-is (its count of cents: $12.34 as 1234): the next run
    must not round amounts into that column beside the cents, and a reload gives amounts."""
    wallet = (
        "create table wallet (id integer primary key, balance money, "
        "updated_at timestamp not null); insert into wallet values "
        "(1, 12.34, '2026-01-01'), (2, -0.5, '2026-01-02'), (3, null, '2026-01-03')"
    )
    with table_with(source, "wallet", wallet):
        settings = _settings(tmp_path, source, bulk_reads=False, tables=("wallet",))
        with monkeypatch.context() as earlier:  # stands for the release that read money as-is
            earlier.setattr(adbc, "as_read", lambda column: column)
            run_source("ext", settings)
        assert _balances(settings) == [(1, 1234), (2, -50), (3, None)]

        run_sql(source, "update wallet set balance = 99.99, updated_at = '2026-02-01' where id = 1")
        with pytest.raises(ConfigurationError) as refused:
            run_source("ext", settings)
        message = str(refused.value)
        assert "raw_ext.wallet.balance: PostgreSQL money, held as a count of cents" in message
        assert 'full_refresh ["ext.wallet"]' in message
        assert _balances(settings) == [(1, 1234), (2, -50), (3, None)]  # nothing was written

        run_source("ext", settings, refresh_tables=["wallet"])
        assert _balances(settings) == query(
            source, "select id, balance::numeric from wallet order by id"
        )
        assert _balances(settings)[:2] == [(1, Decimal("99.99")), (2, Decimal("-0.50"))]


def _balances(settings: Settings) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        return warehouse.execute("select id, balance from raw_ext.wallet order by id").fetchall()


PERIODS = (
    "create table periods (id integer primary key, valid_from timestamptz, valid_to timestamp,"
    " ends date, updated_at timestamp not null); insert into periods select i,"
    " case i %% 7 when 0 then '-infinity' when 1 then null"
    "   else timestamptz '1999-12-31 23:00:00.5+00' + i * interval '1 day 1 second' end,"
    " case i %% 5 when 0 then 'infinity' when 1 then '-infinity' when 2 then null"
    "   else timestamp '1969-07-20 20:17:40' + i * interval '1 hour' end,"
    " case i %% 3 when 0 then 'infinity' when 1 then '-infinity'"
    "   else date '0044-03-15 BC' + i end,"
    " timestamp '2026-01-01' + i * interval '1 minute' from generate_series(1, 3000) as i"
)
# Each value as text on both sides: 'infinity', '-infinity', or microseconds (days for a date)
# from 1970; NULL as NULL.
PERIODS_IN_POSTGRES = """
select id,
    case when isfinite(valid_from) then (extract(epoch from valid_from) * 1000000)::bigint::text
        else valid_from::text end,
    case when isfinite(valid_to) then (extract(epoch from valid_to) * 1000000)::bigint::text
        else valid_to::text end,
    case when isfinite(ends) then (ends - date '1970-01-01')::text else ends::text end
from periods order by id
"""
PERIODS_IN_DUCKDB = """
select id,
    case when isfinite(valid_from) then epoch_us(valid_from)::varchar
        else valid_from::varchar end,
    case when isfinite(valid_to) then epoch_us(valid_to)::varchar else valid_to::varchar end,
    case when isfinite(ends) then (ends - date '1970-01-01')::varchar else ends::varchar end
from raw_ext.periods order by id
"""


def _periods(settings: Settings) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as warehouse:
        return warehouse.execute(PERIODS_IN_DUCKDB).fetchall()


def test_postgres_infinities_load_as_infinities_on_every_path(
    source: str, tmp_path: Path, scanned: list[str]
) -> None:
    """ADBC wrapped 'infinity' and '-infinity' timestamps and dates to dates some 290,000 (or
    5.9 million) years BC, both alike, and the run completed. Read whole (the scanner for the
    rest, or dlt alone through ADBC) and then merged, they load as DuckDB's infinities; a
    cursor at infinity is quarantined as in the future; a timestamp past DuckDB's last stops
    the run naming the column, loading nothing."""
    with table_with(source, "periods", PERIODS):
        runs = {
            bulk_reads: _settings(
                tmp_path / str(bulk_reads), source, bulk_reads=bulk_reads, tables=("periods",)
            )
            for bulk_reads in (True, False)
        }
        for settings in runs.values():
            run_source("ext", settings)
        assert scanned == ["periods"]
        expected = query(source, PERIODS_IN_POSTGRES)
        assert {"infinity", "-infinity"} <= {value for row in expected for value in row[1:]}
        for settings in runs.values():
            assert _periods(settings) == expected

        run_sql(
            source,
            "update periods set valid_to = 'infinity', ends = '-infinity', valid_from = "
            "'infinity', updated_at = timestamp '2026-02-01' + id * interval '1 second' "
            "where id %% 10 = 3",
        )
        for settings in runs.values():
            second = run_source("ext", settings)
            assert [(t.table, t.updated) for t in second.tables] == [("periods", 300)]
            assert _periods(settings) == query(source, PERIODS_IN_POSTGRES)

        # A cursor at infinity is a cursor in the future: quarantined (was: Python could not
        # hold the wrapped value and the run failed in the guard).
        kept = _periods(runs[False])
        run_sql(source, "update periods set valid_to = null, updated_at = 'infinity' where id = 6")
        for settings in runs.values():
            third = run_source("ext", settings)
            assert [(q.table, q.rows) for q in third.quarantined] == [("periods", 1)]
            assert "cursor updated_at infinity is beyond now" in third.quarantined[0].reason
            assert _periods(settings) == kept

        before = _periods(runs[False])
        run_sql(
            source,
            "update periods set valid_to = timestamp '294270-01-01', updated_at = "
            "timestamp '2026-03-01' where id = 4",
        )
        with pytest.raises(Exception, match=r"periods\.valid_to: a timestamp after 294247-01-10"):
            run_source("ext", runs[False])
        assert _periods(runs[False]) == before
